"""Cached artefacts keyed on what they were made from: the one mechanism every stage reuses files by.

An artefact (the synthetic data, the tiny model, a neuron file, a pairs file, a data subset, the
reference cache, an evaluation) is reused only when its *key* matches: the settings it was made with
plus fingerprints of its inputs (the content of its data, the weights of its model, the prompt
template). The key is written after the artefact, so one torn by a crash has no key and is made
again. A key that differs is refused, once and up front, listing every changed field and the fix:
a file is never silently reused for other inputs, nor silently overwritten.

Keys live beside their artefact (``<file>.key.json``, ``<directory>/key.json``); the safetensors
files (neurons, reference cache) carry theirs in their own metadata, written in one piece with the
tensors, and are compared with :func:`refuse_changes` too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from yfpo.core.errors import UserError
from yfpo.core.log import log

_file_hashes: dict[tuple, str] = {}  # (path, size, mtime_ns) -> content hash, for this process


class StaleArtefactError(UserError, ValueError):
    """A cached artefact made from other inputs than this run's; the message lists them and the fix."""


def hash_text(*parts: object) -> str:
    """A short stable hash of ``parts`` (JSON-encoded, so dicts hash the same in any key order)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprint(path: str | Path, recursive: bool = True) -> str:
    """A hash of a file's bytes, or of every file in a directory (names and bytes; key files excluded).

    ``recursive=False`` reads a directory's own files only: an HF model directory's weights, config
    and tokenizer, not the ``eval/`` results that evaluating a bare checkpoint puts inside it."""
    path = Path(path)
    found = path.rglob("*") if recursive else path.iterdir()
    files = [path] if path.is_file() else sorted(p for p in found if p.is_file() and not p.name.endswith("key.json"))
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        memo = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if memo not in _file_hashes:
            content = hashlib.sha1()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    content.update(block)
            _file_hashes[memo] = content.hexdigest()
        h.update(f"{f.relative_to(path) if f != path else f.name}|{_file_hashes[memo]}".encode())
    return h.hexdigest()[:16]


def rows_fingerprint(rows: Iterable) -> str:
    """A hash of data rows in order (dicts of a JSONL file or hub dataset, or token-id tuples)."""
    h = hashlib.sha1()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def source_fingerprint(path: str | Path, mirror: str | Path | None = None) -> str:
    """What identifies a data or model source: the content of a local file or directory; for a hub
    id, the content of its copy under ``mirror`` (``hub.mirror``) when there is one, else the id
    itself (the hub's own revision, which the HF cache follows)."""
    from yfpo.core.hub import is_hub_id

    if Path(path).exists():
        return file_fingerprint(path)
    if mirror and is_hub_id(path) and (Path(mirror) / str(path)).is_dir():
        return "mirror:" + file_fingerprint(Path(mirror) / str(path))
    return f"hub:{path}"


def model_tag(name: str, path: str, cache_dir: str) -> str:
    """``<model.name>-<hash of model.path>``: file names that tell apart two models sharing a name
    (the smoke model and ``tiny_base``). A path under ``cache_dir`` is hashed relative to it, so a
    moved cache keeps its names."""
    rel = str(path)
    if cache_dir and rel.startswith(str(cache_dir)):
        rel = rel[len(str(cache_dir)):].lstrip("/")
    return f"{name}-{hashlib.sha1(rel.encode()).hexdigest()[:6]}"


def key_path(artefact: Path) -> Path:
    """Where the key of ``artefact`` lives: ``key.json`` inside a directory, ``<name>.key.json`` beside a file."""
    return artefact / "key.json" if artefact.is_dir() else artefact.with_name(artefact.name + ".key.json")


@contextmanager
def staged(path: Path, tag: str = "") -> Iterator[Path]:
    """The one atomic write: a temporary path ``<path><tag>.tmp`` (a file or a directory) to build
    the artefact in, moved onto ``path`` by a rename when the block succeeds. Readers see all of it
    or none; a crash leaves ``path`` as it was and the temporary one is cleared by the next write
    with the same ``tag`` (the writers of a directory hold its lock; files that several processes
    may write at once get a ``tag`` of their own, see :func:`atomic_write`). A directory that
    already exists is removed first: a rename cannot replace it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{tag}.tmp")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`staged`, in a temporary file of this process's own."""
    with staged(path, f".{os.getpid()}") as tmp:
        tmp.write_text(text)


def stringify(key: Mapping) -> dict[str, str]:
    """A key's values as strings (how safetensors metadata stores them, and how keys are compared)."""
    return {k: str(v) if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in key.items()}  # str(): a Choice is its value


def refuse_changes(what: str, saved: Mapping, now: Mapping, fix: str) -> None:
    """Raise :class:`StaleArtefactError` when ``saved`` and ``now`` differ, listing every changed field."""
    saved, now = stringify(saved), stringify(now)
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if changed:
        detail = "; ".join(f"{k}: made with {saved.get(k)!r}, now {now.get(k)!r}" for k in changed)
        raise StaleArtefactError(f"{what} was made from other inputs ({detail}). {fix}")


def refuse_metadata_changes(what: str, metadata: Mapping, key: Mapping, fix: str) -> None:
    """:func:`refuse_changes` for a key kept inside a file's own metadata (safetensors), which holds
    other fields too (format, date): only the key's fields are compared."""
    refuse_changes(what, {k: metadata.get(k) for k in key}, key, fix)


def saved_key(artefact: Path) -> dict | None:
    """The key written for ``artefact``, or None when there is none (never finished, or absent)."""
    path = key_path(artefact)
    return json.loads(path.read_text()) if path.is_file() else None


def check(artefact: Path, key: Mapping, what: str, fix: str) -> bool:
    """Whether ``artefact`` exists, finished, with this ``key``; raises when it was made with another.

    An artefact without a key (torn by a crash) counts as absent: the
    caller makes it again."""
    saved = saved_key(Path(artefact)) if Path(artefact).exists() else None
    if saved is None:
        return False
    refuse_changes(what, saved, key, fix)
    return True


def kept(artefact: Path, key: Mapping, what: str, fix: str, redo: str, metadata: Mapping | None = None) -> bool:
    """The one "keep the file made from these weights and settings" rule: True (and said) when
    ``artefact`` was made with ``key`` (kept in ``metadata`` for a safetensors file, else beside
    it); False when there is none; :class:`StaleArtefactError` when it was made from other inputs."""
    if metadata is not None:
        refuse_metadata_changes(what, metadata, key, fix)
    elif not check(artefact, key, what, fix):
        return False
    log.info(f"{what} exists, made from these inputs; keeping it ({redo})")
    return True


def commit(artefact: Path, key: Mapping) -> None:
    """Record ``key`` for the finished ``artefact`` (always last, so a crash leaves it unkeyed)."""
    atomic_write(key_path(Path(artefact)), json.dumps(stringify(key), indent=2, sort_keys=True))


@contextmanager
def publishing(target: Path, key: Mapping) -> Iterator[Path]:
    """:func:`staged` for a keyed directory: build it in the yielded path; it replaces ``target``
    (unkeyed: torn by a crash), then its ``key`` is committed."""
    with staged(target) as tmp:
        yield tmp
    commit(target, key)
