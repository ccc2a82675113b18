"""Composing the Hydra config outside ``@hydra.main`` (for the stages that need no run directory)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def compose_config(overrides: list[str], hydra: bool = False) -> DictConfig:
    """``conf/config.yaml`` with command-line style ``overrides`` (``hydra=True`` keeps the hydra node)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)
