"""Evenly spaced Hugging Face-format checkpoints ``ckpt-1 .. ckpt-N`` of the policy."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from safetensors import SafetensorError

from yfpo.core.artefacts import staged
from yfpo.core.errors import ConfigError, UserError

STATE_FILE = "yfpo_state.json"
DONE = "DONE"  # in the run directory once training reached its last step: the run is finished


def checkpoint_steps(total_steps: int, count: int) -> list[int]:
    """Optimizer steps at which to save: ``round(total * k / count)`` for ``k = 1..count``, the last at ``total``."""
    if count < 1:
        return []
    if total_steps < count:
        raise ConfigError(f"checkpoints.count={count} exceeds the {total_steps} optimizer steps of this run")
    return [round(total_steps * k / count) for k in range(1, count + 1)]


def is_complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def ckpt_name(k: int) -> str:
    """The directory of the k-th HF checkpoint of a run (``ckpt-0``: the model it started from)."""
    return f"ckpt-{k}"


def ckpt_index(name: str) -> int:
    """The k of a checkpoint directory name (:func:`ckpt_name`)."""
    return int(name.removeprefix("ckpt-"))


class DiskFullError(UserError, OSError):
    """No room for a checkpoint; the previous one is kept."""


def resume_point(path: Path) -> tuple[int, dict | None]:
    """The optimizer step a Lightning checkpoint (``last.ckpt``) was saved at, and the metrics row
    of that step's batch when it is one the loggers write (``yfpo_log_row``, see
    :meth:`yfpo.train.module.PolicyModule.on_save_checkpoint`). Memory-mapped and tensors-only, so
    neither the weights are read nor anything is unpickled."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as err:  # torn zip, truncated file, not a checkpoint
        raise UserError(f"the resume point {path} cannot be read ({str(err).splitlines()[0]}); "
                        f"move it aside (mv {path} {path}.damaged) and run the same command again to restart "
                        "this run from step 0") from None
    return int(ckpt["global_step"]), ckpt.get("yfpo_log_row")


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in a nested checkpoint dict (what ``torch.save`` writes, give or take
    the pickled structure)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class StreamedCheckpointIO(TorchCheckpointIO):
    """Lightning's resume point (``last.ckpt``), written as ``torch.save`` streams it: into a
    temporary file beside the destination, fsynced, then renamed over it. Lightning's own writer
    first serialises the whole checkpoint into memory (its size again in host RAM, 5.6 GB for a
    0.5B model with AdamW) and stages it through ``$TMPDIR``, whose move onto another filesystem
    is a copy that a full disk leaves torn under the final name. Here a crash or a full disk leaves
    the previous ``last.ckpt`` as it was."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        with written(path, "the resume point", tensor_bytes(checkpoint)):
            with staged(path) as tmp:
                torch.save(checkpoint, tmp)
                fsync(tmp)  # on disk before the rename makes it the resume point


def fsync(path: Path) -> None:
    """Flush ``path`` (a file, or every file under a directory) to disk."""
    for f in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def written(path: Path, what: str, need: int):
    """Turns a write of ``path`` (``need`` bytes) that failed for lack of space into one
    :class:`DiskFullError` naming the directory and the space; other failures pass unchanged."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as err:  # torch's zip writer and safetensors report a failed write in their own types
        free = shutil.disk_usage(path.parent).free
        if getattr(err, "errno", None) != errno.ENOSPC and "No space left" not in str(err) and free >= need:
            raise
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
        raise DiskFullError(f"no space left for {what} in {path.parent}: it needs about {need / 2**30:.2f} GiB, "
                            f"{free / 2**30:.2f} GiB is free; {kept}. Free space there (or move the run) and run "
                            "the same command again to resume") from None


class ResumePoints(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` optimizer steps, and on SIGTERM (a pre-emption).

    One process: SIGTERM is noted, training goes on to the end of the optimizer step it came in
    (the gradients of a partial accumulation window cannot be saved), saves ``last.ckpt`` there,
    where the periodic saves happen, and stops with Lightning's
    :class:`~lightning.pytorch.utilities.exceptions.SIGTERMException`. Lightning's own handler
    would stop after the current batch, mid-window or after this callback has run, with nothing
    saved. Several processes: Lightning's handler stays, which agrees on the signal across ranks
    and stops them after the batch; the last periodic resume point is kept."""

    def __init__(self, dirpath: Path, every_n_train_steps: int):
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps)
        self._step_before, self._stop = 0, False

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.world_size == 1:  # after Lightning installed its handler, which restores the original at teardown
            signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, frame) -> None:
        self._stop = True

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        super().on_train_batch_end(trainer, module, *args)
        if not (self._stop and trainer.global_step > self._step_before):  # not stopping, or mid-window
            return
        if trainer.global_step >= trainer.estimated_stepping_batches:
            return  # that was the last step: the run finishes
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        raise SIGTERMException


def save_hf(policy, tokenizer, path: Path, state: dict, state_dict: dict | None = None) -> None:
    """Write weights (safetensors), config, tokenizer and ``yfpo_state.json`` atomically to ``path``;
    ``state_dict`` replaces the policy's own (full weights gathered from a sharded model)."""
    weights = state_dict if state_dict is not None else policy.state_dict()
    with written(path, f"checkpoint {path.name}", tensor_bytes(weights)), staged(path) as tmp:
        policy.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        fsync(tmp)  # on disk before the rename makes it a checkpoint


def full_policy_state(trainer: L.Trainer) -> dict:
    """The policy's unsharded weights on rank 0 (empty elsewhere); collective: call on every rank."""
    full = trainer.strategy.lightning_module_state_dict()
    return {k.removeprefix("policy."): v for k, v in full.items() if k.startswith("policy.")}


class HFCheckpoints(L.Callback):
    """Saves ``count`` HF checkpoints under ``dirpath``, each loadable by
    ``AutoModelForCausalLM.from_pretrained``. Its ``yfpo_state.json`` holds the step, epoch and the
    latest logged metrics. Checkpoints that already exist (a resumed run) are not rewritten.
    Every rank takes part in gathering the weights (FSDP shards them); rank 0 alone writes."""

    def __init__(self, dirpath: str | Path, count: int, tokenizer):
        self.dir, self.count, self.tokenizer = Path(dirpath), count, tokenizer
        self.steps: dict[int, int] = {}

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        total = int(trainer.estimated_stepping_batches)
        self.steps = {s: k for k, s in enumerate(checkpoint_steps(total, self.count), start=1)}

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        k = self.steps.get(trainer.global_step)
        if k is None:
            return
        path = self.dir / ckpt_name(k)
        if trainer.strategy.broadcast(is_complete(path)):  # rank 0's answer, so all ranks agree
            return
        weights = full_policy_state(trainer)
        if trainer.is_global_zero:
            metrics = {n: float(v) for n, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
            state = {"checkpoint": k, "step": trainer.global_step, "epoch": trainer.current_epoch, "metrics": metrics}
            save_hf(module.policy, self.tokenizer, path, state, weights)
        trainer.strategy.barrier()
