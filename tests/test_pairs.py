"""python -m yfpo.pairs: on-policy pairs are valid training rows, step pairs contrast the first wrong
step, and a crashed run resumes to the very file an uninterrupted run writes."""

import json
import random

import pytest
import torch

from tests.conftest import FAST, compose_cfg, job_of
from yfpo.core.artefacts import StaleArtefactError
from yfpo.pairs import sampling as pairs_mod
from yfpo.data.rows import PAIR_FIELDS, read_rows
from yfpo.evaluate.generation import Completion
from yfpo.data.synthetic import first_wrong_step, question_plan

Q = "Mia has 20 books. Mia finds 5 more, then gives away 7. How many books does Mia have now?"
RIGHT = "20 + 5 = 25 books.\n25 - 7 = 18 books.\n#### 18"
WRONG_STEP_1 = "20 + 5 = 25 books.\n25 - 7 = 19 books.\n#### 19"
LUCKY = "20 + 5 = 27 books.\n27 - 9 = 18 books.\n#### 18"  # right answer, wrong steps


def _judge(completions, gold="18"):
    from yfpo.evaluate.grading import grade

    first = [first_wrong_step(Q, c) for c in completions]
    return [grade("synthetic", c, gold) and w is None for c, w in zip(completions, first)], first


def test_full_and_step_pairs_for_one_question():
    completions = [RIGHT, RIGHT, WRONG_STEP_1, LUCKY]
    correct, first = _judge(completions)
    assert correct == [True, True, False, False]  # the lucky answer is not "correct"
    rows, why = pairs_mod.pairs_for_question(Q, completions, correct, first, "full", 5, random.Random(0))
    assert why is None and len(rows) == 1  # duplicates count once: one correct, so one pair
    assert rows[0]["full_chosen"] == RIGHT and rows[0]["full_rejected"] in (WRONG_STEP_1, LUCKY)
    rows, why = pairs_mod.pairs_for_question(Q, completions, correct, first, "step", 5, random.Random(0))
    assert why is None and len(rows) == 1
    assert rows[0]["initial_reason_steps"].endswith("20 + 5 = 25 books.\n")  # the shared correct prefix
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("25 - 7 = 18 books.", "25 - 7 = 19 books.")
    assert pairs_mod.pairs_for_question(Q, [RIGHT], [True], [None], "full", 1, random.Random(0)) == ([], "no incorrect sample")
    c, f = _judge([LUCKY])
    assert pairs_mod.pairs_for_question(Q, [LUCKY], c, f, "full", 1, random.Random(0)) == ([], "no correct sample")


def test_a_completion_that_stops_before_its_answer_gives_no_step_pair():
    """Its first "wrong" line is one past its last (no '#### N'): there is no step to contrast."""
    unfinished = "20 + 5 = 25 books."
    completions = [RIGHT, unfinished]
    correct, first = _judge(completions)
    assert correct == [True, False] and first[1] == 1
    assert pairs_mod.pairs_for_question(Q, completions, correct, first, "step", 1, random.Random(0)) == (
        [], "no shared correct prefix")


def test_an_empty_sample_is_never_a_response():
    """A sample that ends at once (EOS first) is wrong, but no row to train on: training refuses an
    empty response, so such a pair would stop the next stage."""
    completions = [RIGHT, "", "  \n"]
    correct, first = _judge(completions)
    assert correct == [True, False, False]
    assert pairs_mod.pairs_for_question(Q, completions, correct, first, "full", 5, random.Random(0)) == (
        [], "no incorrect sample")
    rows, why = pairs_mod.pairs_for_question(Q, [*completions, WRONG_STEP_1], [*correct, False], [*first, 1], "full", 5,
                                             random.Random(0))
    assert why is None and [r["full_rejected"] for r in rows] == [WRONG_STEP_1]


def _canned(calls):
    """A stand-in sampler: per prompt, a right or a wrong worked solution drawn from the torch RNG."""

    def generate(model, tokenizer, prompts, *args, **kwargs):
        calls.append(len(prompts))
        out = []
        for prompt in prompts:
            question = prompt.split("### Instruction:\n")[1].split("\n\n### Response:")[0]
            value, deltas = question_plan(question)
            lines, slip = [], int(torch.randint(0, 3, ()))  # 0: a wrong second step
            for k, d in enumerate(deltas):
                result = value + d + (1 if slip == 0 and k == 1 else 0)
                lines.append(f"{value} {'+' if d >= 0 else '-'} {abs(d)} = {result} things.")
                value = result
            out.append(Completion("\n".join(lines) + f"\n#### {value}", truncated=False))
        return out

    return generate


def test_pairs_are_training_rows_and_a_crashed_run_resumes_identically(tmp_path, cache, monkeypatch):
    calls = []
    monkeypatch.setattr(pairs_mod, "generate", _canned(calls))
    args = [*FAST, "pairs.num_questions=24", "pairs.chunk_questions=8", "pairs.samples=4", "pairs.mode=step"]
    straight = pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, compose_cfg(*args, f"pairs.out={tmp_path / 'a.jsonl'}")))

    real = _canned(calls)

    def crash_on_third_chunk(*a, **k):
        if len(calls) == 5:  # 3 chunks in the run above, then this run's first two
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(pairs_mod, "generate", crash_on_third_chunk)
    cfg_b = compose_cfg(*args, f"pairs.out={tmp_path / 'b.jsonl'}")
    with pytest.raises(RuntimeError, match="simulated crash"):
        pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, cfg_b))
    assert not (tmp_path / "b.jsonl").exists() and (tmp_path / "b.jsonl.partial.jsonl").exists()
    monkeypatch.setattr(pairs_mod, "generate", real)
    resumed = pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, cfg_b))
    assert len(calls) == 6  # the resumed run sampled only the chunk that was missing
    assert resumed.read_text() == straight.read_text()

    rows = [json.loads(l) for l in straight.read_text().splitlines()]
    assert rows and all(isinstance(r[f], str) for r in rows for f in PAIR_FIELDS) and rows[0]["model"] == "tiny_base"
    for r in rows:  # chosen continues the prefix correctly, rejected is wrong exactly there
        assert first_wrong_step(r["prompt"], r["initial_reason_steps"] + r["full_chosen"]) is None
        k = len(r["initial_reason_steps"].strip().splitlines()) - 1
        assert first_wrong_step(r["prompt"], r["initial_reason_steps"] + r["full_rejected"]) == k
    meta = json.loads((tmp_path / "a.jsonl.meta.json").read_text())
    assert meta["questions"] == 24 and meta["pairs"] == len(rows) and 0 < meta["sampled_accuracy"] < 1
    # training reads the file as it reads Math-Step-DPO-10K
    train = read_rows(compose_cfg(*FAST, f"data.path={straight}").data, "pairs")
    assert len(train) == len(rows)


def test_sampling_from_the_real_model_runs(tmp_path, cache):
    cfg = compose_cfg(*FAST, "pairs.num_questions=6", "pairs.samples=2", f"pairs.out={tmp_path / 'p.jsonl'}")
    out = pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, cfg))
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["questions"] == 6 and meta["settings"]["temperature"] == 1.0
    assert sum(meta["skipped"].values()) + meta["pairs"] == 6  # every question accounted for (1 pair at most each)
    per_question = meta["correct_per_question"]
    assert len(per_question) == 6 and all(0 <= k <= 2 for k in per_question)
    assert meta["pass_at_k"] == sum(k > 0 for k in per_question) / 6


def test_more_questions_than_the_file_holds_are_refused(cache):
    with pytest.raises(pairs_mod.ConfigError, match=r"pairs.num_questions=1600, but .*questions.jsonl has 40 rows: set pairs.num_questions=40"):
        pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, compose_cfg(*FAST, "pairs.num_questions=1600")))


def test_step_mode_needs_a_checker(cache):
    with pytest.raises(pairs_mod.ConfigError, match="pairs.mode=step needs a step checker"):
        pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, compose_cfg(*FAST, "pairs.mode=step", "pairs.checker=null")))


def test_a_cached_pairs_file_is_reused_only_for_the_same_weights(tmp_path, cache, monkeypatch, capsys):
    """Pairs are on-policy only for the weights they were sampled from: other weights are refused."""
    calls = []
    monkeypatch.setattr(pairs_mod, "generate", _canned(calls))
    cfg = compose_cfg(*FAST, "pairs.num_questions=8", "pairs.samples=4", f"pairs.out={tmp_path / 'p.jsonl'}")
    pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, cfg))
    pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, cfg))
    assert len(calls) == 1 and "keeping it" in capsys.readouterr().out
    before = json.loads((tmp_path / "p.jsonl.meta.json").read_text())["weights"]

    load = pairs_mod.load_model

    def retrained(*a, **k):
        model = load(*a, **k)
        with torch.no_grad():
            model.lm_head.weight.add_(1e-3)
        return model

    monkeypatch.setattr(pairs_mod, "load_model", retrained)
    with pytest.raises(StaleArtefactError, match=r"pairs file .*\(weights: made with .*Delete .* to sample again"):
        pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, cfg))
    (tmp_path / "p.jsonl").unlink()
    pairs_mod.make_pairs(job_of(pairs_mod.PairsJob, cfg))
    assert len(calls) == 2
    assert json.loads((tmp_path / "p.jsonl.meta.json").read_text())["weights"] != before
