"""Experiment loggers: CSV always (``<run_dir>/logs/metrics.csv``), Weights & Biases on request."""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from yfpo.errors import ConfigError


def wandb_mode() -> str:
    """``online`` when an API key is configured (env or ~/.netrc), else ``offline`` (sync later with ``wandb sync``)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    return "online" if has_key else "offline"


def keep_rows_before(logger: CSVLogger, step: int) -> int:
    """On a resume from ``step``: keep the rows of ``metrics.csv`` logged before it, so the curves
    continue without a gap; rows from ``step`` on are dropped, since those steps run again.
    (Lightning's CSV writer deletes the file when it starts in a non-empty directory.) Returns
    the number of rows kept."""
    path = Path(logger.log_dir) / "metrics.csv"
    if rank_zero_only.rank != 0 or not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r.get("step") not in (None, "") and int(r["step"]) < step]
        keys = list(reader.fieldnames or [])
    writer = logger.experiment  # created here: it deletes the old file
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=keys)
        out.writeheader()
        out.writerows(rows)
    writer.metrics_keys = keys  # later rows append under this header (widened if new keys come)
    return len(rows)


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of ``run_dir``: made on its first start and kept in ``logs/wandb_id``, so that
    every resume logs into the same W&B run."""
    path = run_dir / "logs" / "wandb_id"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(uuid.uuid4().hex[:12] + "\n")
    return path.read_text().strip()


def make_loggers(cfg: DictConfig, run_dir: Path, resume_step: int | None = None) -> list[Logger]:
    """The run's loggers; ``resume_step``: the step a resumed run continues from (its logs are kept up to it)."""
    csv_logger = CSVLogger(save_dir=str(run_dir), name="", version="logs")
    if resume_step is not None:
        keep_rows_before(csv_logger, resume_step)
    loggers: list[Logger] = [csv_logger]
    lg = cfg.logger
    if lg.name == "wandb":
        # The config carries no secrets (the key is only ever read by wandb itself from env/netrc).
        loggers.append(WandbLogger(
            project=lg.project, group=lg.group, tags=list(lg.tags), name=lg.run_name, save_dir=str(run_dir),
            mode=wandb_mode(), config=OmegaConf.to_container(cfg, resolve=True),
            id=wandb_run_id(run_dir), resume="allow",  # a resumed training continues its W&B run
        ))
    elif lg.name != "csv":
        raise ConfigError(f"logger={lg.name!r}: choose csv or wandb")
    return loggers
