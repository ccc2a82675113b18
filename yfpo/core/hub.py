"""The Hugging Face Hub: hub ids, a local mirror of pre-downloaded repositories, and a fast,
explicit failure when the hub cannot be reached and nothing is cached.

Without this, ``datasets``/``huggingface_hub`` retry for half a minute or more per file on a
machine without network (and hang on firewalls that drop packets) before raising an error
that does not say what to do. Here the hub's host is probed once per process with a short
timeout; offline, everything is read from a mirror directory or the local HF cache only.

A mirror is a directory holding repositories at ``<mirror>/<org>/<name>``, as written by
``hf download <org>/<name> [--repo-type dataset] --local-dir <mirror>/<org>/<name>``; set it
with ``hub.mirror=`` or the environment variable ``YFPO_HUB_MIRROR``.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig

from yfpo.core.errors import UserError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Only weights that load without unpickling, plus configs and tokenizer files.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


class HubUnavailable(UserError, RuntimeError):
    """A hub repository that is neither reachable, mirrored nor cached; the message says how to get it."""


def is_hub_id(path: str | os.PathLike) -> bool:
    """``org/name`` that is not an existing local path."""
    return bool(HUB_ID.match(str(path))) and not Path(path).exists()


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def _probe(endpoint: str, timeout_s: float) -> bool:
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def reachable(timeout_s: float) -> bool:
    """Whether the hub endpoint (``HF_ENDPOINT``) accepts a TCP connection within ``timeout_s``
    seconds; False at once when ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set."""
    if _truthy("HF_HUB_OFFLINE") or _truthy("HF_DATASETS_OFFLINE"):
        return False
    return _probe(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), float(timeout_s))


@contextmanager
def offline_mode():
    """Make huggingface_hub, datasets and transformers read the local cache only (restored on exit)."""
    import datasets.config
    import huggingface_hub.constants

    saved = huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def mirrored(repo_id: str, hub: DictConfig) -> Path | None:
    """``<hub.mirror>/<repo_id>`` when that directory exists."""
    if hub.get("mirror"):
        path = Path(hub.mirror) / repo_id
        if path.is_dir():
            return path
    return None


def _advice(repo_id: str, kind: str, hub: DictConfig, key: str) -> str:
    repo_type = " --repo-type dataset" if kind == "dataset" else ""
    mirror = hub.get("mirror") or Path.home() / "hf-mirror"  # a directory of the user's; any other works
    return (
        f"{kind} {repo_id!r} is not in the local Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}), "
        f"not under hub.mirror={hub.get('mirror')!r}, and the hub cannot be reached (no connection within "
        f"hub.timeout_s={hub.timeout_s} s, or HF_HUB_OFFLINE is set). Either download it on a machine with network:\n"
        f"    hf download {repo_id}{repo_type} --local-dir {mirror}/{repo_id}\n"
        f"and set hub.mirror={mirror} (or YFPO_HUB_MIRROR={mirror}), or set {key}= to a local "
        + ("JSONL/parquet file with the same fields." if kind == "dataset" else "model directory (config.json + safetensors).")
    )


def load_dataset(repo_id: str, name: str | None, split: str, hub: DictConfig, key: str = "data.path"):
    """``datasets.load_dataset(repo_id, name, split=split)`` from the mirror, the hub, or (offline)
    the cache; raises :class:`HubUnavailable` at once when none has it. ``key`` names the config
    field to suggest in the error."""
    import datasets

    source = mirrored(repo_id, hub)
    if source is not None:
        return datasets.load_dataset(str(source), name=name, split=split)
    if reachable(hub.timeout_s):
        return datasets.load_dataset(repo_id, name=name, split=split)
    try:
        with offline_mode():
            return datasets.load_dataset(repo_id, name=name, split=split)
    except OSError as err:  # datasets' ConnectionError and FileNotFoundError included
        raise HubUnavailable(_advice(repo_id, "dataset", hub, key)) from err


def local_model(repo_id: str, hub: DictConfig, key: str = "model.path") -> Path:
    """A local directory holding model ``repo_id``: the mirror, or a snapshot in the HF cache
    (downloaded when the hub is reachable; safetensors only, never pickled weights)."""
    from huggingface_hub import snapshot_download

    source = mirrored(repo_id, hub)
    if source is not None:
        return source
    online = reachable(hub.timeout_s)
    try:
        if online:
            return Path(snapshot_download(repo_id, allow_patterns=MODEL_FILES))
        with offline_mode():
            return Path(snapshot_download(repo_id, allow_patterns=MODEL_FILES, local_files_only=True))
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError included
        if online:
            raise
        raise HubUnavailable(_advice(repo_id, "model", hub, key)) from err
