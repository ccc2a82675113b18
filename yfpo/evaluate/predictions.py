"""The resumable evaluation of one checkpoint: ``predictions.jsonl`` appended batch by batch,
``summary.json`` written last."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from yfpo.core import artefacts
from yfpo.core.log import log
from yfpo.evaluate.backends import generator
from yfpo.evaluate.grading import score
from yfpo.evaluate.job import Job
from yfpo.evaluate.summary import accuracy, agreement, health_warnings, library_versions, rate, wilson_interval


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


def evaluate_checkpoint(job: Job, problems: list[dict]) -> dict:
    """Evaluate one checkpoint into ``job.out_dir`` (resuming), returning its summary, which always
    describes exactly the rows of its ``predictions.jsonl``.

    ``key.json`` records what the predictions depend on (checked up front by
    :func:`yfpo.evaluate.job.conflicts`); predictions without one (torn by a crash) are generated
    again. Problems already there are not generated again: a larger ``eval.limit`` adds the missing
    ones; a smaller one reads nothing new and keeps the summary of all of them.
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
        for completions in generator(e.backend)(job, prompts):
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
        "accuracy_strict": accuracy(rows, "correct_strict"), "accuracy_flexible": accuracy(rows, "correct_flexible"),
        "scoring": {
            "accuracy": ("headline, used by the paper-style tables: the answer after the last \\boxed{}, "
                         "'the answer is' or ####, else the last number" if numeric else
                         "headline, used by the paper-style tables: math-verify on the last \\boxed{}, else 'the answer is'"),
            "accuracy_strict": "a marked answer only (\\boxed{}, 'the answer is', ####)" if numeric else None,
            "accuracy_flexible": "the last number (lm-eval's flexible-extract regex)" if numeric else None,
        },
        "truncated_rate": rate(rows, "truncated"), "extracted_rate": rate(rows, "extracted"),
        "backend": e.backend, "decoding": {k: v for k, v in dec.items() if k != "vllm"},
        "versions": {**library_versions(), **({"vllm": dec["vllm"]} if "vllm" in dec else {})},
        "seconds": time.perf_counter() - start, "problems_per_sec": len(todo) / max(time.perf_counter() - start, 1e-9),
    }
    summary["warnings"] = health_warnings(summary, e.warn_rate)
    if (out_dir / "backend_agreement.json").is_file():
        summary["backend_agreement"] = agreement(json.loads((out_dir / "backend_agreement.json").read_text()))
    artefacts.atomic_write(summary_path, json.dumps(summary, indent=2))
    return summary
