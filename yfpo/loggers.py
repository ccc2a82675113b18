"""Experiment loggers: CSV always (``<run_dir>/logs/metrics.csv``), Weights & Biases on request."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from yfpo.errors import ConfigError


def wandb_mode() -> str:
    """``online`` when an API key is configured (env or ~/.netrc), else ``offline`` (sync later with ``wandb sync``)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    return "online" if has_key else "offline"


def make_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="logs")]
    lg = cfg.logger
    if lg.name == "wandb":
        # The config carries no secrets (the key is only ever read by wandb itself from env/netrc).
        loggers.append(WandbLogger(
            project=lg.project, group=lg.group, tags=list(lg.tags), name=lg.run_name, save_dir=str(run_dir),
            mode=wandb_mode(), config=OmegaConf.to_container(cfg, resolve=True),
        ))
    elif lg.name != "csv":
        raise ConfigError(f"logger={lg.name!r}: choose csv or wandb")
    return loggers
