"""The training DataModule, its resumable loader and the global batch sampler."""

from __future__ import annotations

from functools import partial
from typing import Iterator

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Sampler

from yfpo.data.encode import Encoded, Encoder, collate
from yfpo.core.errors import UserError
from yfpo.data.rows import DataError, read_rows


class TrainingDataModule(L.LightningDataModule):
    """The training rows of ``cfg.data``: SFT examples (``kind="sft"``) or preference pairs (``kind="pairs"``).

    Batches are drawn by :class:`GlobalBatchSampler`: the same global batches for any number
    of processes, so a 1-GPU and an 8-GPU run with one global batch size see the same data.
    The loader is resumable: a checkpoint records how far into the epoch training got.
    """

    def __init__(self, cfg: DictConfig, tokenizer, kind: str, seed: int, hub: DictConfig | None = None):
        super().__init__()
        self.cfg, self.tok, self.kind, self.seed, self.hub = cfg, tokenizer, kind, seed, hub
        self.train_set: list[Encoded] | None = None
        self.collate = partial(collate, pad_id=tokenizer.pad_token_id)
        self.position = EpochPosition()  # a callback: training adds it to the Trainer's

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            rows = read_rows(self.cfg, self.kind, self.hub)
            self.train_set = Encoder(self.cfg, self.tok).encode_all(rows, self.kind, self.cfg.path)

    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        world, rank = (t.world_size, t.global_rank) if t is not None else (1, 0)
        window = self.cfg.get("group_by_length") or None
        lengths = [e.longest() for e in self.train_set] if window else None
        sampler = GlobalBatchSampler(len(self.train_set), self.cfg.batch_size, world, rank, self.seed, lengths, window)
        return ResumableLoader(self.train_set, batch_sampler=sampler, collate_fn=self.collate,
                               num_workers=self.cfg.num_workers, trainer=t, position=self.position)


class EpochPosition(L.Callback):
    """How many batches of the current epoch training has finished, from the ``batch_idx`` Lightning
    passes to ``on_train_batch_end`` (where checkpoints are saved; it counts on from a resumed
    position): what :meth:`ResumableLoader.state_dict` saves."""

    def __init__(self) -> None:
        self.epoch, self.done = 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.epoch, self.done = trainer.current_epoch, batch_idx + 1

    def batches(self, epoch: int) -> int:
        return self.done if epoch == self.epoch else 0


class ResumableLoader(DataLoader):
    """A DataLoader that starts every epoch with that epoch's shuffle, and whose checkpointed state
    is the position in the epoch (Lightning saves the ``state_dict`` of loaders that have one and
    restores it before iterating)."""

    def __init__(self, *args, trainer: L.Trainer | None = None, position: "EpochPosition | None" = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trainer, self.position = trainer, position

    def __iter__(self):
        # Lightning calls set_epoch on a loader's samplers but not on its batch_sampler.
        if self.trainer is not None:
            self.batch_sampler.set_epoch(self.trainer.current_epoch)
        return super().__iter__()

    def state_dict(self) -> dict:
        return {"epoch": self.trainer.current_epoch, "batches": self.position.batches(self.trainer.current_epoch),
                "layout": self.layout()}

    def load_state_dict(self, state: dict) -> None:
        # The position counts this process's batches, and Lightning's restored loop counts the same
        # batches and the accumulation windows they made: only the layout that saved them continues
        # exactly on the rows not yet seen, with the same optimizer steps.
        saved = state["layout"]
        if list(saved) != self.layout():
            (w0, a0), (w1, a1) = saved, self.layout()
            raise ResumeLayoutError(
                f"the resume point was saved by {w0} process(es) accumulating {a0} batch(es) per optimizer step; this start "
                f"has {w1} accumulating {a1}. Its position counts per-process batches, so it cannot continue exactly on "
                f"another layout: resume with the interrupted layout ({w0} process(es) in all: trainer.devices x "
                "trainer.num_nodes), or delete the run directory to train it again on this one")
        self.batch_sampler.resume(state["epoch"], state["batches"])

    def layout(self) -> list[int]:
        """``[processes, batches accumulated per optimizer step]`` of this training."""
        return [self.trainer.world_size, self.trainer.accumulate_grad_batches]


class ResumeLayoutError(UserError):
    """A resume on a process count or accumulation other than the interrupted run's."""


class GlobalBatchSampler(Sampler[list[int]]):
    """Row indices of this process's batches, cut from seeded global batches.

    Epoch ``e`` shuffles all ``num_rows`` with seed ``seed + e``; global batch ``g`` holds
    permuted rows ``g*G .. (g+1)*G - 1`` with ``G = batch_size * world``, and process ``rank``
    takes slice ``rank`` of it. The last global batch is filled up from the start of the
    permutation, so every process gets the same number of equally sized batches (DDP's mean of
    per-process gradients is then the global-batch gradient) and the batches do not depend on
    how many processes share them.

    With ``lengths`` and ``window`` (``data.group_by_length``), each run of ``window`` permuted
    rows is sorted by length (longest first) before the cut, so a batch holds rows of similar
    length and little padding. The order depends on neither ``world`` nor ``rank``, so the
    guarantee above still holds.
    """

    def __init__(self, num_rows: int, batch_size: int, world: int = 1, rank: int = 0, seed: int = 0,
                 lengths: list[int] | None = None, window: int | None = None):
        if num_rows < 1 or batch_size < 1:
            raise DataError(f"need at least one row and data.batch_size >= 1 (rows={num_rows}, batch_size={batch_size})")
        if window is not None and window < 1:
            raise DataError(f"data.group_by_length={window}: give a window of rows >= 1, or null to turn it off")
        self.n, self.b, self.world, self.rank, self.seed = num_rows, batch_size, world, rank, seed
        self.lengths, self.window = lengths, window
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, batches already trained on), from a checkpoint

    def set_epoch(self, epoch: int) -> None:  # called by ResumableLoader at the start of every epoch
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        """Continue epoch ``epoch`` after its first ``batches`` batches."""
        self.epoch, self._skip = epoch, (epoch, batches)

    def __len__(self) -> int:
        return -(-self.n // (self.b * self.world))

    def order(self, epoch: int) -> list[int]:
        """All rows of ``epoch`` in training order (before the wrap-around fill)."""
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        if self.window:
            perm = [i for s in range(0, self.n, self.window)
                    for i in sorted(perm[s : s + self.window], key=lambda i: -self.lengths[i])]
        return perm

    def __iter__(self) -> Iterator[list[int]]:
        g = self.b * self.world
        perm = self.order(self.epoch)
        perm += (perm * (-(-g // self.n)))[: len(self) * g - self.n]  # wrap around to fill the last global batch
        skip = 0
        if self._skip is not None:
            skip = self._skip[1] if self._skip[0] == self.epoch else 0
            self._skip = None
        for start in range(skip * g, len(perm), g):
            yield perm[start + self.rank * self.b : start + (self.rank + 1) * self.b]

