"""The Hydra config's home: where ``conf/`` is, the resolvers (``yfpo.dirname`` of run directories,
``yfpo.model_tag`` of cached file names) and composing the config outside ``@hydra.main`` (for the stages that need no run directory).

A run directory's name puts the keys the command sweeps first. A job sees only its own overrides, so the
training entry point records its command's swept keys in ``YFPO_SWEPT`` (:func:`record_swept_keys`), which
``conf/config.yaml`` hands to the resolver, and which launchers pass on to their jobs with the environment.

Every entry point imports this module (for :data:`CONF_DIR`), which registers the resolver
before Hydra resolves ``hydra.run.dir``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from yfpo.core import schema  # noqa: F401  (registers the typed schemas before any composition)
from yfpo.core.artefacts import model_tag
from yfpo.core.errors import ConfigError

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
DIRNAME_LIMIT = 96  # characters; file systems refuse names over 255


def swept_keys(argv: list[str]) -> list[str]:
    """The keys a command line sweeps (``seed=1,2,3``, ``+variant=a,b``, ``lambda=range(1,3)``), by Hydra's
    own override grammar."""
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    except OverrideParseException:  # Hydra reports its own grammar errors
        return []
    return list(dict.fromkeys(o.key_or_group for o in parsed if o.is_sweep_override()))


def record_swept_keys(argv: list[str]) -> None:
    """For the training entry point: ``YFPO_SWEPT``, the keys its command line ``argv`` sweeps, which
    name its run directories (:func:`run_dirname`)."""
    os.environ["YFPO_SWEPT"] = ",".join(swept_keys(argv))


def run_dirname(overrides: str, swept: str | list[str] = "") -> str:
    """A directory name for a run from Hydra's ``job.override_dirname``.

    Short override lists stay as Hydra writes them (``lambda=0.1,method=yfpo``); ``/`` in path values
    is replaced. A long list puts the ``swept`` keys (comma-separated in the config: ``YFPO_SWEPT``),
    and those of the experiment's ``hydra.sweeper.params``, first, keeps what fits and ends in a hash
    of the whole, so it stays unique and the swept values stay readable.
    """
    name = overrides.replace("/", "_") or "defaults"
    if len(name) <= DIRNAME_LIMIT:
        return name
    swept = [k for k in swept.split(",") if k] if isinstance(swept, str) else list(swept)
    if HydraConfig.initialized():
        swept += [k.lstrip("+~") for k in (HydraConfig.get().sweeper.get("params") or {})]
    items = re.split(r",(?=[+~]?[\w.@-]+=)", name)  # a comma that starts the next key=value
    items.sort(key=lambda item: item.split("=", 1)[0].lstrip("+~") not in swept)  # stable: Hydra's order otherwise
    return f"{','.join(items)[:DIRNAME_LIMIT - 12]}..{hashlib.sha1(name.encode()).hexdigest()[:10]}"


OmegaConf.register_new_resolver("yfpo.dirname", run_dirname, replace=True)


OmegaConf.register_new_resolver("yfpo.model_tag", model_tag, replace=True)

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


PASSED_ON = ("trainer", "hydra")  # groups whose every key goes to a library (Lightning's Trainer, Hydra)


def refuse_added_keys(overrides: list[str], cfg: DictConfig) -> None:
    """Refuses ``+key=value`` for a key that is not a config group: one that no part of yfpo reads, and
    one of a schema dataclass that the group's YAML leaves to its default (set it without the ``+``).
    Hydra suggests ``+`` when a key is not in the config (``data.batchsize=4`` -> ``+data.batchsize=4``),
    which would then be recorded, name the run directory and be ignored. ``cfg``: the composed config."""
    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if "=" in o and not o.startswith("-")])
    except OverrideParseException:  # Hydra reports its own grammar errors
        return
    for o in parsed:
        key = o.key_or_group
        if not o.is_add() or "/" in key or Path(CONF_DIR, key).is_dir() or key.split(".")[0] in PASSED_ON:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        typed = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if dataclasses.is_dataclass(typed) and leaf in {f.name for f in dataclasses.fields(typed)}:
            # a typed key the group's YAML leaves to its schema default: Hydra lets '+' set it too
            raise ConfigError(f"{o.input_line}: {key} is a key yfpo reads already; set it without the '+' "
                              f"({o.input_line.removeprefix('+')})")
        known = [k for k in (node.keys() if isinstance(node, DictConfig) else []) if k != leaf]
        if not parent:
            known += [p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()]
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f"did you mean {'.'.join(filter(None, (parent, close[0])))}=...? " if close else ""
        raise ConfigError(f"{o.input_line}: yfpo reads no key {key!r} ({hint}the keys of {parent or 'the config'} are "
                          f"{', '.join(sorted(set(known)))}). A '+' adds a key nothing would read; set an existing key without it")


def composition_error(e: ConfigCompositionException) -> ConfigError:
    """Hydra's refusal of an override (a value the schema refuses, a misspelt key) as one line naming the key."""
    cause = e.__cause__
    detail = str(getattr(cause, "msg", None) or cause or "").splitlines()[:1]  # OmegaConf adds the key and the object type
    key = f" (key {cause.full_key})" if getattr(cause, "full_key", None) else ""
    return ConfigError(f"{str(e).splitlines()[0]}{': ' + detail[0] if detail else ''}{key}")


def compose_config(overrides: list[str], hydra: bool = False) -> DictConfig:
    """``conf/config.yaml`` with command-line style ``overrides`` (``hydra=True`` keeps the hydra node);
    inside a running Hydra app (``python -m yfpo.train``) it composes with that app's search path.
    A value the schema refuses (:mod:`yfpo.core.schema`) and a ``+key`` that nothing reads
    (:func:`refuse_added_keys`) are one :class:`ConfigError` naming the key."""
    try:
        if GlobalHydra.instance().is_initialized():
            cfg = compose("config", overrides=list(overrides), return_hydra_config=hydra)
        else:
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                cfg = compose("config", overrides=list(overrides), return_hydra_config=hydra)
    except ConfigCompositionException as e:
        raise composition_error(e) from e
    refuse_added_keys(list(overrides), cfg)
    return cfg
