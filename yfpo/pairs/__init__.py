"""On-policy preference pairs sampled from a model and graded: the ``python -m yfpo.pairs`` stage."""
