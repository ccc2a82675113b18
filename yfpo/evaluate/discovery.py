"""The checkpoints under a ``run_dir`` and what their runs trained with: each run's starting model,
its synthetic draw, whether its training finished, the step of each checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from yfpo.core import hub
from yfpo.core.errors import ConfigError, MissingError
from yfpo.core.log import STDERR, log
from yfpo.train.checkpoints import DONE, STATE_FILE, ckpt_index, ckpt_name


def find_checkpoints(target: Path, hub_cfg: DictConfig | None = None) -> list[tuple[str, Path, Path]]:
    """``(name, model_dir, output_root)`` for every checkpoint under ``target``, sorted.

    ``output_root`` is where ``eval/`` goes: the run directory, or the checkpoint itself when
    ``target`` is a bare checkpoint. Each run's starting model (``model.path`` of its
    ``run_config.yaml``) comes first as ``ckpt-0``; a hub id is fetched with ``hub_cfg``.
    """
    if (target / "config.json").is_file():
        return [(target.name, target, target)]
    found = []
    for ckpt_dir in sorted(target.rglob("checkpoints")):
        run = ckpt_dir.parent
        ckpts = sorted((p for p in ckpt_dir.glob("ckpt-*") if (p / "config.json").is_file()),
                       key=lambda p: ckpt_index(p.name))
        if not ckpts:
            continue
        saved = run / "run_config.yaml"
        if saved.is_file():
            base = Path(OmegaConf.load(saved).model.path)
            if hub.is_hub_id(base) and hub_cfg is not None:
                base = hub.local_model(str(base), hub_cfg)
            if (base / "config.json").is_file():
                found.append((ckpt_name(0), base, run))
        found += [(p.name, p, run) for p in ckpts]
    if not found:
        raise MissingError(f"no HF checkpoints (config.json) under {target}: pass a run, multirun or checkpoint directory")
    return found


def runs_synthetic_draw(e: DictConfig, syn: DictConfig, found: list[tuple[str, Path, Path]]) -> dict | None:
    """The synthetic draw (``synthetic.*``) the runs in ``found`` trained on, when the evaluation (``e``:
    the ``eval`` group) reads a synthetic set (``eval.path`` under ``synthetic.dir``) and the runs all
    used one draw other than ``syn``: a smoke run is evaluated on its own test set, not the default
    draw's. None: keep ``syn``. Runs of different draws are refused together."""
    if not str(e.path).startswith(str(syn.dir)):
        return None
    draws = {}
    for root in {root for _, model_dir, root in found if root != model_dir}:  # each run once, not per checkpoint
        saved = root / "run_config.yaml"
        if saved.is_file() and "synthetic" in (run := OmegaConf.load(saved)):
            draws.setdefault(json.dumps(OmegaConf.to_container(run.synthetic), sort_keys=True), []).append(root)
    if len(draws) > 1:
        raise ConfigError("these runs trained on different synthetic draws, so no one synthetic test set fits them all: "
                          + "; ".join(", ".join(sorted(str(r) for r in roots)) for roots in draws.values())
                          + ": evaluate each group with its own run_dir")
    if not draws:
        return None
    own = {k: v for k, v in json.loads(next(iter(draws))).items() if k in syn}  # keys of this yfpo only
    if own == {k: v for k, v in OmegaConf.to_container(syn, resolve=True).items() if k in own}:
        return None
    log.info(f"evaluating on the synthetic draw the runs trained on ({own['dir']})")
    return own


def check_finished(found: list[tuple[str, Path, Path]], allow: bool) -> None:
    """Refuses runs among ``found`` whose training has not finished (no ``DONE``: stopped, crashed or
    still running), whose last checkpoints are missing, unless ``allow`` (``eval.unfinished=true``)."""
    unfinished = sorted({root for _, model_dir, root in found if root != model_dir and not (root / DONE).is_file()})
    if not unfinished:
        return
    names = ", ".join(str(r) for r in unfinished)
    if not allow:
        raise ConfigError(f"training has not finished in {names} (no {DONE} file): run the same training command to finish "
                          "it, or evaluate the checkpoints it has so far with eval.unfinished=true")
    log.warning(f"evaluating unfinished runs (eval.unfinished=true): {names}", extra=STDERR)


def training_step(model_dir: Path, name: str) -> int:
    """The optimizer step a checkpoint was saved at (0 for the starting model ``ckpt-0``)."""
    state = model_dir / STATE_FILE
    return int(json.loads(state.read_text())["step"]) if name != ckpt_name(0) and state.is_file() else 0
