"""Training (``python -m yfpo.train``): the LightningModule, the pure losses and log-probs, the reference, checkpoints, loggers, strategies."""
