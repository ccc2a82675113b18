"""The Hydra config's home: where ``conf/`` is, the ``yfpo.dirname`` resolver of run directories,
and composing the config outside ``@hydra.main`` (for the stages that need no run directory).

Every entry point imports this module (for :data:`CONF_DIR`), which registers the resolver
before Hydra resolves ``hydra.run.dir``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
DIRNAME_LIMIT = 96  # characters; file systems refuse names over 255


def run_dirname(overrides: str) -> str:
    """A directory name for a run from Hydra's ``job.override_dirname``.

    Short override lists stay readable (``lambda=0.1,method=yfpo``); ``/`` in path values is
    replaced; a long list keeps its start and gets a hash of the whole, so it stays unique.
    """
    name = overrides.replace("/", "_") or "defaults"
    if len(name) <= DIRNAME_LIMIT:
        return name
    return f"{name[:DIRNAME_LIMIT - 12]}..{hashlib.sha1(name.encode()).hexdigest()[:10]}"


OmegaConf.register_new_resolver("yfpo.dirname", run_dirname, replace=True)


def compose_config(overrides: list[str], hydra: bool = False) -> DictConfig:
    """``conf/config.yaml`` with command-line style ``overrides`` (``hydra=True`` keeps the hydra node)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)
