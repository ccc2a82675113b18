"""Training data: reading and validating rows, tokenisation and truncation, collation, and the batch sampler.

Rows come from a hub id or a local JSONL/parquet file with the fields of the real datasets:

- ``pairs`` (Math-Step-DPO-10K): ``prompt``, ``initial_reason_steps``, ``chosen``, ``rejected``,
  ``full_chosen``, ``full_rejected`` (``answer``, ``dataset`` are carried along);
- ``sft`` (GSM8K layout): ``question``, ``answer`` (a worked solution).

Prompt and responses are tokenised separately and concatenated, so the response boundary is
exact, and a batch of ``B`` pairs is one ``[2B, T]`` tensor, chosen rows first.
"""

from __future__ import annotations

import json
import random
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from yfpo import artefacts
from yfpo import hub as hub_lib
from yfpo.artefacts import atomic_write
from yfpo.errors import UserError
from yfpo.locks import file_lock
from yfpo.prompts import format_prompt

PAIR_FIELDS = ("prompt", "initial_reason_steps", "chosen", "rejected", "full_chosen", "full_rejected")
SFT_FIELDS = ("question", "answer")
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(UserError, ValueError):
    """A dataset file or row that cannot be used; the message names the file, row and field."""


def load_rows(path: str, split: str = "train", name: str | None = None, hub: DictConfig | None = None,
              key: str = "data.path") -> list[dict]:
    """Rows of a local ``.jsonl``/``.json``/``.parquet`` file, or of a hub dataset id (config
    ``name``, ``split``) read through :mod:`yfpo.hub` with the ``hub`` settings. ``key`` is the
    config field that holds ``path``, named in errors."""
    import datasets

    local = Path(path)
    if local.suffix in LOCAL_FORMATS:
        if not local.is_file():
            raise DataError(f"{key}={path}: file does not exist (give a JSONL/parquet file or a hub id)")
        if local.suffix == ".jsonl":
            return read_jsonl(local)
        try:
            ds = datasets.load_dataset(LOCAL_FORMATS[local.suffix], data_files=str(local), split="train")
        except Exception as e:  # pyarrow's and datasets' parse errors name neither the file nor the fix
            raise DataError(f"{key}={path}: cannot be read as {local.suffix[1:]} ({type(e).__name__}: {e}); "
                            f"check the file, or convert it to JSONL (one JSON object per line)") from None
    elif hub_lib.is_hub_id(path):
        if hub is None:
            raise ValueError(f"{key}={path} is a hub id: pass the `hub` config to load it")  # a caller's bug
        ds = hub_lib.load_dataset(path, name, split, hub, key)
    elif local.is_dir():  # a dataset repository on disk (e.g. downloaded with `hf download`)
        files = [p for p in local.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(local).parts)]
        if not any(p.suffix in LOCAL_FORMATS for p in files):
            found = ", ".join(sorted({p.suffix or p.name for p in files})) or "nothing"
            raise DataError(f"{key}={path}: the directory holds no {'/'.join(LOCAL_FORMATS)} data files (found: {found}); "
                            "give a JSONL/parquet file, a directory of them, or a hub id")
        try:
            ds = datasets.load_dataset(str(local), name=name, split=split)
        except Exception as e:  # datasets' errors (no such split, mixed formats) name neither the key nor the fix
            raise DataError(f"{key}={path}: cannot be read as a dataset directory ({type(e).__name__}: {e}); "
                            "check its split (split=...), or point to one of its files") from None
    else:
        raise DataError(f"{key}={path}: not a .jsonl/.json/.parquet file, a directory, or a hub id (org/name)")
    return list(ds)


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a line that is not a JSON object is reported with its line number."""
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {n} is not UTF-8 (byte {e.start + 1}): re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n} is not valid JSON ({e.msg} at column {e.colno}); "
                                f"fix or delete that line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {n} is a JSON {type(row).__name__}, not an object with the dataset's fields")
            rows.append(row)
    return rows


def validate_rows(rows: list[dict], fields: tuple[str, ...], source: str) -> None:
    """Raise :class:`DataError` naming the first row (by index) with a missing or non-string field."""
    if not rows:
        raise DataError(f"{source}: no rows")
    for i, row in enumerate(rows):
        for f in fields:
            if not isinstance(row.get(f), str):
                got = "missing" if f not in row else f"{type(row[f]).__name__} {row[f]!r:.60}"
                raise DataError(f"{source}: row {i} field {f!r} must be a string, got {got}")


def check_pairs(rows: list[dict], keys: tuple[str, str], source: str) -> None:
    """Refuse pairs that cannot teach a preference: an empty response (it would train on EOS alone)
    or a chosen response identical to the rejected one (the loss is fixed at ln 2, yet the optimizer
    still moves the weights). Names every such row by index."""
    empty = [i for i, r in enumerate(rows) if not r[keys[0]].strip() or not r[keys[1]].strip()]
    same = [i for i, r in enumerate(rows) if r[keys[0]] == r[keys[1]] and i not in empty]
    for bad, what in ((empty, f"an empty {keys[0]!r} or {keys[1]!r}"), (same, f"{keys[0]!r} identical to {keys[1]!r}")):
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise DataError(f"{source}: {len(bad)} row(s) with {what}: rows {shown}; remove them from the file")


def subset(rows: list[dict], size: int | None, seed: int) -> list[dict]:
    """A seeded random sample of ``size`` rows (all rows, in order, when ``size`` is None)."""
    if size is None:
        return rows
    if size > len(rows):
        raise DataError(f"data.subset_size={size} exceeds the {len(rows)} rows available")
    idx = sorted(random.Random(seed).sample(range(len(rows)), size))
    return [rows[i] for i in idx]


@dataclass
class Encoded:
    """Token ids of one example; ``rejected`` is None for SFT; ``index`` is its row in the training set."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int] | None = None
    index: int = 0

    def longest(self) -> int:
        """Tokens of the longest sequence it contributes (prompt + the longer response)."""
        return len(self.prompt) + max(len(self.chosen), len(self.rejected or ()))


def truncate(prompt: list[int], responses: list[list[int]], max_length: int, max_prompt_length: int):
    """Fit prompt + the longest response into ``max_length`` tokens.

    The prompt is cut from the left (keeping the text next to the response) down to
    ``max_prompt_length``; then responses are cut from the right. So the prompt can never take
    more than ``max_prompt_length`` and every response keeps at least
    ``max_length - max_prompt_length`` tokens.
    """
    longest = max(len(r) for r in responses)
    if len(prompt) + longest > max_length and len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:]
    room = max_length - len(prompt)
    return prompt, [r[:room] for r in responses]


class Encoder:
    """Turns rows into :class:`Encoded` token ids according to ``cfg.data``."""

    def __init__(self, cfg: DictConfig, tokenizer):
        if cfg.max_prompt_length >= cfg.max_length:
            raise DataError(
                f"data.max_prompt_length={cfg.max_prompt_length} must be below data.max_length={cfg.max_length}"
            )
        if cfg.pair_mode not in ("step", "full"):
            raise DataError(f"data.pair_mode={cfg.pair_mode!r}: choose 'step' or 'full'")
        self.cfg, self.tok = cfg, tokenizer
        self.bos = [tokenizer.bos_token_id] if cfg.add_bos and tokenizer.bos_token_id is not None else []
        append_eos = cfg.append_eos if cfg.append_eos is not None else cfg.pair_mode == "full"
        self.pair_eos = [tokenizer.eos_token_id] if append_eos else []

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=False)["input_ids"] if texts else []

    def encode_all(self, rows: list[dict], kind: str, source: str) -> list[Encoded]:
        """Token ids of every row; raises :class:`DataError` naming the first bad row."""
        c = self.cfg
        validate_rows(rows, PAIR_FIELDS if kind == "pairs" else SFT_FIELDS, source)
        if kind == "pairs":
            prompts = [format_prompt(c.template, r["prompt"], r["initial_reason_steps"], self.tok) for r in rows]
            keys = ("chosen", "rejected") if c.pair_mode == "step" else ("full_chosen", "full_rejected")
            eos = self.pair_eos
        else:
            prompts = [format_prompt(c.template, r["question"], None, self.tok) for r in rows]
            keys, eos = ("answer",), [self.tok.eos_token_id]  # SFT must learn to stop
        if kind == "pairs":
            check_pairs(rows, keys, source)
        # One batched call per field: the Rust tokenizer is far faster on lists than row by row.
        prompt_ids = self._ids(prompts)
        response_ids = [self._ids([r[k] for r in rows]) for k in keys]
        out = []
        for i in tqdm(range(len(rows)), desc=f"encoding {Path(source).name}", unit="row", mininterval=2):
            prompt, responses = truncate(
                self.bos + prompt_ids[i], [ids[i] + eos for ids in response_ids], c.max_length, c.max_prompt_length
            )
            if any(not r for r in responses):
                raise DataError(f"{source}: row {i} has an empty response after tokenisation/truncation")
            out.append(Encoded(prompt, *responses, index=i))
        return out


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch.

    Pairs: ``input_ids``, ``attention_mask``, ``response_mask`` of shape ``[2B, T]``, rows
    ``0..B-1`` chosen and ``B..2B-1`` rejected; both halves share each prompt, so position ``t``
    is the same response position in a chosen row and its rejected partner (FDT relies on it).
    SFT: the same keys with ``[B, T]``. ``response_mask`` is True at response tokens;
    ``target_rows``/``target_cols`` (``[N]``) are the positions whose next token is one. ``index``
    (``[B]``) holds the examples' rows, and ``num_tokens`` (an int, counted here so that the
    training step needs no device-to-host sync) the non-padding tokens.
    """
    seqs = [(e.prompt, e.chosen) for e in examples]
    if examples[0].rejected is not None:
        seqs += [(e.prompt, e.rejected) for e in examples]
    length = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), length), dtype=torch.long)
    resp = torch.zeros((len(seqs), length), dtype=torch.bool)
    for i, (p, r) in enumerate(seqs):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attn[i, : len(p) + len(r)] = 1
        resp[i, len(p) : len(p) + len(r)] = True
    rows, cols = resp[:, 1:].nonzero(as_tuple=True)  # here on the host, so the GPU never waits for it
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp, "target_rows": rows, "target_cols": cols,
            "index": torch.tensor([e.index for e in examples]), "num_tokens": sum(len(p) + len(r) for p, r in seqs)}


def to_device(batch: dict, device: torch.device | str) -> dict:
    """A :func:`collate` batch with its tensors on ``device`` (``num_tokens`` stays a host int)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def sft_fields(cfg: DictConfig) -> tuple[str, str]:
    """The (question, worked solution) field names of SFT rows, e.g. NuminaMath-CoT's (problem, solution)."""
    return cfg.get("question_field", "question"), cfg.get("answer_field", "answer")


def read_rows(cfg: DictConfig, kind: str, hub: DictConfig | None = None) -> list[dict]:
    """The validated rows ``cfg`` (a ``data`` config) selects, SFT rows renamed to question/answer.

    With ``subset_file`` set, the seeded ``subset_size`` sample is written there on first use, keyed
    on its source's rows, split, seed and size (:mod:`yfpo.artefacts`), and read back by every later
    run, so all runs of a sweep train on the very same rows; a file drawn from other rows is refused.
    """
    if not cfg.get("subset_file"):
        return subset(_source_rows(cfg, kind, hub), cfg.subset_size, cfg.subset_seed)
    if cfg.subset_size is None:
        raise DataError("data.subset_file needs data.subset_size")
    saved = Path(cfg.subset_file)
    key = {"source": cfg.path, "split": cfg.split, "hub_config": cfg.get("hub_config"), "subset_size": cfg.subset_size,
           "subset_seed": cfg.subset_seed, "kind": kind}
    what, fix = f"data subset {saved}", "Delete it to draw it again, or set data.subset_file elsewhere."
    with file_lock(saved.with_name(saved.name + ".lock")):
        try:
            rows = _source_rows(cfg, kind, hub)
        except UserError:
            if saved_key := artefacts.saved_key(saved):  # e.g. an offline compute node: the subset is what it reads
                artefacts.refuse_metadata_changes(what, saved_key, key, fix)  # all but the content, which needs the source
                print(f"[yfpo] {cfg.path} cannot be read here; using {saved} as saved (its source is not re-checked)", flush=True)
                return read_jsonl(saved)
            raise
        key["content"] = artefacts.rows_fingerprint(rows)
        if not artefacts.check(saved, key, what, fix):
            write_jsonl(saved, subset(rows, cfg.subset_size, cfg.subset_seed), key)
            artefacts.commit(saved, key)
    return read_jsonl(saved)


def _source_rows(cfg: DictConfig, kind: str, hub: DictConfig | None) -> list[dict]:
    rows = load_rows(cfg.path, split=cfg.split, name=cfg.get("hub_config"), hub=hub)
    # Validated before sampling, so that an error names the row's index in the source.
    if kind == "pairs":
        validate_rows(rows, PAIR_FIELDS, cfg.path)
        return rows
    q, a = sft_fields(cfg)
    validate_rows(rows, (q, a), cfg.path)
    return [{"question": r[q], "answer": r[a]} for r in rows]


def write_jsonl(path: Path, rows: list[dict], meta: dict) -> None:
    """``rows`` as JSONL plus ``<path>.meta.json``, both written atomically."""
    atomic_write(path.with_name(path.name + ".meta.json"), json.dumps({**meta, "rows": len(rows)}, indent=2))
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


class PreferenceDataModule(L.LightningDataModule):
    """Rows of ``cfg.data`` as pairs (``kind="pairs"``) or SFT examples (``kind="sft"``).

    Batches are drawn by :class:`GlobalBatchSampler`: the same global batches for any number
    of processes, so a 1-GPU and an 8-GPU run with one global batch size see the same data.
    The loader is resumable: a checkpoint records how far into the epoch training got.
    """

    def __init__(self, cfg: DictConfig, tokenizer, kind: str, seed: int, hub: DictConfig | None = None):
        super().__init__()
        self.cfg, self.tok, self.kind, self.seed, self.hub = cfg, tokenizer, kind, seed, hub
        self.train_set: list[Encoded] | None = None
        self.collate = partial(collate, pad_id=tokenizer.pad_token_id)

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
                               num_workers=self.cfg.num_workers, trainer=t)


class ResumableLoader(DataLoader):
    """A DataLoader that starts every epoch with that epoch's shuffle, and whose checkpointed state
    is the position in the epoch (Lightning saves the ``state_dict`` of loaders that have one and
    restores it before iterating)."""

    def __init__(self, *args, trainer: L.Trainer | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trainer = trainer

    def __iter__(self):
        # Lightning calls set_epoch on a loader's samplers but not on its batch_sampler.
        if self.trainer is not None:
            self.batch_sampler.set_epoch(self.trainer.current_epoch)
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        # Lightning counts a batch as processed before on_train_batch_end, where checkpoints are saved.
        t = self.trainer
        return {"epoch": t.current_epoch, "batches": t.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume(state["epoch"], state["batches"])


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
