"""Benchmarks of yfpo against TRL's ``DPOTrainer`` (``make bench``; see :mod:`benchmarks.bench`)."""
