"""Offline assets: the tiny model and the named preparation step (``python -m yfpo.prepare``)."""
