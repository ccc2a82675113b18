"""``python -m yfpo.evaluate run_dir=PATH [eval=gsm8k|math500|synthetic] [eval.backend=hf|vllm]``.

``run_dir`` is a run directory, a multirun directory, or one HF checkpoint. Every checkpoint
found (``checkpoints/ckpt-*``, plus each run's starting model as ``ckpt-0``) is evaluated greedily,
one completion per problem, into ``<run>/eval/<task>/<ckpt>/``:

- ``predictions.jsonl``: id, prompt, completion, gold, and per convention the answer and its
  verdict (:func:`yfpo.evaluate.grading.score`), ``extracted`` (a final-answer marker was found) and
  ``truncated`` (``max_new_tokens`` reached with no stop) — appended per batch, so a crash loses
  at most one batch and a re-run continues where it stopped;
- ``summary.json``: headline, strict and flexible accuracy, n, 95 % Wilson interval, truncated and
  extracted rates, backend, decoding settings (prompt, stops, budget), library versions,
  seconds — written last; a checkpoint with a summary is skipped;
- ``key.json``: what the predictions depend on (:mod:`yfpo.core.artefacts`): backend, data source and a
  fingerprint of its rows, decoding settings, the checkpoint's files; a directory made with another
  key is refused, for all checkpoints at once, listing what changed.

``<task>`` is ``eval.name`` (or the task), plus ``@<source>`` when ``eval.path`` is not the
group's own, so that rows from another file never share a directory with the benchmark's.

``eval.compare_backends=N`` instead runs the first N problems through both backends and writes
``backend_agreement.json`` there (how often the greedy texts and the verdicts agree).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from yfpo.assets.prepare import ensure_synthetic
from yfpo.core import artefacts
from yfpo.core.config import CONF_DIR, refuse_added_keys
from yfpo.core.errors import ConfigError, run_cli
from yfpo.core.locks import exclusive
from yfpo.core.log import log
from yfpo.data.prompts import PromptError, check_stops, default_stops
from yfpo.data.rows import load_rows
from yfpo.evaluate import vllm_worker
from yfpo.evaluate.backends import compare_backends
from yfpo.evaluate.discovery import check_finished, find_checkpoints, runs_synthetic_draw, training_step
from yfpo.evaluate.job import conflicts, prepare_job
from yfpo.evaluate.predictions import evaluate_checkpoint
from yfpo.evaluate.problems import dirname, problems_of, source
from yfpo.evaluate.summary import wandb_scores
from yfpo.train.loggers import log_evaluation

RUN_MODEL_KEYS = ("name", "template", "add_bos", "dtype", "attn_implementation", "trust_remote_code")


def run_settings(cfg: DictConfig, root: Path) -> DictConfig:
    """``cfg`` with the ``model`` settings (prompt template, dtype, ...) the run in ``root`` was
    trained with, so that each run is evaluated with its own prompt whatever ``model=`` says here."""
    saved = root / "run_config.yaml"
    if not saved.is_file():
        return cfg
    model = OmegaConf.load(saved).model
    return OmegaConf.merge(cfg, {"model": {k: model[k] for k in RUN_MODEL_KEYS if k in model}})


def check_eval_config(e: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the ``eval.*`` key that cannot work, and its fix (before anything loads)."""
    for key in ("num_fewshot", "compare_backends"):
        if not isinstance(e[key], int) or e[key] < 0:
            raise ConfigError(f"eval.{key}={e[key]!r}: give an integer >= 0 (0 turns it off)")
    for key in ("batch_size", "max_new_tokens"):
        if isinstance(e[key], bool) or not isinstance(e[key], int) or e[key] < 1:
            raise ConfigError(f"eval.{key}={e[key]!r}: give an integer >= 1")
    if not 0 <= e.warn_rate <= 1:
        raise ConfigError(f"eval.warn_rate={e.warn_rate}: give a share between 0 and 1 (e.g. 0.05)")
    check_stops(e.stop)
    if e.stop_token_ids is not None and not all(isinstance(i, int) for i in e.stop_token_ids):
        raise PromptError(f"eval.stop_token_ids={e.stop_token_ids}: give null (the tokenizer's EOS and end-of-turn "
                          "ids) or a list of token ids")
    default_stops(e.template, e.num_fewshot, e.fewshot_set)  # checks eval.template, eval.fewshot_set, eval.num_fewshot


def evaluate(cfg: DictConfig) -> list[dict]:
    """Evaluate every checkpoint under ``run_dir`` (or compare the backends on them); returns the
    summaries (or agreement reports) in checkpoint order."""
    e = cfg.eval
    check_eval_config(e)
    if not cfg.get("run_dir"):
        raise ConfigError("run_dir=PATH is required: a run directory, a multirun directory or one HF checkpoint")
    found = find_checkpoints(Path(cfg.run_dir), cfg.hub)
    check_finished(found, e.unfinished)
    if (draw := runs_synthetic_draw(e, cfg.synthetic, found)) is not None:
        cfg = OmegaConf.merge(cfg, {"synthetic": draw})  # through the whole config: eval.path and model.path follow it
    e = cfg.eval
    ensure_synthetic(cfg.synthetic, e.path)
    rows = load_rows(e.path, split=e.split, name=e.get("hub_config"), hub=cfg.hub, key="eval.path")
    problems, src = problems_of(e, rows), source(e, artefacts.rows_fingerprint(rows))
    summaries, first_output, locked, jobs = [], {}, set(), []
    with ExitStack() as held:  # one writer per evaluation name and run, and the vLLM worker, held to the end
        worker = held.enter_context(vllm_worker.Engine())
        for name, model_dir, root in found:
            task_dir = root / "eval" / dirname(e)
            if task_dir not in locked:
                held.enter_context(exclusive(task_dir.with_name(task_dir.name + ".lock"), f"evaluation {task_dir}"))
                locked.add(task_dir)
            run = run_settings(cfg, root)  # its eval group follows the run's model (eval.template)
            jobs.append((root, prepare_job(name, model_dir, task_dir / name, run.eval, run.model, run.vllm,
                                           problems, src, worker)))
        if e.compare_backends:
            for root, job in jobs:
                r = compare_backends(job, problems)
                summaries.append(r)
                log.info(f"{root.name}/{job.name} {e.task} hf vs vllm on {r['n']} problems: outputs agree "
                         f"{r['output_agreement']:.1%}, grades agree {r['grade_agreement']:.1%} "
                         f"-> {job.out_dir / 'backend_agreement.json'}")
            return summaries
        refused = [c for _, job in jobs for c in conflicts(job)]
        if refused:  # all of them at once, before any checkpoint is evaluated
            raise ConfigError("; ".join(refused) + ": delete those directories, or keep both by giving this "
                              "evaluation its own name with eval.name=NAME")
        points: dict[Path, list] = {}
        for root, job in jobs:
            name, model_dir, out_dir = job.name, job.model_dir, job.out_dir
            # runs of a sweep share their starting model: evaluate it once, copy the files, but only
            # to a run whose key (its prompt template, dtype, ...) is the same
            shared = (model_dir.resolve(), json.dumps(artefacts.stringify(job.key), sort_keys=True))
            if shared in first_output and not (out_dir / "summary.json").is_file():
                shutil.copytree(first_output[shared], out_dir, dirs_exist_ok=True)
            first_output.setdefault(shared, out_dir)
            before = json.loads((out_dir / "summary.json").read_text()) if (out_dir / "summary.json").is_file() else None
            s = evaluate_checkpoint(job, problems)
            summaries.append(s)
            lo, hi = s["ci95"]
            extra = ("" if s.get("accuracy_strict") is None else
                     f" (strict {s['accuracy_strict']:.3f}, flexible {s['accuracy_flexible']:.3f})")
            log.info(f"{root.name}/{name} {e.task}: {s['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]{extra} n={s['n']}, "
                     f"truncated {s.get('truncated_rate', 0):.1%}, extracted {s.get('extracted_rate', 1):.1%}")
            for w in s.get("warnings", []):
                log.warning(f"{root.name}/{name} {e.task}: {w}")
            if s != before:  # new scores only: a skipped, finished checkpoint is not logged twice
                points.setdefault(root, []).append((training_step(model_dir, name), wandb_scores(dirname(e), s)))
        for root, run_points in points.items():
            if (logged := log_evaluation(root, run_points)) is not None:
                log.info(f"{root.name}: {e.task} scores logged to its W&B run ({logged})")
    return summaries


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """A Hydra app, so that ``-m`` sweeps (``eval=gsm8k,math500``) run on any Hydra launcher."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_cli(refuse_added_keys, list(HydraConfig.get().overrides.task), cfg)
    run_cli(evaluate, cfg)

