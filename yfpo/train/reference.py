"""The frozen reference's log-probs computed once over the training rows, and their cache on disk.

``reference=precompute`` runs the reference a single time over every training row (chosen and
rejected) under ``inference_mode``, keeps a ``[rows, 2]`` table, and drops the reference model,
so training holds one model and runs one forward per step. The table is a safetensors file whose
metadata records what it was computed from; its name hashes the settings that the config declares
(model, data, template, truncation, precision, dtypes), and the metadata adds what can only be
observed (a fingerprint of the weights and of the token ids). A file whose observed part differs,
say after the model at ``model.path`` was retrained, is refused rather than silently reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from omegaconf import DictConfig
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from yfpo.core import artefacts
from yfpo.data.encode import to_device
from yfpo.core.errors import UserError

FORMAT = "yfpo-reference-logps/1"
# The config fields a cached table depends on (besides the observed fingerprints).
DATA_KEYS = ("path", "split", "hub_config", "subset_size", "subset_seed", "pair_mode", "template",
             "max_length", "max_prompt_length", "add_bos", "append_eos")


class ReferenceCacheError(UserError, ValueError):
    """A cached reference table that does not belong to this run; the message names the file and the fix."""


def tokens_fingerprint(rows: Sequence) -> str:
    """A hash of the token ids of every row (:class:`yfpo.data.encode.Encoded`), in order."""
    return artefacts.rows_fingerprint([e.prompt, e.chosen, e.rejected] for e in rows)


def declared_identity(model: DictConfig, data: DictConfig, reference: DictConfig, precision: str) -> dict[str, str]:
    """What the run's ``model``, ``data`` and ``reference`` groups and ``trainer.precision`` say the table depends on."""
    out = {"model": str(model.path), "model_dtype": str(model.dtype), "precision": str(precision),
           "reference_dtype": str(reference.dtype)}
    out.update({f"data.{k}": str(data.get(k)) for k in DATA_KEYS})
    if data.subset_size is None:
        del out["data.subset_seed"]  # no subset is drawn (its seed often follows the training seed)
    return out


class ReferenceCache:
    """One cached ``[rows, 2]`` table (chosen, rejected summed log-probs) at ``path``.

    ``identity`` holds every field the table depends on; the file is refused when any differs.
    """

    def __init__(self, path: str | Path, identity: dict):
        self.path, self.identity = Path(path), artefacts.stringify(identity)

    @classmethod
    def for_run(cls, reference: DictConfig, declared: dict, model_tag: str, weights: str, tokens: str, rows: int) -> "ReferenceCache":
        """The cache of a run: ``reference.cache_dir/<model tag>-<hash of the declared identity>.safetensors``
        (or ``reference.cache_path`` when set), identified by the :func:`declared_identity` and the observed fields."""
        path = reference.cache_path
        if not path:
            path = Path(reference.cache_dir) / f"{model_tag}-{artefacts.hash_text(declared)}.safetensors"
        return cls(path, {**declared, "weights": weights, "tokens": tokens, "rows": rows})

    def check(self) -> bool:
        """Whether the file exists; raises :class:`ReferenceCacheError` when it is foreign or stale."""
        if not self.path.is_file():
            return False
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types for a torn or foreign file
            raise ReferenceCacheError(f"reference cache {self.path} cannot be read ({e}); delete it to recompute") from None
        if meta.get("format") != FORMAT:
            raise ReferenceCacheError(f"{self.path} is not a yfpo reference cache (format {meta.get('format')!r}); "
                                      f"delete it or set reference.cache_path elsewhere")
        try:
            artefacts.refuse_metadata_changes(f"reference cache {self.path}", meta, self.identity,
                                              "Delete it to recompute, or use reference=live.")
        except artefacts.StaleArtefactError as e:
            raise ReferenceCacheError(str(e)) from None
        return True

    def load(self) -> torch.Tensor | None:
        """The cached ``[rows, 2]`` table, ``None`` when there is no file (see :meth:`check`)."""
        if not self.check():
            return None
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor("logps")

    def save(self, table: torch.Tensor) -> None:
        """Write ``table`` and the identity atomically."""
        with artefacts.staged(self.path) as tmp:
            save_file({"logps": table.detach().float().cpu().contiguous()}, str(tmp),
                      metadata={**self.identity, "format": FORMAT})


@torch.inference_mode()
def compute_table(rows: Sequence, logps_fn: Callable[[dict], torch.Tensor], collate: Callable[[list], dict],
                  batch_size: int, device: torch.device, rank: int = 0, world: int = 1) -> torch.Tensor:
    """``[len(rows), 2]`` reference log-probs (chosen, rejected); this process fills rows ``rank::world``
    and leaves zeros elsewhere, so a sum over processes gives the whole table.

    ``logps_fn(batch)`` returns ``[2b]`` summed log-probs, chosen rows first (the layout of ``collate``).
    Rows are batched by length, so little compute goes to padding.
    """
    mine = sorted(range(rank, len(rows), world), key=lambda i: rows[i].longest())
    table = torch.zeros(len(rows), 2, dtype=torch.float32, device=device)
    for s in tqdm(range(0, len(mine), batch_size), desc="reference log-probs", unit="batch", disable=rank != 0):
        idx = mine[s : s + batch_size]
        batch = to_device(collate([rows[i] for i in idx]), device)
        table[idx] = logps_fn(batch).float().view(2, -1).T
    return table
