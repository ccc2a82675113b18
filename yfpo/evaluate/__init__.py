"""Evaluation (``python -m yfpo.evaluate``): greedy decoding with hf or vLLM, grading, per-checkpoint results."""
