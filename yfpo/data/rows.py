"""Data rows: reading (hub id or local JSONL/parquet), validating, the seeded subset and its cache.

Rows have the fields of the real datasets:

- ``pairs`` (Math-Step-DPO-10K): ``prompt``, ``initial_reason_steps``, ``chosen``, ``rejected``,
  ``full_chosen``, ``full_rejected`` (``answer``, ``dataset`` are carried along);
- ``sft`` (GSM8K layout): ``question``, ``answer`` (a worked solution).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from omegaconf import DictConfig

from yfpo.core import artefacts
from yfpo.core import hub as hub_lib
from yfpo.core.artefacts import atomic_write
from yfpo.core.errors import UserError
from yfpo.core.locks import file_lock
from yfpo.core.log import log


PAIR_FIELDS = ("prompt", "initial_reason_steps", "chosen", "rejected", "full_chosen", "full_rejected")


SFT_FIELDS = ("question", "answer")


LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(UserError, ValueError):
    """A dataset file or row that cannot be used; the message names the file, row and field."""


def load_rows(path: str, split: str = "train", name: str | None = None, hub: DictConfig | None = None,
              key: str = "data.path") -> list[dict]:
    """Rows of a local ``.jsonl``/``.json``/``.parquet`` file, or of a hub dataset id (config
    ``name``, ``split``) read through :mod:`yfpo.core.hub` with the ``hub`` settings. ``key`` is the
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


def sft_fields(cfg: DictConfig) -> tuple[str, str]:
    """The (question, worked solution) field names of SFT rows, e.g. NuminaMath-CoT's (problem, solution)."""
    return cfg.get("question_field", "question"), cfg.get("answer_field", "answer")


def read_rows(cfg: DictConfig, kind: str, hub: DictConfig | None = None) -> list[dict]:
    """The validated rows ``cfg`` (a ``data`` config) selects, SFT rows renamed to question/answer.

    With ``subset_file`` set, the seeded ``subset_size`` sample is written there on first use, keyed
    on its source's rows, split, seed and size (:mod:`yfpo.core.artefacts`), and read back by every later
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
                log.info(f"{cfg.path} cannot be read here; using {saved} as saved (its source is not re-checked)")
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

