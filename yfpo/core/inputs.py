"""What a training run reads from the config, and therefore what the run is.

:func:`training_inputs` is the one view of the config that :func:`yfpo.train.fit.fit` hands to
the pieces it builds; :func:`run_identity` is that same view flattened. A key training does not
read (``eval.*``, ``pairs.*``, ``logger``, ``hub``, the experiment's ``name``) is not in it, so
changing it never refuses a resume or invalidates a finished run; a key training starts to read
has to enter the view first, and so becomes part of the identity with it.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from yfpo.core.schema import role

# Read by every training run.
GROUPS = ("seed", "beta", "lambda", "model", "data", "method", "optim", "logprobs", "checkpoints", "reference", "trainer")
# Trainer settings training reads that choose where and how fast it runs, not what it trains:
# a pre-empted run may resume on other devices (the global batch is data.global_batch_size).
PLACEMENT = ("devices", "num_nodes", "accelerator", "strategy", "accumulate_grad_batches", "enable_progress_bar")
# What happens to files after training ends, not what is trained.
AFTERWARDS = ("checkpoints.keep_resume_point",)


def read_by(directory: str | Path, *paths: str | Path | None) -> bool:
    """Whether one of the ``paths`` a stage reads lies in the synthetic ``directory``."""
    out = Path(directory).resolve()
    return any(p is not None and Path(str(p)).resolve().is_relative_to(out) for p in paths)


def training_inputs(cfg: DictConfig) -> DictConfig:
    """The resolved parts of ``cfg`` a training run reads: :data:`GROUPS`, ``neurons`` when the
    method rewards or tracks them (:func:`yfpo.core.schema.role`), and ``synthetic`` when the data
    or the model is made from the synthetic files (a model made by a training run, ``train:<experiment>``,
    counts: the tiny SFT model is trained on them)."""
    keys = list(GROUPS)
    if role(cfg.method):
        keys.append("neurons")
    prepared = cfg.model.prepare or ""
    if prepared == "build_tiny" or prepared.startswith("train:") or read_by(cfg.synthetic.dir, cfg.data.path):
        keys.append("synthetic")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.create({k: resolved[k] for k in keys})


def run_identity(cfg: DictConfig) -> dict:
    """:func:`training_inputs` flattened (``{"optim.lr": 5e-06, ...}``) without the trainer's
    :data:`PLACEMENT` and :data:`AFTERWARDS`; paths under ``cache_dir`` are written relative to it, so a moved cache
    (``YFPO_CACHE``) is not another run."""
    flat = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(OmegaConf.to_container(training_inputs(cfg)), "")
    cache = str(cfg.cache_dir)
    free = (*(f"trainer.{k}" for k in PLACEMENT), *AFTERWARDS)
    return {k: v.replace(cache, "${cache_dir}", 1) if isinstance(v, str) and v.startswith(cache) else v
            for k, v in flat.items() if not k.startswith(free)}
