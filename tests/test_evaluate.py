"""The evaluation stage: discovery, resumable hf evaluation, the vLLM path (with a fake vllm)."""

import json
import os
from pathlib import Path

import pytest

from tests.conftest import FAST, compose_cfg
from yfpo import evaluate as ev
from yfpo.data import format_prompt, load_rows
from yfpo.train import fit

FAKE_VLLM = str(Path(__file__).parent / "fake_vllm")


@pytest.fixture
def run(tmp_path, cache):
    run_dir = tmp_path / "runs" / "r"
    fit(compose_cfg(*FAST, "method=dpo"), run_dir)
    return run_dir


def test_wilson_interval_by_hand():
    low, high = ev.wilson_interval(37, 100)
    assert abs(low - 0.2817) < 1e-3 and abs(high - 0.4676) < 1e-3
    assert ev.wilson_interval(0, 10)[0] == 0 and ev.wilson_interval(10, 10)[1] == 1


def test_finds_base_model_and_checkpoints(run):
    names = [n for n, _, _ in ev.find_checkpoints(run.parent)]
    assert names == ["ckpt-0", "ckpt-1", "ckpt-2"]
    assert [n for n, _, _ in ev.find_checkpoints(run / "checkpoints" / "ckpt-1")] == ["ckpt-1"]
    with pytest.raises(FileNotFoundError, match="no HF checkpoints"):
        ev.find_checkpoints(run / "logs")


def test_hf_evaluation_resumes_after_a_crash(run, monkeypatch):
    cfg = compose_cfg(*FAST, f"run_dir={run / 'checkpoints' / 'ckpt-2'}", "eval.batch_size=4", "eval.max_new_tokens=8")
    real, calls = ev._generate_hf, []

    def crash_after_first_batch(model_dir, cfg, prompts, tok):
        for i, batch in enumerate(real(model_dir, cfg, prompts, tok)):
            calls.append(len(batch))
            if len(calls) == 2:
                raise RuntimeError("simulated crash")
            yield batch

    monkeypatch.setattr(ev, "_generate_hf", crash_after_first_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ev.evaluate(cfg)
    out = run / "checkpoints" / "ckpt-2" / "eval" / "synthetic" / "ckpt-2"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4 and not (out / "summary.json").exists()
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"id": 4, "prompt": "torn')  # a crash in the middle of writing a row
    calls.clear()
    monkeypatch.setattr(ev, "_generate_hf", lambda m, c, p, t: (calls.append(len(p)) or real(m, c, p, t)))
    [summary] = ev.evaluate(cfg)
    assert calls == [6]  # only the 6 unfinished of the 10 problems were generated
    rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(10))
    assert summary["n"] == 10 and summary["accuracy"] == sum(r["correct"] for r in rows) / 10
    assert set(rows[0]) == {"id", "prompt", "completion", "extracted", "gold", "correct"}
    calls.clear()
    ev.evaluate(cfg)
    assert calls == []  # a finished checkpoint is skipped


def test_vllm_backend_with_a_fake_vllm(run, tmp_path, monkeypatch):
    log = tmp_path / "vllm.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", FAKE_VLLM + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cfg = compose_cfg(*FAST, f"run_dir={run}", "eval.backend=vllm", "eval.max_new_tokens=77",
                      "eval.tensor_parallel_size=2", "eval.stop=[Question:]")
    summaries = ev.evaluate(cfg)
    calls = [json.loads(l) for l in log.read_text().splitlines()]
    assert [Path(c["model"]).name for c in calls] == ["base", "ckpt-1", "ckpt-2"]
    assert len({c["pid"] for c in calls}) == 3 and os.getpid() not in {c["pid"] for c in calls}  # one process each
    for c in calls:
        assert c["sampling"]["temperature"] == 0 and c["sampling"]["max_tokens"] == 77 and c["sampling"]["stop"] == ["Question:"]
        assert c["llm"]["tensor_parallel_size"] == 2
    questions = [r["question"] for r in load_rows(cfg.eval.path)]
    assert calls[0]["prompts"] == [format_prompt("alpaca", q, None) for q in questions]
    assert all(s["backend"] == "vllm" and s["n"] == 10 for s in summaries)


@pytest.mark.parametrize("task,fields", [
    ("gsm8k", {"question": "Q{i}?", "answer": "step\n#### {i}"}),
    ("math500", {"problem": "Q{i}?", "solution": "so \\boxed{{{i}}}", "answer": "{i}", "subject": "Algebra",
                 "level": 1, "unique_id": "test/algebra/{i}.json"}),
])
def test_hub_schemas_read_from_local_files(tmp_path, cache, task, fields):
    import pandas as pd

    rows = [{k: v.format(i=i) if isinstance(v, str) else v for k, v in fields.items()} for i in range(3)]
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    problems = ev.load_problems(compose_cfg(f"eval={task}", f"eval.path={tmp_path / 't.parquet'}"))
    assert [p["gold"] for p in problems] == ["0", "1", "2"]
    if task == "math500":
        assert problems[1]["id"] == "test/algebra/1.json"
