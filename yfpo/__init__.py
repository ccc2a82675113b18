"""yfpo: DPO, DPO+YFPO and FDT for mathematical reasoning (the package's version; see README.md)."""

__version__ = "0.1.0"
