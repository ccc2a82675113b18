"""Pipelines over the stages: the demo, the papers' reproduction, the tables and their statistics."""
