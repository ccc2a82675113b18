"""The Hydra config's home: where ``conf/`` is, the resolvers (``yfpo.dirname`` of run directories,
``yfpo.model_tag`` of cached file names), what identifies a run, and composing the config outside ``@hydra.main`` (for the stages that need no run directory).

Every entry point imports this module (for :data:`CONF_DIR`), which registers the resolver
before Hydra resolves ``hydra.run.dir``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from yfpo.core import schema  # noqa: F401  (registers the typed schemas before any composition)
from yfpo.core.artefacts import model_tag

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
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


OmegaConf.register_new_resolver("yfpo.model_tag", model_tag, replace=True)

# Keys that may differ between the first start of a run and its resumption: not part of what a
# run (or the model it exports) is. The stages after training read their own groups, so adding or
# changing one of those never invalidates a finished run.
RESUME_FREE = ("trainer.devices", "trainer.num_nodes", "trainer.accelerator", "trainer.strategy", "trainer.accumulate_grad_batches",
               "trainer.enable_progress_bar", "logger", "cache_dir", "hub", "model_tag",  # (derived from model.name/path)
               "eval.", "ablate.", "demo.", "pairs.", "vllm.")  # read by other stages only (demo.lambda reaches training as `lambda`)


def quote_paths(argv: list[str]) -> list[str]:
    """Command-line overrides whose value is an existing path with characters Hydra's grammar
    reserves (the ``=`` and ``,`` of sweep directories such as ``multirun/demo/+variant=dpo,seed=1``),
    quoted for Hydra: such a directory is passed as typed, ``run_dir=multirun/demo/+variant=dpo,seed=1``."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if (sep and key and not key.startswith("-") and value[:1] not in ("'", '"')
                and any(c in value for c in "=,[]{}() ") and Path(value).exists()):
            arg = key + "='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        out.append(arg)
    return out


def compose_config(overrides: list[str], hydra: bool = False) -> DictConfig:
    """``conf/config.yaml`` with command-line style ``overrides`` (``hydra=True`` keeps the hydra node);
    inside a running Hydra app (``python -m yfpo.train``) it composes with that app's search path."""
    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def run_identity(cfg: DictConfig) -> dict:
    """The flattened, resolved config of a run (``{"optim.lr": 5e-06, ...}``) without the
    :data:`RESUME_FREE` keys; paths under ``cache_dir`` are written relative to it, so a moved
    cache (``YFPO_CACHE``) is not another config."""
    flat = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    cache = flat.get("cache_dir")
    return {k: v.replace(cache, "${cache_dir}", 1) if cache and isinstance(v, str) and v.startswith(cache) else v
            for k, v in flat.items() if not k.startswith(RESUME_FREE)}
