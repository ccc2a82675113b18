"""yfpo: DPO, DPO+YFPO and FDT for mathematical reasoning."""

import hashlib

from omegaconf import OmegaConf

__version__ = "0.1.0"

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
