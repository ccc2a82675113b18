"""``python -m yfpo.evaluate run_dir=PATH [eval=gsm8k|math500|synthetic] [eval.backend=hf|vllm]``.

``run_dir`` is a run directory, a multirun directory, or one HF checkpoint. Every checkpoint
found (``checkpoints/ckpt-*``, plus each run's starting model as ``ckpt-0``) is evaluated greedily,
one completion per problem, into ``<run>/eval/<task>/<ckpt>/``:

- ``predictions.jsonl``: id, prompt, completion, extracted answer, gold, correct — appended per
  batch, so a crash loses at most one batch and a re-run continues where it stopped;
- ``summary.json``: accuracy, n, 95 % Wilson interval, backend, decoding settings, seconds —
  written last; a checkpoint with a summary is skipped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from yfpo import hub
from yfpo.data import format_prompt, load_rows
from yfpo.generation import greedy_generate
from yfpo.grading import extract_answer, gold_answer, grade
from yfpo.models import ensure_synthetic, load_model, load_tokenizer

BACKENDS = ("hf", "vllm")
RUN_MODEL_KEYS = ("name", "template", "add_bos", "dtype", "attn_implementation", "trust_remote_code")


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
                       key=lambda p: int(p.name.split("-")[1]))
        if not ckpts:
            continue
        saved = run / "run_config.yaml"
        if saved.is_file():
            base = Path(OmegaConf.load(saved).model.path)
            if hub.is_hub_id(base) and hub_cfg is not None:
                base = hub.local_model(str(base), hub_cfg)
            if (base / "config.json").is_file():
                found.append(("ckpt-0", base, run))
        found += [(p.name, p, run) for p in ckpts]
    if not found:
        raise FileNotFoundError(f"no HF checkpoints (config.json) under {target}: pass a run, multirun or checkpoint directory")
    return found


def load_problems(cfg: DictConfig) -> list[dict]:
    """``[{id, question, gold}]`` of ``cfg.eval`` (first ``eval.limit`` problems)."""
    e = cfg.eval
    rows = load_rows(e.path, split=e.split, name=e.get("hub_config"), hub=cfg.hub, key="eval.path")
    rows = rows[: e.limit] if e.limit else rows
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r.get(e.question_field), str) or not isinstance(r.get(e.gold_field), str):
            raise ValueError(f"{e.path}: row {i} needs string fields {e.question_field!r} and {e.gold_field!r}")
        gold = gold_answer(e.task, r[e.gold_field]) if e.gold_from_solution else r[e.gold_field]
        out.append({"id": r.get(e.id_field, i) if e.get("id_field") else i, "question": r[e.question_field], "gold": gold})
    return out


def _read_done(path: Path) -> dict:
    """Finished rows of a predictions file by id; a torn last line (a crash mid-write) is dropped."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[row["id"]] = row
    return done


def _generate_hf(model_dir: Path, cfg: DictConfig, prompts: list[str], tok):
    """Yields completions batch by batch (so each batch is saved before the next starts)."""
    e = cfg.eval
    model = load_model(cfg.model, model_dir)
    if torch.cuda.is_available():
        model = model.cuda()
    for i in range(0, len(prompts), e.batch_size):
        yield greedy_generate(model, tok, prompts[i : i + e.batch_size], e.max_new_tokens, e.batch_size, e.stop, progress=False)


def _generate_vllm(model_dir: Path, cfg: DictConfig, prompts: list[str], tok=None):
    """All completions from a fresh ``yfpo.vllm_worker`` process (GPU memory is freed when it exits);
    vLLM loads its own tokenizer, so ``tok`` is unused."""
    e = cfg.eval
    with tempfile.TemporaryDirectory() as tmp:
        request = Path(tmp) / "request.json"
        result = Path(tmp) / "result.json"
        request.write_text(json.dumps({
            "model": str(model_dir), "prompts": prompts, "max_tokens": e.max_new_tokens, "stop": list(e.stop),
            "tensor_parallel_size": e.tensor_parallel_size, "dtype": e.vllm_dtype,
            "trust_remote_code": cfg.model.trust_remote_code,
        }))
        subprocess.run([sys.executable, "-m", "yfpo.vllm_worker", str(request), str(result)], check=True)
        yield json.loads(result.read_text())


def evaluate_checkpoint(name: str, model_dir: Path, out_dir: Path, cfg: DictConfig, problems: list[dict]) -> dict:
    """Evaluate one checkpoint into ``out_dir`` (resuming), returning its summary."""
    e = cfg.eval
    summary_path, pred_path = out_dir / "summary.json", out_dir / "predictions.jsonl"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    done = _read_done(pred_path)
    if done:  # rewrite without a torn last line, so appended rows start on a line of their own
        pred_path.write_text("".join(json.dumps(r) + "\n" for r in done.values()))
    todo = [p for p in problems if p["id"] not in done]
    tok = load_tokenizer(cfg.model, model_dir)
    prompts = [format_prompt(e.template, p["question"], None, tok) for p in todo]
    start = time.perf_counter()
    generate = _generate_hf if e.backend == "hf" else _generate_vllm
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=f"{name} {e.task}", unit="problem")
    with open(pred_path, "a") as f:
        k = 0
        for completions in generate(model_dir, cfg, prompts, tok):
            for completion in completions:
                p = todo[k]
                row = {"id": p["id"], "prompt": prompts[k], "completion": completion,
                       "extracted": extract_answer(e.task, completion), "gold": p["gold"],
                       "correct": grade(e.task, completion, p["gold"])}
                f.write(json.dumps(row) + "\n")
                done[p["id"]] = row
                k += 1
            f.flush()
            bar.update(len(completions))
    bar.close()
    rows = [done[p["id"]] for p in problems]
    correct = sum(r["correct"] for r in rows)
    low, high = wilson_interval(correct, len(rows))
    summary = {
        "checkpoint": name, "model": str(model_dir), "task": e.task, "n": len(rows), "correct": correct,
        "accuracy": correct / len(rows), "ci95": [low, high], "backend": e.backend,
        "decoding": {"temperature": 0.0, "max_new_tokens": e.max_new_tokens, "stop": list(e.stop), "template": e.template},
        "seconds": time.perf_counter() - start, "problems_per_sec": len(todo) / max(time.perf_counter() - start, 1e-9),
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def run_settings(cfg: DictConfig, root: Path) -> DictConfig:
    """``cfg`` with the ``model`` settings (prompt template, dtype, ...) the run in ``root`` was
    trained with, so that each run is evaluated with its own prompt whatever ``model=`` says here."""
    saved = root / "run_config.yaml"
    if not saved.is_file():
        return cfg
    model = OmegaConf.load(saved).model
    return OmegaConf.merge(cfg, {"model": {k: model[k] for k in RUN_MODEL_KEYS if k in model}})


def evaluate(cfg: DictConfig) -> list[dict]:
    e = cfg.eval
    if e.backend not in BACKENDS:
        raise ValueError(f"eval.backend={e.backend!r}: choose one of {BACKENDS}")
    if not cfg.get("run_dir"):
        raise ValueError("run_dir=PATH is required: a run directory, a multirun directory or one HF checkpoint")
    ensure_synthetic(cfg)
    problems = load_problems(cfg)
    summaries, first_output = [], {}
    for name, model_dir, root in find_checkpoints(Path(cfg.run_dir), cfg.hub):
        out_dir = root / "eval" / e.task / name
        key = model_dir.resolve()
        if key in first_output and not (out_dir / "summary.json").is_file():
            # runs of a sweep share their starting model: evaluate it once, copy the files
            shutil.copytree(first_output[key], out_dir, dirs_exist_ok=True)
        first_output.setdefault(key, out_dir)
        s = evaluate_checkpoint(name, model_dir, out_dir, run_settings(cfg, root), problems)
        summaries.append(s)
        lo, hi = s["ci95"]
        print(f"[yfpo] {root.name}/{name} {e.task}: {s['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] n={s['n']}", flush=True)
    return summaries


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """A Hydra app, so that ``-m`` sweeps (``eval=gsm8k,math500``) run on any Hydra launcher."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    evaluate(cfg)


if __name__ == "__main__":
    main()
