"""A job's completions from each backend (``hf``: transformers here, ``vllm``: the command's worker),
and the two compared on the same prompts (``eval.compare_backends``)."""

from __future__ import annotations

import json
import os

import torch
from omegaconf import OmegaConf

from yfpo.core import artefacts
from yfpo.core.models import load_model
from yfpo.evaluate.generation import BACKENDS, generate
from yfpo.evaluate.grading import score
from yfpo.evaluate.job import Job
from yfpo.evaluate.summary import agreement, library_versions, rate


def _generate_hf(job: Job, prompts: list[str]):
    """Yields ``[{text, truncated}]`` batch by batch (so each batch is saved before the next starts)."""
    e, dec = job.eval, job.dec
    model = load_model(job.model, job.model_dir)
    if torch.cuda.is_available():
        model = model.cuda()
    for i in range(0, len(prompts), e.batch_size):
        batch = generate(model, job.tok, prompts[i : i + e.batch_size], dec["max_new_tokens"], e.batch_size,
                         dec["stop"], dec["stop_token_ids"], progress=False)
        yield [{"text": c.text, "truncated": c.truncated} for c in batch]


def _generate_vllm(job: Job, prompts: list[str]):
    """All ``[{text, truncated}]`` from the command's ``yfpo.evaluate.vllm_worker`` (``job.worker``); vLLM
    loads its own tokenizer. The worker's vLLM version goes to ``job.dec["vllm"]``."""
    dec = job.dec
    batch = {"prompts": prompts, "n": 1, "temperature": 0.0, "top_p": 1.0, "seed": job.engine.seed,
             "max_tokens": dec["max_new_tokens"], "stop": dec["stop"], "stop_token_ids": dec["stop_token_ids"]}
    version, [outputs] = job.worker.generate(job.model_dir, OmegaConf.to_container(job.engine, resolve=True),
                                             job.model.trust_remote_code, [batch])
    dec["vllm"] = version
    yield [{"text": o["text"], "truncated": o["finish_reason"] == "length"} for [o] in outputs]


def generator(backend: str):
    """The generating function of ``backend`` (looked up per call, so tests can replace it)."""
    return {"hf": _generate_hf, "vllm": _generate_vllm}[backend]


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
    texts = {b: [c for batch in generator(b)(job, prompts) for c in batch] for b in BACKENDS}
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
        "output_agreement": rate(rows, "same_output"), "grade_agreement": rate(rows, "same_grade"),
        "mean_common_prefix": sum(r["common_prefix"] for r in rows) / max(n, 1),
        "accuracy": {b: rate(rows, f"{b}_correct") for b in BACKENDS},
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
