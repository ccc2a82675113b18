"""Experiment loggers: CSV always (``<run_dir>/logs/metrics.csv``), Weights & Biases on request, and
the evaluation's scores into the W&B run of the training that made the checkpoints."""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from yfpo.core.errors import ConfigError


def logs_this_step(trainer) -> bool:
    """Whether Lightning writes this training step's logged metrics to the loggers: its rule
    (every ``log_every_n_steps`` optimizer steps, and the last), from public trainer state."""
    every = trainer.log_every_n_steps
    return bool(every) and ((trainer.global_step + 1) % every == 0 or trainer.should_stop)


def has_credentials() -> bool:
    """Whether wandb has a key without asking for one (``wandb.Api()`` prompts on a terminal):
    ``WANDB_API_KEY`` or ``WANDB_IDENTITY_TOKEN_FILE``, or the netrc entry ``wandb login`` writes for
    its host. When this wandb reads its netrc otherwise, wandb itself decides."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb import env
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth
    except ImportError:
        return True
    import wandb

    try:
        return read_netrc_auth(host=env.get_base_url(wandb_setup.singleton().settings.base_url)) is not None
    except wandb.errors.Error:  # a malformed key: wandb's own error says so on saving
        return True


def wandb_mode() -> str:
    """``online`` when wandb has a key (:func:`has_credentials`), else ``offline`` (sync later with ``wandb sync``)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if has_credentials() else "offline"


def finish(loggers: list[Logger]) -> None:
    """Close the training's W&B run, so that its history is on disk when training returns
    (Lightning's WandbLogger leaves the run open until the process exits)."""
    for lg in loggers:
        if isinstance(lg, WandbLogger) and rank_zero_only.rank == 0:
            lg.experiment.finish()


def keep_rows_before(logger: CSVLogger, step: int, last_row: dict | None = None) -> int:
    """On a resume from ``step``: keep the rows of ``metrics.csv`` logged before it, so the curves
    continue without a gap; rows from ``step`` on are dropped, since those steps run again.
    ``last_row``: the row of step ``step - 1`` as the checkpoint recorded it, added when the file
    lacks it (Lightning writes a step's row after that step's checkpoint, so a kill between the two
    leaves the checkpoint without its row). (Lightning's CSV writer deletes the file when it starts
    in a non-empty directory.) Returns the number of rows kept."""
    path = Path(logger.log_dir) / "metrics.csv"
    if rank_zero_only.rank != 0 or not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r.get("step") not in (None, "") and int(r["step"]) < step]
        keys = list(reader.fieldnames or [])
    if last_row and int(last_row["step"]) == step - 1 and not any(int(r["step"]) == step - 1 for r in rows):
        rows.append(last_row)
        keys += [k for k in last_row if k not in keys]
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


def run_arm(config: dict) -> str:
    """The arm of its experiment that a run belongs to, recorded in its W&B config as ``arm`` so that
    a workspace (``python -m yfpo.dashboard``) groups the seeds of one arm and lambda: the command
    line's overrides that name the run directory (Hydra's ``job.override_dirname``), without ``seed``,
    ``lambda`` and ``hydra`` keys (``variant=dpo`` in the demo's sweep); the method's name when none is left."""
    items = []
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        skip = {*hc.job.config.override_dirname.exclude_keys, "seed", "lambda"}
        for o in hc.overrides.task:
            key = o.split("=", 1)[0].lstrip("+~")
            if key not in skip and not key.startswith("hydra"):
                items.append(o.lstrip("+~"))
    return ",".join(sorted(items)) or str(config.get("method", {}).get("name", ""))


def make_loggers(lg: DictConfig, run_dir: Path, config: dict, resume_step: int | None = None,
                 last_row: dict | None = None) -> list[Logger]:
    """The run's loggers from the ``logger`` group; ``config``: the resolved run config W&B records;
    ``resume_step``: the step a resumed run continues from (its logs are kept up to it, with
    ``last_row``, the checkpoint's own row of its step, see :func:`keep_rows_before`)."""
    csv_logger = CSVLogger(save_dir=str(run_dir), name="", version="logs")
    if resume_step is not None:
        keep_rows_before(csv_logger, resume_step, last_row)
    loggers: list[Logger] = [csv_logger]
    if lg.name == "wandb":
        # The config carries no secrets (the key is only ever read by wandb itself from env/netrc).
        loggers.append(WandbLogger(
            project=lg.project, group=lg.group, tags=list(lg.tags), name=lg.run_name, save_dir=str(run_dir),
            mode=wandb_mode(), config={**config, "arm": run_arm(config)},  # arm: groups runs in a workspace
            id=wandb_run_id(run_dir), resume="allow",  # a resumed training continues its W&B run
        ))
    elif lg.name != "csv":
        raise ConfigError(f"logger={lg.name!r}: choose csv or wandb")
    return loggers


def log_evaluation(run_dir: Path, points: list[tuple[int, dict]]) -> Path | None:
    """Log evaluation scores into the W&B run of ``run_dir`` when it was trained with ``logger=wandb``
    (resumed by its id, offline unless a key is configured); ``points``: ``(training step, {name:
    value})`` per checkpoint. The scores are plotted against ``trainer/global_step``, the step axis
    of the training curves, so a workspace shows accuracy beside ``rewards/margins``. Returns the
    W&B run directory, or None when the run does not use W&B."""
    saved, id_file = run_dir / "run_config.yaml", run_dir / "logs" / "wandb_id"
    if not points or not saved.is_file() or not id_file.is_file():
        return None
    lg = OmegaConf.load(saved).logger
    if lg.name != "wandb":
        return None
    import wandb

    run = wandb.init(project=lg.project, group=lg.group, name=lg.run_name, id=id_file.read_text().strip(),
                     resume="allow", dir=str(run_dir), mode=wandb_mode(), settings=wandb.Settings(silent=True))
    run.define_metric("trainer/global_step")
    run.define_metric("eval/*", step_metric="trainer/global_step")
    for step, scores in sorted(points, key=lambda p: p[0]):
        run.log({"trainer/global_step": step, **scores})
    out = Path(run.dir).parent
    run.finish()
    return out
