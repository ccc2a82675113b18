"""The evaluation stage: discovery, resumable hf evaluation, the vLLM path (with a fake vllm)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from tests.conftest import FAST, compose_cfg, make_model
from yfpo.evaluate import backends
from yfpo.evaluate import run as ev
from yfpo.evaluate.discovery import find_checkpoints
from yfpo.data.rows import load_rows
from yfpo.evaluate.generation import generate
from yfpo.data.prompts import PromptError, default_stops, eval_prompt, format_prompt
from yfpo.evaluate.problems import load_problems
from yfpo.evaluate.summary import wilson_interval
from yfpo.train.fit import fit

FAKE_VLLM = str(Path(__file__).parent / "fake_vllm")


@pytest.fixture
def run(tmp_path, cache):
    run_dir = tmp_path / "runs" / "r"
    fit(compose_cfg(*FAST, "method=dpo"), run_dir)
    return run_dir


def test_wilson_interval_by_hand():
    low, high = wilson_interval(37, 100)
    assert abs(low - 0.2817) < 1e-3 and abs(high - 0.4676) < 1e-3
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(10, 10)[1] == 1


def test_finds_base_model_and_checkpoints(run):
    names = [n for n, _, _ in find_checkpoints(run.parent)]
    assert names == ["ckpt-0", "ckpt-1", "ckpt-2"]
    assert [n for n, _, _ in find_checkpoints(run / "checkpoints" / "ckpt-1")] == ["ckpt-1"]
    with pytest.raises(FileNotFoundError, match="no HF checkpoints"):
        find_checkpoints(run / "logs")


def test_hf_evaluation_resumes_after_a_crash(run, monkeypatch):
    cfg = compose_cfg(*FAST, f"run_dir={run / 'checkpoints' / 'ckpt-2'}", "eval.batch_size=4", "eval.max_new_tokens=8")
    real, calls = backends._generate_hf, []

    def crash_after_first_batch(job, prompts):
        for batch in real(job, prompts):
            calls.append(len(batch))
            if len(calls) == 2:
                raise RuntimeError("simulated crash")
            yield batch

    monkeypatch.setattr(backends, "_generate_hf", crash_after_first_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ev.evaluate(cfg)
    out = run / "checkpoints" / "ckpt-2" / "eval" / "synthetic" / "ckpt-2"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4 and not (out / "summary.json").exists()
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"id": 4, "prompt": "torn')  # a crash in the middle of writing a row
    calls.clear()
    monkeypatch.setattr(backends, "_generate_hf", lambda job, p: (calls.append(len(p)) or real(job, p)))
    [summary] = ev.evaluate(cfg)
    assert calls == [6]  # only the 6 unfinished of the 10 problems were generated
    rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(10))
    assert summary["n"] == 10 and summary["accuracy"] == sum(r["correct"] for r in rows) / 10
    assert set(rows[0]) == {"id", "prompt", "completion", "gold", "answer", "correct", "extracted", "truncated",
                            "answer_strict", "correct_strict", "answer_flexible", "correct_flexible"}
    calls.clear()
    ev.evaluate(cfg)
    assert calls == []  # a finished checkpoint is skipped


def use_fake_vllm(monkeypatch, tmp_path, texts: dict | None = None) -> Path:
    """Make the vllm worker import tests/fake_vllm; ``texts`` maps prompts to completions. Returns the call log."""
    log = tmp_path / "vllm.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", FAKE_VLLM + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if texts is not None:
        (tmp_path / "texts.json").write_text(json.dumps(texts))
        monkeypatch.setenv("FAKE_VLLM_TEXTS", str(tmp_path / "texts.json"))
    return log


def test_vllm_backend_with_a_fake_vllm(run, tmp_path, monkeypatch):
    log = use_fake_vllm(monkeypatch, tmp_path)
    cfg = compose_cfg(*FAST, f"run_dir={run}", "eval.backend=vllm", "eval.max_new_tokens=77",
                      "vllm.tensor_parallel_size=2", "eval.stop=[Question:]")
    summaries = ev.evaluate(cfg)
    calls = [json.loads(l) for l in log.read_text().splitlines()]
    assert [Path(c["model"]).name for c in calls] == ["base", "ckpt-1", "ckpt-2"]
    # without a CUDA GPU one worker process serves every checkpoint (a new engine each), not this one
    assert len({c["pid"] for c in calls}) == 1 and os.getpid() not in {c["pid"] for c in calls}
    for c in calls:
        assert c["sampling"]["temperature"] == 0 and c["sampling"]["max_tokens"] == 77 and c["sampling"]["stop"] == ["Question:"]
        assert c["llm"]["tensor_parallel_size"] == 2
    questions = [r["question"] for r in load_rows(cfg.eval.path)]
    assert calls[0]["prompts"] == [format_prompt("alpaca", q, None) for q in questions]
    assert all(s["backend"] == "vllm" and s["n"] == 10 for s in summaries)


def test_on_a_gpu_each_checkpoint_gets_a_vllm_process_of_its_own(run, tmp_path, monkeypatch):
    """vLLM does not reliably free GPU memory between engines in one process; the exit does."""
    log = use_fake_vllm(monkeypatch, tmp_path)
    monkeypatch.setattr(ev.vllm_worker, "reuse_process", lambda cuda: False)
    ev.evaluate(compose_cfg(*FAST, f"run_dir={run}", "eval.backend=vllm"))
    calls = [json.loads(l) for l in log.read_text().splitlines()]
    assert len(calls) == 3 and len({c["pid"] for c in calls}) == 3


def test_dev_slices_are_seeded_samples_that_keep_their_row_ids(tmp_path, cache):
    """eval=gsm8k_dev: a fixed seeded slice of the train split, the same on every call."""
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"#### {i}"}) + "\n"
                                                  for i in range(50)))
    cfg = compose_cfg("eval=gsm8k_dev", f"eval.path={tmp_path / 'train.jsonl'}", "eval.sample=10")
    assert cfg.eval.name == "gsm8k_dev" and cfg.eval.split == "train"
    problems = load_problems(cfg.eval, cfg.hub)
    ids = [p["id"] for p in problems]
    assert len(ids) == 10 and ids == sorted(ids) and ids != list(range(10))
    assert all(p["gold"] == str(p["id"]) for p in problems)  # each keeps its own row
    assert [p["id"] for p in load_problems(cfg.eval, cfg.hub)] == ids
    other = compose_cfg("eval=gsm8k_dev", f"eval.path={tmp_path / 'train.jsonl'}", "eval.sample=10", "eval.sample_seed=1")
    assert [p["id"] for p in load_problems(other.eval, other.hub)] != ids
    too_many = compose_cfg("eval=gsm8k_dev", f"eval.path={tmp_path / 'train.jsonl'}", "eval.sample=60")
    with pytest.raises(ValueError, match="eval.sample=60: give a number of problems between 1 and the 50 rows"):
        load_problems(too_many.eval, too_many.hub)


@pytest.mark.parametrize("task,fields", [
    ("gsm8k", {"question": "Q{i}?", "answer": "step\n#### {i}"}),
    ("math500", {"problem": "Q{i}?", "solution": "so \\boxed{{{i}}}", "answer": "{i}", "subject": "Algebra",
                 "level": 1, "unique_id": "test/algebra/{i}.json"}),
])
def test_hub_schemas_read_from_local_files(tmp_path, cache, task, fields):
    import pandas as pd

    rows = [{k: v.format(i=i) if isinstance(v, str) else v for k, v in fields.items()} for i in range(3)]
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    cfg = compose_cfg(f"eval={task}", f"eval.path={tmp_path / 't.parquet'}")
    problems = load_problems(cfg.eval, cfg.hub)
    assert [p["gold"] for p in problems] == ["0", "1", "2"]
    if task == "math500":
        assert problems[1]["id"] == "test/algebra/1.json"


class Scripted:
    """A real HF model whose greedy choices are forced to ``scripts[row]`` (token ids), then ``filler``
    forever: transformers' own generate loop, stopping criteria and padding run unchanged."""

    def __init__(self, model, scripts: list[list[int]], filler: int):
        self.model, self.scripts, self.filler, self.outputs = model, scripts, filler, []
        self.device = model.device

    def eval(self):
        return self

    def generate(self, **kwargs):
        prompt_len, scripts, filler = kwargs["input_ids"].shape[1], self.scripts, self.filler

        class Force(LogitsProcessor):
            def __call__(self, input_ids, scores):
                step = input_ids.shape[1] - prompt_len
                forced = torch.full_like(scores, -float("inf"))
                for i, s in enumerate(scripts):
                    forced[i, s[step] if step < len(s) else filler] = 0.0
                return forced

        out = self.model.generate(**kwargs, logits_processor=LogitsProcessorList([Force()]))
        self.outputs.append(out[:, prompt_len:])
        return out


RUNAWAY = ("3 * 6 = 18 apples. The answer is 18.\n\n### Instruction:\nMia has 4 pens and buys 5 more. "
           "How many pens?\n\n### Response:\n4 + 5 = 9")


def test_stop_strings_cut_completions_and_end_their_row_early(tokenizer):
    enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos, filler = tokenizer.eos_token_id, enc("x")[0]
    scripts = [enc(RUNAWAY), enc("So 2 + 3 = 5. The answer is 5.") + [eos], enc("1 + 1 = 2, 2 + 2 = 4, 4 + 4 = 8")]
    budget = len(scripts[0]) + 5
    prompts = [format_prompt("alpaca", q, None) for q in ("Q1?", "Q2?", "Q3?")]
    model = Scripted(make_model(tokenizer), scripts, filler)
    out = generate(model, tokenizer, prompts, budget, 3, default_stops("alpaca"), progress=False)
    assert out[0].text == "3 * 6 = 18 apples. The answer is 18.\n\n" and not out[0].truncated
    assert out[1].text == "So 2 + 3 = 5. The answer is 5." and not out[1].truncated  # EOS
    assert out[2].text.startswith("1 + 1 = 2, 2 + 2 = 4, 4 + 4 = 8xxx") and out[2].truncated  # ran out of budget
    # the stopped rows generated no further tokens of their own: the rest of their row is padding
    new = model.outputs[0]
    assert new.shape[1] == budget
    stop_at = len(enc("3 * 6 = 18 apples. The answer is 18.\n\n### Instruction"))
    assert (new[0, stop_at + 1 :] == tokenizer.pad_token_id).all()
    # without stop strings the runaway row runs into the invented problem, and flexible grading takes its 9
    model = Scripted(make_model(tokenizer), scripts, filler)
    free = generate(model, tokenizer, prompts, budget, 3, [], progress=False)
    assert free[0].text == RUNAWAY + "xxxxx" and free[0].truncated
    from yfpo.evaluate.grading import score
    assert score("gsm8k", free[0].text, "18")["correct_flexible"] is False
    assert score("gsm8k", out[0].text, "18")["correct_flexible"] is True


def test_stops_do_not_match_across_the_prompt(tokenizer):
    # The alpaca prompt ends in "\n"; two generated newlines must not make "\n\n\n" (as vLLM: generated text only).
    enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    script = enc("\n") * 2 + enc("The answer is 4.") + [tokenizer.eos_token_id]
    prompt = format_prompt("alpaca", "Q?", None)
    assert prompt.endswith("\n")
    model = Scripted(make_model(tokenizer), [script], enc("x")[0])
    [c] = generate(model, tokenizer, [prompt], 40, 1, ["\n\n\n"], progress=False)
    assert c.text == "\n\nThe answer is 4." and not c.truncated


def test_summary_has_rates_conventions_versions_and_warnings(run, monkeypatch, capsys):
    ckpt = run / "checkpoints" / "ckpt-2"
    cfg = compose_cfg(*FAST, f"run_dir={ckpt}", "eval.max_new_tokens=8")
    golds = [p["gold"] for p in load_problems(cfg.eval, cfg.hub)]
    texts = [f"The answer is {g}." if i < 6 else f"so {g}" if i < 8 else "and so on and so" for i, g in enumerate(golds)]

    def scripted(job, prompts):
        assert job.dec["stop"] == default_stops("alpaca") and job.dec["stop_token_ids"] == [job.tok.eos_token_id]
        yield [{"text": t, "truncated": i >= 8} for i, t in enumerate(texts)]

    monkeypatch.setattr(backends, "_generate_hf", scripted)
    [s] = ev.evaluate(cfg)
    assert s["n"] == 10 and s["accuracy"] == 0.8 and s["accuracy_strict"] == 0.6 and s["accuracy_flexible"] == 0.8
    assert s["truncated_rate"] == 0.2 and s["extracted_rate"] == 0.6
    assert "paper-style tables" in s["scoring"]["accuracy"] and s["decoding"]["stop"] == default_stops("alpaca")
    assert s["decoding"]["num_fewshot"] == 0 and s["decoding"]["max_new_tokens"] == 8
    import torch as _torch
    import transformers
    assert s["versions"]["torch"] == _torch.__version__.split("+")[0] or s["versions"]["torch"] == _torch.__version__
    assert s["versions"]["transformers"] == transformers.__version__ and s["versions"]["yfpo"]
    assert "vllm" in s["versions"] and "math-verify" in s["versions"]
    assert len(s["warnings"]) == 2
    err = capsys.readouterr().out
    assert "warning" in err and "20.0% of completions hit max_new_tokens=8" in err and "40.0% of completions give no marked" in err
    rows = [json.loads(l) for l in (ckpt / "eval" / "synthetic" / "ckpt-2" / "predictions.jsonl").read_text().splitlines()]
    assert [r["truncated"] for r in rows] == [False] * 8 + [True] * 2
    assert [r["extracted"] for r in rows] == [True] * 6 + [False] * 4


def test_template_default_stop_and_override_through_vllm(run, tmp_path, monkeypatch):
    """eval.stop null: the template's stops reach vLLM and cut the runaway block; a list replaces them."""
    ckpt = run / "checkpoints" / "ckpt-1"
    cfg = compose_cfg(*FAST, f"run_dir={ckpt}", "eval.backend=vllm", "eval.limit=2")
    problems = load_problems(cfg.eval, cfg.hub)
    texts = {format_prompt("alpaca", p["question"], None): RUNAWAY.replace("18", p["gold"]) for p in problems}
    texts[format_prompt("alpaca", problems[1]["question"], None)] = {"text": "1 2 3", "finish_reason": "length"}
    log = use_fake_vllm(monkeypatch, tmp_path, texts)
    [s] = ev.evaluate(cfg)
    call = json.loads(log.read_text().splitlines()[-1])
    assert call["sampling"]["stop"] == default_stops("alpaca") and call["sampling"]["stop_token_ids"]
    assert s["accuracy_flexible"] == 0.5 and s["truncated_rate"] == 0.5 and s["versions"]["vllm"] == "0.0.0+fake"
    cfg = compose_cfg(*FAST, f"run_dir={ckpt}", "eval.backend=vllm", "eval.limit=2", "eval.stop=[]", "eval.name=nostop")
    [s] = ev.evaluate(cfg)
    assert json.loads(log.read_text().splitlines()[-1])["sampling"]["stop"] is None  # [] = no stop strings
    assert s["accuracy_flexible"] == 0.0 and s["accuracy_strict"] == 0.5  # flexible took the invented 9


def test_fewshot_prompts_and_their_stops_reach_the_backend(run, tmp_path, monkeypatch):
    ckpt = run / "checkpoints" / "ckpt-1"
    log = use_fake_vllm(monkeypatch, tmp_path)
    cfg = compose_cfg(*FAST, f"run_dir={ckpt}", "eval.backend=vllm", "eval.limit=3", "eval.num_fewshot=4")
    [s] = ev.evaluate(cfg)
    call = json.loads(log.read_text())
    questions = [p["question"] for p in load_problems(cfg.eval, cfg.hub)]
    assert call["prompts"] == [eval_prompt("alpaca", q, None, 4, "gsm8k") for q in questions]
    assert all(p.count("The answer is") == 4 for p in call["prompts"])
    assert call["sampling"]["stop"] == default_stops("alpaca", 4, "gsm8k")
    assert s["decoding"]["num_fewshot"] == 4 and s["decoding"]["fewshot_set"] == "gsm8k"


def test_compare_backends_writes_agreement(run, tmp_path, monkeypatch):
    ckpt = run / "checkpoints" / "ckpt-2"
    cfg = compose_cfg(*FAST, f"run_dir={ckpt}", "eval.compare_backends=3", "eval.max_new_tokens=6")
    use_fake_vllm(monkeypatch, tmp_path)
    [r] = ev.evaluate(cfg)
    path = ckpt / "eval" / "synthetic" / "ckpt-2" / "backend_agreement.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(r))
    assert r["n"] == 3 and len(r["rows"]) == 3 and r["versions"]["vllm"] == "0.0.0+fake"
    assert all(row["vllm"] == "#### 0" for row in r["rows"])
    assert r["output_agreement"] == sum(row["hf"] == "#### 0" for row in r["rows"]) / 3
    assert r["grade_agreement"] == sum(row["hf_correct"] == (row["gold"] == "0") for row in r["rows"]) / 3
    assert not (path.parent / "summary.json").exists()  # a check, not an evaluation
    # the fake now answers two problems exactly as hf did: their texts and grades agree
    prompts = [eval_prompt("alpaca", p["question"]) for p in load_problems(cfg.eval, cfg.hub)[:2]]
    use_fake_vllm(monkeypatch, tmp_path, {p: row["hf"] for p, row in zip(prompts, r["rows"])})
    [r2] = ev.evaluate(cfg)
    assert [row["same_output"] for row in r2["rows"][:2]] == [True, True] and r2["rows"][0]["common_prefix"] == 1.0
    assert r2["output_agreement"] >= 2 / 3 and r2["grade_agreement"] >= 2 / 3


@pytest.mark.parametrize("override,match", [
    ("eval.stop=Question", "eval.stop"),  # refused by the eval schema (a list of strings) when composed
    ("eval.num_fewshot=9", "eval.num_fewshot=9"),
    ("eval.num_fewshot=-1", "eval.num_fewshot=-1"),
    ("eval.compare_backends=-2", "eval.compare_backends=-2"),
    ("eval.stop_token_ids=[a]", "eval.stop_token_ids"),
    ("eval.template=vicuna", r"Invalid value 'vicuna', expected one of \[alpaca, chat\] \(key eval.template\)"),
    ("eval.backend=tgi", r"Invalid value 'tgi', expected one of \[hf, vllm\] \(key eval.backend\)"),
])
def test_bad_eval_settings_name_the_key(tmp_path, override, match):
    # checked before any data or model is loaded (a wrong type already by the schema, when composed)
    from hydra.errors import ConfigCompositionException

    with pytest.raises((PromptError, ValueError, ConfigCompositionException), match=match):
        ev.evaluate(compose_cfg(*FAST, f"run_dir={tmp_path / 'missing'}", override))


def test_old_prediction_rows_are_generated_again(run, monkeypatch):
    ckpt = run / "checkpoints" / "ckpt-1"
    cfg = compose_cfg(*FAST, f"run_dir={ckpt}", "eval.limit=3", "eval.max_new_tokens=4")
    out = ckpt / "eval" / "synthetic" / "ckpt-1"
    out.mkdir(parents=True)
    old = {"id": 0, "prompt": "p", "completion": "#### 1", "extracted": "1", "gold": "1", "correct": True}
    (out / "predictions.jsonl").write_text(json.dumps(old) + "\n")
    real, calls = backends._generate_hf, []
    monkeypatch.setattr(backends, "_generate_hf", lambda job, p: (calls.append(len(p)) or real(job, p)))
    [s] = ev.evaluate(cfg)
    assert calls == [3] and s["n"] == 3


def test_other_settings_are_refused_or_kept_apart(run, monkeypatch):
    ckpt = run / "checkpoints" / "ckpt-1"
    base = [*FAST, f"run_dir={ckpt}", "eval.limit=2", "eval.max_new_tokens=4"]
    [s] = ev.evaluate(compose_cfg(*base))
    with pytest.raises(ValueError, match=r"other inputs .*num_fewshot.*eval.name=NAME"):
        ev.evaluate(compose_cfg(*base, "eval.num_fewshot=2"))
    [s2] = ev.evaluate(compose_cfg(*base, "eval.num_fewshot=2", "eval.name=synthetic_2shot"))
    assert (ckpt / "eval" / "synthetic_2shot" / "ckpt-1" / "summary.json").is_file()
    assert s2["decoding"]["num_fewshot"] == 2 and s["decoding"]["num_fewshot"] == 0
    # more problems with the same settings: only the new ones are generated, the summary is rewritten
    real, calls = backends._generate_hf, []
    monkeypatch.setattr(backends, "_generate_hf", lambda job, p: (calls.append(len(p)) or real(job, p)))
    [s3] = ev.evaluate(compose_cfg(*FAST, f"run_dir={ckpt}", "eval.limit=3", "eval.max_new_tokens=4"))
    assert calls == [1] and s3["n"] == 3


def test_eval_defaults_follow_the_papers():
    for task, fewshot_set in (("gsm8k", "gsm8k"), ("math500", "minerva_math")):
        e = compose_cfg(f"eval={task}").eval
        assert e.max_new_tokens == 2048  # Step-DPO's max_tokens (NOTES.md); neither YFPO nor FDT states one
        assert e.stop is None and e.stop_token_ids is None  # the template's defaults
        assert e.num_fewshot == 0 and e.fewshot_set == fewshot_set and e.compare_backends == 0 and e.warn_rate == 0.05


@pytest.mark.slow  # real processes: the printed command runs as pasted
def test_the_tables_hint_for_a_missing_evaluation_runs_as_pasted(tmp_path, cache, monkeypatch):
    """A sweep directory's name holds ',' and '=': the suggested command must still parse and work."""
    import shlex
    import subprocess
    import sys

    from yfpo.pipelines import paper_table
    from yfpo.core.errors import MissingError

    monkeypatch.chdir(tmp_path)
    run_dir = Path("multirun") / "smoke" / "+variant=dpo,seed=1"
    fit(compose_cfg(*FAST, "method=dpo", "checkpoints.count=1"), run_dir)
    spec = {"name": "h", "task": "synthetic", "baseline": "DPO", "rows": [{"data": "s", "method": "DPO", "runs": [str(run_dir)]}]}
    with pytest.raises(MissingError) as missing:
        paper_table.build(spec, Path("."))
    hint = str(missing.value).split("`")[1]
    assert hint.startswith(f"python -m yfpo.evaluate run_dir={run_dir} ")  # typed as it is: no quoting
    argv = shlex.split(hint)[3:] + ["eval.limit=8"]  # as pasted (a shorter evaluation than the user's)
    done = subprocess.run([sys.executable, "-m", "yfpo.evaluate", *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    header, table = paper_table.build(spec, Path("."))
    assert table[0][header.index("Avg per seed")] != ""


def test_a_second_evaluation_of_the_same_name_is_refused(run):
    from yfpo.core.errors import UserError
    from yfpo.core.locks import exclusive

    cfg = compose_cfg(*FAST, f"run_dir={run}", "eval.limit=4")
    with exclusive(run / "eval" / "synthetic.lock", "evaluation"):  # another process evaluating it
        with pytest.raises(UserError, match=f"evaluation {run / 'eval' / 'synthetic'} is in use by pid {os.getpid()}"):
            ev.evaluate(cfg)
    assert not (run / "eval" / "synthetic" / "ckpt-1" / "predictions.jsonl").exists()
    ev.evaluate(compose_cfg(*FAST, f"run_dir={run}", "eval.limit=4", "eval.name=other"))  # another name is free


def test_other_problems_are_evaluated_apart_or_refused_up_front_and_a_smaller_limit_keeps_the_summary(run, tmp_path, monkeypatch):
    """Reuse is keyed on what the problems are: another eval.path is evaluated into its own directory;
    other rows in the same file are refused for every checkpoint before any is evaluated; eval.limit
    below what was evaluated reads nothing new."""
    def problems_file(name, offset):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"question": f"What is {i + offset} + 1?", "answer": f"#### {i + offset + 1}"}) + "\n"
                                for i in range(6)))
        return path

    a, b = problems_file("a", 0), problems_file("b", 100)
    base = [*FAST, f"run_dir={run}", "eval.max_new_tokens=4"]
    first = ev.evaluate(compose_cfg(*base, f"eval.path={a}"))
    assert [s["n"] for s in first] == [6, 6, 6]  # ckpt-0, ckpt-1, ckpt-2
    other = ev.evaluate(compose_cfg(*base, f"eval.path={b}"))
    assert [s["n"] for s in other] == [6, 6, 6]
    golds = {name: [json.loads(l)["gold"] for l in (run / "eval" / name / "ckpt-1" / "predictions.jsonl").read_text().splitlines()]
             for name in ("synthetic@a", "synthetic@b")}
    assert golds == {"synthetic@a": [str(i + 1) for i in range(6)], "synthetic@b": [str(i + 101) for i in range(6)]}
    assert not (run / "eval" / "synthetic").exists()  # the group's own test set was never evaluated
    a.write_text(b.read_text())  # the same file name, other problems
    with pytest.raises(ValueError, match=r"made from other inputs \(source: .*rows") as refused:
        ev.evaluate(compose_cfg(*base, f"eval.path={a}"))
    assert all(f"synthetic@a/ckpt-{k} was made" in str(refused.value) for k in (0, 1, 2))  # all at once
    a.write_text(problems_file("again", 0).read_text())
    calls = []
    monkeypatch.setattr(backends, "_generate_hf", lambda *args: calls.append(1) or iter([]))
    again = ev.evaluate(compose_cfg(*base, f"eval.path={a}", "eval.limit=3"))
    assert calls == [] and [s["n"] for s in again] == [6, 6, 6]  # the summaries still describe all 6 rows
    rows = (run / "eval" / "synthetic@a" / "ckpt-1" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 6


def wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline W&B run file (LevelDB-log framing: 32 KiB blocks of records
    with a 7-byte header, checksum, length and type; protobuf ``Record`` payloads)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, rows, pos, part = path.read_bytes(), [], 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at the end of a block
            pos += left
            continue
        part, pos = part + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            part = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_evaluation_scores_go_to_the_training_runs_wandb_run(tmp_path, cache, monkeypatch):
    """logger=wandb: every checkpoint's scores land in the same (offline) W&B run as the training
    curves, on the training step axis; no key is needed or written."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    run = tmp_path / "run"
    fit(compose_cfg(*FAST, "method=dpo", "logger=wandb", "name=wb"), run)
    run_id = (run / "logs" / "wandb_id").read_text().strip()
    summaries = ev.evaluate(compose_cfg(*FAST, f"run_dir={run}", "eval.limit=4", "eval.max_new_tokens=4"))
    rows = [r for f in sorted(run.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")) for r in wandb_history(f)]
    assert any("rewards/margins" in r for r in rows)  # the training curves, in the same run
    evals = [r for r in rows if "eval/synthetic/accuracy" in r]
    steps = [json.loads((run / "checkpoints" / f"ckpt-{k}" / "yfpo_state.json").read_text())["step"] for k in (1, 2)]
    assert [r["trainer/global_step"] for r in evals] == [0, *steps]
    assert [r["eval/synthetic/accuracy"] for r in evals] == [s["accuracy"] for s in summaries]
    assert all("eval/synthetic/truncated_rate" in r and "eval/synthetic/accuracy_strict" in r for r in evals)
    ev.evaluate(compose_cfg(*FAST, f"run_dir={run}", "eval.limit=4", "eval.max_new_tokens=4"))  # finished: skipped
    again = [r for f in sorted(run.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")) for r in wandb_history(f)]
    assert len([r for r in again if "eval/synthetic/accuracy" in r]) == 3  # not logged twice


def test_a_shared_start_model_is_copied_only_to_runs_with_the_same_key(tmp_path, cache):
    """Runs of a sweep share ckpt-0: its evaluation is copied between them, but not to a run whose
    own settings (here its prompt template) make other predictions."""
    sweep = tmp_path / "multirun"
    for name, extra in (("a", []), ("b", []), ("c", ["model.template=chat"])):
        fit(compose_cfg(*FAST, "checkpoints.count=1", *extra), sweep / name)
    ev.evaluate(compose_cfg(*FAST, f"run_dir={sweep}", "eval.limit=3", "eval.max_new_tokens=4"))
    prompts = {n: [json.loads(l)["prompt"] for l in (sweep / n / "eval" / "synthetic" / "ckpt-0" / "predictions.jsonl")
                   .read_text().splitlines()] for n in "abc"}
    assert prompts["a"] == prompts["b"] and "### Instruction" in prompts["a"][0]
    assert prompts["c"] != prompts["a"] and "<|im_start|>" in prompts["c"][0]  # its own template, not a's copy


def test_an_unfinished_run_is_refused_unless_asked_for(run, capsys):
    """A run with no DONE (stopped by a pre-emption, crashed, or still training) lacks its last
    checkpoints: evaluating it is refused, naming it, unless eval.unfinished=true, which says so."""
    from yfpo.core.errors import ConfigError

    (run / "DONE").unlink()
    with pytest.raises(ConfigError, match=f"training has not finished in {run} .*eval.unfinished=true"):
        ev.evaluate(compose_cfg(*FAST, f"run_dir={run.parent}", "eval.limit=2", "eval.max_new_tokens=4"))
    assert not (run / "eval").exists()
    summaries = ev.evaluate(compose_cfg(*FAST, f"run_dir={run}", "eval.limit=2", "eval.max_new_tokens=4", "eval.unfinished=true"))
    assert len(summaries) == 3 and f"evaluating unfinished runs (eval.unfinished=true): {run}" in capsys.readouterr().err
    ev.evaluate(compose_cfg(*FAST, f"run_dir={run / 'checkpoints' / 'ckpt-1'}", "eval.limit=2", "eval.max_new_tokens=4"))  # one checkpoint: no run to finish


def test_a_run_on_its_own_synthetic_draw_is_evaluated_on_that_draws_test_set(run, capsys):
    """A smoke run trained on .cache/smoke/synthetic (10 test problems); `python -m yfpo.evaluate
    run_dir=<it>` without +experiment=smoke evaluates it there, not on the default draw's 500."""
    summaries = ev.evaluate(compose_cfg(f"run_dir={run}", "eval.max_new_tokens=4"))
    assert {s["n"] for s in summaries} == {10}, [s["n"] for s in summaries]
    assert "evaluating on the synthetic draw the runs trained on" in capsys.readouterr().out
    other = run.parent / "other"  # a run of another draw (its recorded settings say so)
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("eval"))
    saved = (other / "run_config.yaml").read_text()
    (other / "run_config.yaml").write_text(saved.replace("num_test: 10", "num_test: 12", 1))
    with pytest.raises(ev.ConfigError, match="trained on different synthetic draws"):
        ev.evaluate(compose_cfg(f"run_dir={run.parent}", "eval.max_new_tokens=4"))
