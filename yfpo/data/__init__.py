"""Data: rows read and validated, tokenised and batched for training; prompt layouts; the synthetic generator; on-policy pairs (``python -m yfpo.pairs``)."""
