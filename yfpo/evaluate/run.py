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
import math
import os
import random
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from yfpo.core import artefacts
from yfpo.core import hub
from yfpo.evaluate import vllm_worker
from yfpo.train.checkpoints import DONE, STATE_FILE, ckpt_index, ckpt_name
from yfpo.core.config import CONF_DIR, refuse_added_keys
from yfpo.data.rows import DataError, load_rows
from yfpo.core.errors import ConfigError, MissingError, run_cli
from yfpo.evaluate.generation import BACKENDS, generate
from yfpo.evaluate.grading import gold_answer, score
from yfpo.core.locks import exclusive
from yfpo.train.loggers import log_evaluation
from yfpo.core.models import load_model, load_tokenizer
from yfpo.assets.prepare import ensure_synthetic
from yfpo.data.prompts import PromptError, check_stops, default_stops, eval_prompt, stop_token_ids
from yfpo.core.log import STDERR, log

RUN_MODEL_KEYS = ("name", "template", "add_bos", "dtype", "attn_implementation", "trust_remote_code")
# Libraries whose versions can change a completion or a verdict (recorded in every summary).
VERSIONED = ("torch", "transformers", "vllm", "math-verify", "yfpo")


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (well-behaved at 0 and 1)."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


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


def with_runs_synthetic_draw(cfg: DictConfig, found: list[tuple[str, Path, Path]]) -> DictConfig:
    """``cfg`` with the synthetic draw (``synthetic.*``) the runs trained on, when the evaluation reads
    a synthetic set (``eval.path`` under ``synthetic.dir``) and the runs all used one other draw: a
    smoke run is evaluated on its own test set, not the default draw's. Runs of different draws are
    refused together."""
    if not str(cfg.eval.path).startswith(str(cfg.synthetic.dir)):
        return cfg
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
        return cfg
    own = {k: v for k, v in json.loads(next(iter(draws))).items() if k in cfg.synthetic}  # keys of this yfpo only
    if own == {k: v for k, v in OmegaConf.to_container(cfg.synthetic, resolve=True).items() if k in own}:
        return cfg
    log.info(f"evaluating on the synthetic draw the runs trained on ({own['dir']})")
    return OmegaConf.merge(cfg, {"synthetic": own})


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


def load_problems(e: DictConfig, hub: DictConfig) -> list[dict]:
    """``[{id, question, gold}]`` of the ``eval`` group ``e``: the first ``eval.limit`` problems, of which,
    with ``eval.sample``, a seeded random ``sample`` (in row order; ids stay the rows' indices)."""
    return problems_of(e, load_rows(e.path, split=e.split, name=e.get("hub_config"), hub=hub, key="eval.path"))


def problems_of(e: DictConfig, rows: list[dict]) -> list[dict]:
    """:func:`load_problems` from the source's ``rows``."""
    rows = rows[: e.limit] if e.limit else rows
    keep = range(len(rows))
    if e.get("sample"):
        if not isinstance(e.sample, int) or not 0 < e.sample <= len(rows):
            raise ConfigError(f"eval.sample={e.sample!r}: give a number of problems between 1 and the {len(rows)} "
                              f"rows of {e.path} ({e.split}), or null for all")
        keep = sorted(random.Random(e.sample_seed).sample(range(len(rows)), e.sample))
    out = []
    for i in keep:
        r = rows[i]
        if not isinstance(r.get(e.question_field), str) or not isinstance(r.get(e.gold_field), str):
            raise DataError(f"{e.path}: row {i} needs string fields {e.question_field!r} and {e.gold_field!r}")
        gold = gold_answer(e.task, r[e.gold_field]) if e.gold_from_solution else r[e.gold_field]
        out.append({"id": r.get(e.id_field, i) if e.get("id_field") else i, "question": r[e.question_field], "gold": gold})
    return out


def library_versions() -> dict:
    """Installed versions of :data:`VERSIONED` (None when not installed) and of Python."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def decoding(e: DictConfig, tok, model_dir: Path) -> dict:
    """The decoding settings of one evaluation (``e``: the ``eval`` group): greedy, budget, stop strings
    and stop token ids (``eval.stop``/``eval.stop_token_ids`` when given, else the prompt layout's defaults)."""
    stop = check_stops(e.stop)
    return {
        "temperature": 0.0, "top_p": 1.0, "max_new_tokens": e.max_new_tokens, "template": e.template,
        "num_fewshot": e.num_fewshot, "fewshot_set": e.fewshot_set if e.num_fewshot else None,
        "stop": stop if stop is not None else default_stops(e.template, e.num_fewshot, e.fewshot_set),
        "stop_token_ids": (list(e.stop_token_ids) if e.stop_token_ids is not None
                           else stop_token_ids(e.template, tok, model_dir)),
    }


def _read_done(path: Path) -> dict:
    """Finished rows of a predictions file by id; a torn last line (a crash mid-write) is dropped and
    generated again."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[row["id"]] = row
    return done


def _generate_hf(job: "Job", prompts: list[str]):
    """Yields ``[{text, truncated}]`` batch by batch (so each batch is saved before the next starts)."""
    e, dec = job.eval, job.dec
    model = load_model(job.model, job.model_dir)
    if torch.cuda.is_available():
        model = model.cuda()
    for i in range(0, len(prompts), e.batch_size):
        batch = generate(model, job.tok, prompts[i : i + e.batch_size], dec["max_new_tokens"], e.batch_size,
                         dec["stop"], dec["stop_token_ids"], progress=False)
        yield [{"text": c.text, "truncated": c.truncated} for c in batch]


def _generate_vllm(job: "Job", prompts: list[str]):
    """All ``[{text, truncated}]`` from the command's ``yfpo.evaluate.vllm_worker`` (``job.worker``); vLLM
    loads its own tokenizer. The worker's vLLM version goes to ``job.dec["vllm"]``."""
    dec = job.dec
    batch = {"prompts": prompts, "n": 1, "temperature": 0.0, "top_p": 1.0, "seed": job.engine.seed,
             "max_tokens": dec["max_new_tokens"], "stop": dec["stop"], "stop_token_ids": dec["stop_token_ids"]}
    version, [outputs] = job.worker.generate(job.model_dir, OmegaConf.to_container(job.engine, resolve=True),
                                             job.model.trust_remote_code, [batch])
    dec["vllm"] = version
    yield [{"text": o["text"], "truncated": o["finish_reason"] == "length"} for [o] in outputs]


def _generator(backend: str):
    """The generating function of ``backend`` (looked up per call, so tests can replace it)."""
    return {"hf": _generate_hf, "vllm": _generate_vllm}[backend]


def _rate(rows: list[dict], key: str) -> float:
    return sum(bool(r[key]) for r in rows) / len(rows) if rows else 0.0


def _accuracy(rows: list[dict], key: str) -> float | None:
    """Mean of ``key`` over ``rows``; None where the convention does not apply (math500 strict/flexible)."""
    if not rows or any(r[key] is None for r in rows):
        return None
    return sum(r[key] for r in rows) / len(rows)


def health_warnings(summary: dict, limit: float) -> list[str]:
    """Warnings for a truncated rate or a missing-answer rate above ``limit`` (``eval.warn_rate``)."""
    out = []
    if summary["truncated_rate"] > limit:
        out.append(f"{summary['truncated_rate']:.1%} of completions hit max_new_tokens="
                   f"{summary['decoding']['max_new_tokens']} without a stop: read a few in predictions.jsonl (a repetition "
                   "loop never ends; a solution cut short needs a larger eval.max_new_tokens; text past the answer needs eval.stop)")
    if 1 - summary["extracted_rate"] > limit:
        out.append(f"{1 - summary['extracted_rate']:.1%} of completions give no marked final answer "
                   "(\\boxed{}, 'The answer is', ####): check the prompt (eval.template, eval.num_fewshot)")
    return out


def dirname(e: DictConfig) -> str:
    """The directory of an evaluation under ``<run>/eval/``: ``eval.name`` (or the task), plus
    ``@<source>`` when ``eval.path`` is not the group's own (``eval.default_path``), so that
    problems from another file never share a directory with the real benchmark's."""
    name = e.name or e.task
    if str(e.path) == str(e.get("default_path", e.path)):
        return name
    return f"{name}@{Path(str(e.path)).stem if Path(str(e.path)).suffix else str(e.path).replace('/', '_')}"


def source(e: DictConfig, rows_fingerprint: str) -> dict:
    """Where an evaluation's problems come from, with a fingerprint of all the source's rows."""
    return {"path": e.path, "split": e.split, "hub_config": e.get("hub_config"), "sample": e.get("sample"),
            "sample_seed": e.get("sample_seed") if e.get("sample") else None, "rows": rows_fingerprint}


@dataclass
class Job:
    """One checkpoint to evaluate, with the key its directory must match."""

    name: str
    model_dir: Path
    out_dir: Path
    eval: DictConfig    # the eval group
    model: DictConfig   # the model group, with the run's own template and loading settings (run_settings)
    engine: DictConfig  # the vllm group: the engine of eval.backend=vllm
    tok: object
    dec: dict
    prompts: dict  # problem id -> prompt
    source: dict
    worker: vllm_worker.Engine  # the command's vLLM worker, started on first use

    @property
    def key(self) -> dict:
        """What the predictions depend on (:mod:`yfpo.core.artefacts`): backend, data, decoding, weights."""
        vllm = self.eval.backend == "vllm"
        return {"backend": self.eval.backend, "source": self.source,
                "engine": OmegaConf.to_container(self.engine, resolve=True) if vllm else None,
                **{k: v for k, v in self.dec.items() if k != "vllm"},  # the version a worker reports is a result
                "weights": artefacts.file_fingerprint(self.model_dir, recursive=False)}


def conflicts(job: Job) -> list[str]:
    """Why ``job.out_dir`` cannot be continued or reused: it was made with another key (other
    settings, data or weights). Empty: it can."""
    try:
        artefacts.check(job.out_dir, job.key, f"evaluation {job.out_dir}", "")
    except artefacts.StaleArtefactError as e:
        return [str(e).rstrip(". ")]
    return []


def evaluate_checkpoint(job: Job, problems: list[dict]) -> dict:
    """Evaluate one checkpoint into ``job.out_dir`` (resuming), returning its summary, which always
    describes exactly the rows of its ``predictions.jsonl``.

    ``key.json`` records what the predictions depend on (checked up front by :func:`conflicts`);
    predictions without one (torn by a crash) are generated again. Problems already there are not
    generated again: a larger ``eval.limit`` adds the missing ones; a smaller one reads nothing new
    and keeps the summary of all of them.
    """
    name, model_dir, out_dir, dec, e = job.name, job.model_dir, job.out_dir, job.dec, job.eval
    summary_path, pred_path = out_dir / "summary.json", out_dir / "predictions.jsonl"
    done = _read_done(pred_path) if artefacts.saved_key(out_dir) else {}
    todo = [p for p in problems if p["id"] not in done]
    if summary_path.is_file() and not todo:
        summary = json.loads(summary_path.read_text())
        if summary["n"] == len(done):
            if summary["n"] > len(problems):
                log.info(f"{out_dir} already holds {summary['n']} problems, of which these {len(problems)}: "
                         "its summary (and the tables) keep all of them")
            return summary
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path.unlink(missing_ok=True)
    artefacts.commit(out_dir, job.key)
    # rewrite without a torn last line or old rows, so appended rows start on a line of their own
    pred_path.write_text("".join(json.dumps(r) + "\n" for r in done.values()))
    prompts = [job.prompts[p["id"]] for p in todo]
    start = time.perf_counter()
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=f"{name} {e.task}", unit="problem")
    with open(pred_path, "a") as f:
        k = 0
        for completions in _generator(e.backend)(job, prompts):
            for c in completions:
                p = todo[k]
                row = {"id": p["id"], "prompt": prompts[k], "completion": c["text"], "gold": p["gold"],
                       "truncated": c["truncated"], **score(e.task, c["text"], p["gold"])}
                f.write(json.dumps(row) + "\n")
                done[p["id"]] = row
                k += 1
            f.flush()
            bar.update(len(completions))
    bar.close()
    rows = list(done.values())
    correct = sum(r["correct"] for r in rows)
    low, high = wilson_interval(correct, len(rows))
    numeric = e.task != "math500"
    summary = {
        "checkpoint": name, "model": str(model_dir), "task": e.task, "n": len(rows), "correct": correct,
        "accuracy": correct / len(rows), "ci95": [low, high],
        "accuracy_strict": _accuracy(rows, "correct_strict"), "accuracy_flexible": _accuracy(rows, "correct_flexible"),
        "scoring": {
            "accuracy": ("headline, used by the paper-style tables: the answer after the last \\boxed{}, "
                         "'the answer is' or ####, else the last number" if numeric else
                         "headline, used by the paper-style tables: math-verify on the last \\boxed{}, else 'the answer is'"),
            "accuracy_strict": "a marked answer only (\\boxed{}, 'the answer is', ####)" if numeric else None,
            "accuracy_flexible": "the last number (lm-eval's flexible-extract regex)" if numeric else None,
        },
        "truncated_rate": _rate(rows, "truncated"), "extracted_rate": _rate(rows, "extracted"),
        "backend": e.backend, "decoding": {k: v for k, v in dec.items() if k != "vllm"},
        "versions": {**library_versions(), **({"vllm": dec["vllm"]} if "vllm" in dec else {})},
        "seconds": time.perf_counter() - start, "problems_per_sec": len(todo) / max(time.perf_counter() - start, 1e-9),
    }
    summary["warnings"] = health_warnings(summary, e.warn_rate)
    if (out_dir / "backend_agreement.json").is_file():
        summary["backend_agreement"] = agreement(json.loads((out_dir / "backend_agreement.json").read_text()))
    artefacts.atomic_write(summary_path, json.dumps(summary, indent=2))
    return summary


def _job(name: str, model_dir: Path, out_dir: Path, cfg: DictConfig, problems: list[dict], source: dict,
         worker: vllm_worker.Engine) -> Job:
    tok = load_tokenizer(cfg.model, model_dir)
    e = cfg.eval
    prompts = {p["id"]: eval_prompt(e.template, p["question"], tok, e.num_fewshot, e.fewshot_set) for p in problems}
    return Job(name, model_dir, out_dir, e, cfg.model, cfg.vllm, tok, decoding(e, tok, model_dir), prompts, source, worker)


def compare_backends(job: Job, problems: list[dict]) -> dict:
    """Greedy completions of the first ``eval.compare_backends`` problems from both backends, with the
    same prompts and decoding settings; writes and returns ``backend_agreement.json`` in ``job.out_dir``.

    ``output_agreement``: share of problems whose texts are identical; ``grade_agreement``: share
    whose headline verdicts are; ``mean_common_prefix``: mean share of the longer text the two
    texts share from the start (greedy paths that split late score near 1); per row,
    ``first_diff_token``: the first completion token (by the checkpoint's tokenizer) where the two
    differ, None where they agree. The agreement rates also go into that checkpoint's ``summary.json``.
    """
    name, model_dir, out_dir, tok, dec, e = job.name, job.model_dir, job.out_dir, job.tok, job.dec, job.eval
    subset = problems[: e.compare_backends]
    prompts = [job.prompts[p["id"]] for p in subset]
    texts = {b: [c for batch in _generator(b)(job, prompts) for c in batch] for b in BACKENDS}
    rows = []
    for i, p in enumerate(subset):
        hf, vl = texts["hf"][i], texts["vllm"][i]
        ok = {b: score(e.task, texts[b][i]["text"], p["gold"])["correct"] for b in BACKENDS}
        same = hf["text"] == vl["text"]
        prefix = 1.0 if same else len(os.path.commonprefix([hf["text"], vl["text"]])) / max(len(hf["text"]), len(vl["text"]))
        ids = [tok(t["text"], add_special_tokens=False).input_ids for t in (hf, vl)]
        first = None if same else len(os.path.commonprefix(ids))
        rows.append({"id": p["id"], "gold": p["gold"], "hf": hf["text"], "vllm": vl["text"],
                     "hf_correct": ok["hf"], "vllm_correct": ok["vllm"], "hf_truncated": hf["truncated"],
                     "vllm_truncated": vl["truncated"], "same_output": same,
                     "same_grade": ok["hf"] == ok["vllm"], "common_prefix": prefix, "first_diff_token": first})
    n = len(rows)
    report = {
        "checkpoint": name, "model": str(model_dir), "task": e.task, "n": n,
        "output_agreement": _rate(rows, "same_output"), "grade_agreement": _rate(rows, "same_grade"),
        "mean_common_prefix": sum(r["common_prefix"] for r in rows) / max(n, 1),
        "accuracy": {b: _rate(rows, f"{b}_correct") for b in BACKENDS},
        "decoding": {k: v for k, v in dec.items() if k != "vllm"},
        "versions": {**library_versions(), "vllm": dec.get("vllm")}, "rows": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    artefacts.atomic_write(out_dir / "backend_agreement.json", json.dumps(report, indent=2))
    summary_path = out_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        artefacts.atomic_write(summary_path, json.dumps({**summary, "backend_agreement": agreement(report)}, indent=2))
    return report


def agreement(report: dict) -> dict:
    """The headline of a ``backend_agreement.json`` report, as kept in ``summary.json``."""
    return {k: report[k] for k in ("n", "output_agreement", "grade_agreement", "mean_common_prefix")}


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
    if e.backend not in BACKENDS:
        raise ConfigError(f"eval.backend={e.backend!r}: choose one of {BACKENDS}")
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
    cfg = with_runs_synthetic_draw(cfg, found)
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
            jobs.append((root, _job(name, model_dir, task_dir / name, run_settings(cfg, root), problems, src, worker)))
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


def training_step(model_dir: Path, name: str) -> int:
    """The optimizer step a checkpoint was saved at (0 for the starting model ``ckpt-0``)."""
    state = model_dir / STATE_FILE
    return int(json.loads(state.read_text())["step"]) if name != ckpt_name(0) and state.is_file() else 0


def wandb_scores(name: str, s: dict) -> dict:
    """The scores of one checkpoint's summary as W&B metrics ``eval/<evaluation>/<score>``."""
    keys = ("accuracy", "accuracy_strict", "accuracy_flexible", "truncated_rate", "extracted_rate")
    out = {f"eval/{name}/{k}": s[k] for k in keys if s.get(k) is not None}
    if s.get("backend_agreement"):
        out.update({f"eval/{name}/{k}": s["backend_agreement"][k] for k in ("output_agreement", "grade_agreement")})
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """A Hydra app, so that ``-m`` sweeps (``eval=gsm8k,math500``) run on any Hydra launcher."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_cli(refuse_added_keys, list(HydraConfig.get().overrides.task), cfg)
    run_cli(evaluate, cfg)

