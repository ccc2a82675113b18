"""``python -m yfpo.train [overrides]``: one training run (or a ``-m`` sweep of them).

The run directory is derived from the config (see ``hydra.run.dir`` in ``conf/config.yaml``),
so running the same command again resumes from ``checkpoints/last.ckpt``, and a finished run
is skipped.
"""

from __future__ import annotations

import gc
import os
import shutil
import warnings
from contextlib import nullcontext
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from yfpo.core import artefacts
from yfpo.train.checkpoints import (DONE, HFCheckpoints, ResumePoints, StreamedCheckpointIO, ckpt_name, fsync, is_complete,
                                   resume_point, written)
from yfpo.core.config import CONF_DIR, refuse_added_keys
from yfpo.data.datamodule import TrainingDataModule
from yfpo.core.errors import EXIT_USER_ERROR, ConfigError, Stopped, UserError, run_cli
from yfpo.core.locks import exclusive
from yfpo.train.loggers import finish, make_loggers
from yfpo.core.models import load_model, load_tokenizer, weights_fingerprint
from yfpo.assets.prepare import ensure_model, ensure_synthetic
from yfpo.train.module import PolicyModule
from yfpo.neurons import io as neuron_io
from yfpo.core.schema import check_method, role
from yfpo.core.inputs import run_identity, training_inputs
from yfpo.train.reference import ReferenceCache, declared_identity, tokens_fingerprint
from yfpo.train.strategies import build_strategy
from yfpo.core.log import log

LOCK = ".lock"
RUN_CONFIG = "run_config.yaml"


def task_overrides() -> list[str] | None:
    """This command's overrides (for the commands a hint prints), None outside a Hydra app."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def load_neurons(run: DictConfig, where: DictConfig, policy):
    """The neuron set of ``neurons.path``: required for ``method.loss=yfpo``, optional (tracked) otherwise."""
    use = role(run.method)
    needed = use == "rewarded"
    if use is None or (not needed and not Path(run.neurons.path).is_file()):
        return None
    settings = run.neurons
    key = neuron_io.neuron_key(settings, where.model_tag, weights_fingerprint(policy), policy.config, run.data.template,
                               where.hub.mirror)
    try:
        neurons = neuron_io.load_for(settings, key, f"method={run.method.name}", task_overrides())
    except neuron_io.NeuronFileError as e:
        if needed:
            raise
        log.warning(f"not tracking neurons: {e}")
        return None
    log.info(f"neurons ({'rewarded' if needed else 'tracked, not optimised'}): {settings.path} (selector {settings.selector}; recorded in run_config.yaml as neurons.*)")
    return neurons


def check_resume(cfg: DictConfig, run_dir: Path, finished: bool = False) -> None:
    """Refuse to resume, or to call finished, a run directory whose saved config differs from this one."""
    saved_path = run_dir / RUN_CONFIG
    ckpt_dir = run_dir / "checkpoints"
    started = (ckpt_dir / "last.ckpt").is_file() or any(ckpt_dir.glob("ckpt-*"))
    if not saved_path.is_file() or not (started or finished):
        # nothing was trained under the saved config (a start that failed before its first
        # checkpoint): this start's config replaces it, so a corrected command is not refused
        OmegaConf.save(cfg, saved_path, resolve=True)
        return
    old, new = run_identity(OmegaConf.load(saved_path)), run_identity(cfg)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        fix = (f"Delete {run_dir} to train it again" if finished  # e.g. a default or a cached model changed since
               else "Resume it with the same overrides")
        raise UserError(
            f"{run_dir} holds a {'finished ' if finished else ''}run with another config ({diff}). "
            f"{fix}, or give this run another directory (name=... or hydra.run.dir=...)."
        )


def check_training_config(cfg: DictConfig, warn: bool = True) -> None:
    """Refuse, before anything loads, a setting that cannot work or would do nothing: each error
    names the key and the fix (types and choices are the schema's: yfpo/core/schema.py). ``lambda`` on a
    method that ignores it would train plain DPO in a directory named after it; ``lambda=0`` with YFPO
    is DPO, which is allowed (the paper's control) but said."""
    lam = cfg["lambda"]
    if lam < 0:
        raise ConfigError(f"lambda={lam:g}: give a strength >= 0 (a negative one rewards the neuron margin's opposite)")
    if lam and cfg.method.loss != "yfpo":
        raise ConfigError(f"lambda={lam:g} is read only by method=yfpo or yfpo_fdt; method={cfg.method.name} "
                          "ignores it: drop the override, or choose method=yfpo")
    check_method(cfg.method)
    if warn and cfg.method.loss == "yfpo" and lam == 0:
        log.warning(f"method={cfg.method.name} with lambda=0 trains exactly DPO"
                    f"{' with FDT' if cfg.method.fdt else ''} (set lambda=0.2, say, for the neuron reward)")
    if cfg.beta <= 0:
        raise ConfigError(f"beta={cfg.beta:g}: give a temperature > 0 (e.g. beta=0.1)")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr:g}: give a learning rate > 0 (e.g. optim.lr=5e-7)")
    steps = cfg.trainer.get("max_steps", -1)
    if isinstance(steps, bool) or not isinstance(steps, int) or (steps != -1 and steps < 1):
        raise ConfigError(f"trainer.max_steps={steps!r}: give a number of optimizer steps >= 1, or -1 for trainer.max_epochs")
    count = cfg.checkpoints.count
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"checkpoints.count={count!r}: give a number of checkpoints >= 1 (the paper's 3)")
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    if cfg.data.global_batch_size and accumulate != 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate} conflicts with data.global_batch_size="
                          f"{cfg.data.global_batch_size}, which sets the accumulation from the batch size and the number "
                          "of processes: drop one of the two")


def export(cfg: DictConfig, ckpt_dir: Path) -> None:
    """Copy the final HF checkpoint to ``export_to``, keyed on this run's config (the key
    :func:`yfpo.assets.prepare.model_key` expects of a model made by ``train:<experiment>``)."""
    final = ckpt_dir / ckpt_name(cfg.checkpoints.count)
    if not cfg.get("export_to") or not is_complete(final):
        return
    target, key = Path(cfg.export_to), run_identity(cfg)
    if artefacts.saved_key(target) == artefacts.stringify(key):
        return
    size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
    with written(target, f"the export of {final.name}", size), artefacts.publishing(target, key) as tmp:
        shutil.copytree(final, tmp)
        fsync(tmp)


def accumulation(global_batch: int, batch_size: int, world: int) -> int:
    """Gradient accumulation steps that make ``batch_size`` rows on each of ``world`` processes a
    global batch of ``global_batch`` rows (config: ``data.global_batch_size``)."""
    per_step = batch_size * world
    if global_batch % per_step:
        raise ConfigError(f"data.global_batch_size={global_batch} is not a multiple of data.batch_size={batch_size} "
                         f"x {world} processes; change data.batch_size or the number of devices")
    return global_batch // per_step


def drop_resume_point(last: Path) -> None:
    """Delete a finished run's ``last.ckpt`` (``checkpoints.keep_resume_point=false``): a file, or
    DeepSpeed's directory. The HF checkpoints and ``DONE`` stay."""
    if last.is_dir():
        shutil.rmtree(last)
    elif last.exists():
        last.unlink()
    else:
        return
    log.info(f"deleted the resume point {last} (checkpoints.keep_resume_point=false; the run is DONE)")


def fit(cfg: DictConfig, run_dir: Path) -> Path:
    """Train according to ``cfg`` in ``run_dir``; returns the directory of the HF checkpoints."""
    check_training_config(cfg)
    ckpt_dir = run_dir / "checkpoints"
    if (run_dir / DONE).is_file():
        check_resume(cfg, run_dir, finished=True)
        log.info(f"{run_dir} is complete; nothing to do (delete {run_dir} to train it again)")
        export(cfg, ckpt_dir)  # a no-op unless the export is missing or torn
        if not cfg.checkpoints.keep_resume_point:
            drop_resume_point(ckpt_dir / "last.ckpt")
        return ckpt_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    # One writer per run directory; the DDP ranks a launcher starts share their rank 0's.
    first = rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"
    with exclusive(run_dir / LOCK, f"run directory {run_dir}") if first else nullcontext():
        try:
            return _train(cfg, run_dir, ckpt_dir)
        finally:
            release_memory()


def release_memory() -> None:
    """Free a finished run's model, optimizer and reference now. A ``-m`` sweep runs its jobs one after
    another in one process, and these sit in reference cycles (Lightning's trainer and module point at
    each other) that only Python's cycle collector frees, whenever its allocation counters next say so:
    otherwise the next job can allocate its own beside them (two Qwen2-0.5B jobs on a CPU: over
    22.9 GB instead of 13.9 GB)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _train(cfg: DictConfig, run_dir: Path, ckpt_dir: Path) -> Path:
    check_resume(cfg, run_dir)
    # Everything below reads `run`, the part of the config that is the run (and its identity), or
    # `where`: where things are found and logged, which never changes what is trained.
    run = training_inputs(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)  # once: also the config the loggers record
    where = OmegaConf.create({k: resolved[k] for k in ("cache_dir", "hub", "model_tag", "logger")})
    L.seed_everything(run.seed, workers=True)
    syn = run.get("synthetic")
    if syn is not None:
        ensure_synthetic(syn, run.data.path)
    path = ensure_model(run.model, cache_dir=where.cache_dir, hub_cfg=where.hub, syn=syn, overrides=task_overrides())
    tokenizer = load_tokenizer(run.model, path)
    policy = load_model(run.model, path, autocast=str(run.trainer.precision).startswith(("bf16", "16")), training=True)
    kind = "sft" if run.method.loss == "sft" else "pairs"
    data = TrainingDataModule(run.data, tokenizer, kind=kind, seed=run.seed, hub=where.hub)
    data.setup("fit")  # the rows are needed now to identify a reference cache
    r = run.reference
    cache = None
    if kind == "pairs" and r.mode == "precompute":
        declared = declared_identity(run.model, run.data, r, run.trainer.precision)
        cache = ReferenceCache.for_run(r, declared, where.model_tag, weights_fingerprint(policy),
                                       tokens_fingerprint(data.train_set), len(data.train_set))
        cache.check()  # a stale cache is refused before any work starts
    module = PolicyModule(policy, run.method, run.optim, run.beta, run["lambda"], load_neurons(run, where, policy),
                          reference=r.mode, reference_dtype=r.dtype, reference_cache=cache,
                          chunk_tokens=run.logprobs.chunk_tokens)
    callbacks = [
        data.position,  # before the checkpoint callbacks (Lightning runs those last): the loader's position
        HFCheckpoints(ckpt_dir, run.checkpoints.count, tokenizer),
        ResumePoints(ckpt_dir, run.checkpoints.resume_every_n_steps),
    ]
    if run.trainer.get("enable_progress_bar", True):
        callbacks.append(TQDMProgressBar())  # plain tqdm: readable in log files and SLURM output, unlike rich
    options = {**run.trainer, "strategy": build_strategy(run.trainer.strategy, policy)}
    last = ckpt_dir / "last.ckpt"
    resume_step, last_row = resume_point(last) if last.is_file() else (None, None)
    loggers = make_loggers(where.logger, run_dir, resolved, resume_step, last_row)
    streamed = getattr(options["strategy"], "strategy_name", None) != "deepspeed"  # DeepSpeed writes its own directory
    trainer = L.Trainer(**options, logger=loggers, callbacks=callbacks, plugins=[StreamedCheckpointIO()] if streamed else None,
                        default_root_dir=run_dir, use_distributed_sampler=False)  # GlobalBatchSampler shards the batches itself
    if run.data.global_batch_size:
        trainer.accumulate_grad_batches = accumulation(run.data.global_batch_size, run.data.batch_size, trainer.world_size)
    per_step = run.data.batch_size * trainer.world_size * trainer.accumulate_grad_batches
    if len(data.train_set) < per_step and trainer.is_global_zero:  # allowed (a quick look at a few rows), but every step then repeats rows
        log.warning(f"{len(data.train_set)} training rows are fewer than one optimizer step's {per_step} "
                    f"(data.batch_size x processes x accumulation): each step repeats rows to fill its batch")
    if resume_step is not None:
        log.info(f"resuming {run_dir} from {last} (step {resume_step}; logs/metrics.csv kept up to it)")
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
        finish(loggers)
    except SIGTERMException:  # a pre-emption (yfpo.train.checkpoints.ResumePoints)
        finish(loggers)
        kept = f"it resumes from step {resume_point(last)[0]} ({last})" if last.is_file() else "it has no resume point yet and restarts from step 0"
        raise Stopped(f"{run_dir} stopped by SIGTERM at step {trainer.global_step} of {int(trainer.estimated_stepping_batches)}; "
                      f"{kept} when the same command runs again") from None
    if trainer.is_global_zero:
        export(cfg, ckpt_dir)
        if trainer.global_step >= trainer.estimated_stepping_batches:
            (run_dir / DONE).write_text(f"{trainer.global_step}\n")
            if not run.checkpoints.keep_resume_point:
                drop_resume_point(last)
    return ckpt_dir


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The frozen reference is in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_cli(refuse_added_keys, list(HydraConfig.get().overrides.task), cfg)
        run_cli(fit, cfg, run_dir)
    except SystemExit as e:
        if e.code == EXIT_USER_ERROR and {p.name for p in run_dir.iterdir()} <= {".hydra", f"{HydraConfig.get().job.name}.log"}:
            shutil.rmtree(run_dir, ignore_errors=True)  # a refused start: only what Hydra wrote before it, no run
        raise

