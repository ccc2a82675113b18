"""Data: the synthetic generator, prompt templates, truncation, validation, batching."""

import json
import re

import pandas as pd
import pytest
import torch

from tests.conftest import compose_cfg
from yfpo.core.errors import ConfigError
from yfpo.data import synthetic
from yfpo.data.rows import DataError, load_rows, subset
from yfpo.data.encode import Encoder, collate, truncate
from yfpo.data.prompts import ALPACA, LEAD, PromptError, format_prompt
from yfpo.evaluate.grading import gold_answer

EQ = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")


def _arith_ok(step: str) -> bool:
    a, op, b, c = EQ.search(step).groups()
    return (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c)


def test_generator_layouts_and_one_wrong_step(synth_dir):
    pref = [json.loads(l) for l in (synth_dir / "preference.jsonl").read_text().splitlines()]
    assert set(pref[0]) == {"dataset", "prompt", "initial_reason_steps", "chosen", "rejected", "full_chosen",
                            "full_rejected", "answer"}
    for row in pref:
        assert _arith_ok(row["chosen"]) and not _arith_ok(row["rejected"])
        assert row["initial_reason_steps"].startswith(LEAD)
        assert all(_arith_ok(s) for s in row["initial_reason_steps"].splitlines()[1:])
        assert row["full_chosen"].startswith(row["chosen"]) and row["full_rejected"].startswith(row["rejected"])
        assert gold_answer("gsm8k", row["full_chosen"]) == row["answer"] != gold_answer("gsm8k", row["full_rejected"])
    sft = [json.loads(l) for l in (synth_dir / "sft.jsonl").read_text().splitlines()]
    test = [json.loads(l) for l in (synth_dir / "test.jsonl").read_text().splitlines()]
    assert set(sft[0]) == set(test[0]) == {"question", "answer"}
    assert all(s.endswith(f"#### {gold_answer('gsm8k', s)}") for s in (r["answer"] for r in sft))
    train_q = {r["question"] for r in sft} | {r["prompt"] for r in pref}
    assert not train_q & {r["question"] for r in test}


def test_generator_is_deterministic(tmp_path):
    a = synthetic.generate(tmp_path / "a", num_sft=20, num_preference=10, num_test=5, seed=3)
    b = synthetic.generate(tmp_path / "b", num_sft=20, num_preference=10, num_test=5, seed=3)
    assert all(a[k].read_text() == b[k].read_text() for k in a)


def test_the_held_out_slice_lies_beyond_sft_and_its_questions_are_graded_by_step(tmp_path):
    """SFT demonstrates starts 2..max_start only; test and dev cover 2..heldout_max_start; the questions
    pairs are sampled on lie beyond SFT's range only; no file shares a question with another; the step
    checker grades solutions there as anywhere; sft_beyond puts that share of SFT problems beyond."""
    paths = synthetic.generate(tmp_path / "a", num_sft=400, num_preference=20, num_test=300, num_dev=100,
                               num_questions=200, max_start=20, heldout_max_start=30, seed=5)
    rows = {k: [json.loads(l) for l in v.read_text().splitlines()] for k, v in paths.items()}
    start = lambda q: synthetic.question_plan(q)[0]  # noqa: E731
    sft_starts = {start(r["question"]) for r in rows["sft"]}
    assert sft_starts <= set(range(2, 21)) and {start(r["prompt"]) for r in rows["preference"]} <= set(range(2, 21))
    test_starts = [start(r["question"]) for r in rows["test"]]
    assert set(test_starts) <= set(range(2, 31)) and 0.25 < sum(s > 20 for s in test_starts) / len(test_starts) < 0.45, \
        "test: the whole held-out range, a third of it beyond SFT's"
    assert {start(r["question"]) for r in rows["questions"]} == set(range(21, 31)), "questions: beyond SFT's range only"
    questions = [{r["question"] for r in rows[k]} for k in ("sft", "test", "dev", "questions")]
    assert sum(map(len, questions)) == len(set().union(*questions)), "no question in two files"
    for r in rows["questions"][:50] + rows["test"][:50]:
        assert synthetic.first_wrong_step(r["question"], r["answer"]) is None
        plan = synthetic.question_plan(r["question"])
        if plan[0] < 10:
            continue
        wrong = r["answer"].replace(f"{plan[0]} ", f"{plan[0] % 10} ", 1)  # the start model's typical slip: the tens dropped
        assert synthetic.first_wrong_step(r["question"], wrong) == 0
    some = synthetic.generate(tmp_path / "b", num_sft=2000, num_preference=2, num_test=2, num_dev=2, num_questions=2,
                              max_start=20, heldout_max_start=30, sft_beyond=0.05, seed=5)
    beyond = [start(json.loads(l)["question"]) > 20 for l in some["sft"].read_text().splitlines()]
    assert 0.03 < sum(beyond) / len(beyond) < 0.07
    with pytest.raises(ConfigError, match="heldout_max_start=10 is below max_start=20"):  # one line from a CLI
        synthetic.generate(tmp_path / "c", max_start=20, heldout_max_start=10)


def test_alpaca_template_follows_step_dpo(tokenizer):
    assert format_prompt("alpaca", "Q?", "") == ALPACA.format(instruction="Q?")
    assert format_prompt("alpaca", "Q?", "Step 1.\n") == ALPACA.format(instruction="Q?") + "\nStep 1.\n"
    chat = format_prompt("chat", "Q?", "Step 1.\n", tokenizer)
    assert chat.startswith("<|im_start|>user\nQ?\nPlease reason step by step") and chat.endswith("assistant\nStep 1.\n")
    with pytest.raises(PromptError, match="data.template"):
        format_prompt("vicuna", "Q?", "")


def test_truncation_never_lets_the_prompt_eat_the_response():
    prompt, responses = list(range(100)), [list(range(50)), list(range(10))]
    p, (c, r) = truncate(prompt, responses, max_length=64, max_prompt_length=40)
    assert p == prompt[-40:] and c == responses[0][:24] and r == responses[1]
    p, (c, r) = truncate(list(range(5)), responses, max_length=64, max_prompt_length=40)
    assert len(p) == 5 and len(c) == 50  # nothing cut when it fits


def test_encoder_rejects_inconsistent_lengths(tokenizer):
    cfg = compose_cfg("data.max_prompt_length=200", "data.max_length=100")
    with pytest.raises(DataError, match="max_prompt_length=200 must be below"):
        Encoder(cfg.data, tokenizer)


def test_malformed_row_is_reported_with_its_index(tmp_path, synth_dir, tokenizer):
    rows = [json.loads(l) for l in (synth_dir / "preference.jsonl").read_text().splitlines()[:5]]
    rows[3]["rejected"] = None
    with pytest.raises(DataError, match=r"row 3 field 'rejected' must be a string"):
        Encoder(compose_cfg().data, tokenizer).encode_all(rows, "pairs", "bad.jsonl")


def test_local_jsonl_and_parquet_read_alike(tmp_path, synth_dir):
    rows = load_rows(str(synth_dir / "preference.jsonl"))
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    assert load_rows(str(tmp_path / "p.parquet")) == rows
    with pytest.raises(DataError, match="does not exist"):
        load_rows(str(tmp_path / "missing.jsonl"))


def test_subset_is_seeded():
    rows = [{"i": i} for i in range(100)]
    assert subset(rows, 10, 42) == subset(rows, 10, 42) != subset(rows, 10, 43)
    with pytest.raises(DataError, match="subset_size=200"):
        subset(rows, 200, 0)


@pytest.mark.parametrize("mode,eos", [("step", False), ("full", True)])
def test_collate_pairs_share_prompt_positions(synth_dir, tokenizer, mode, eos):
    cfg = compose_cfg(f"data.pair_mode={mode}")
    rows = [json.loads(l) for l in (synth_dir / "preference.jsonl").read_text().splitlines()[:3]]
    enc = Encoder(cfg.data, tokenizer).encode_all(rows, "pairs", "x")
    b = collate(enc, tokenizer.pad_token_id)
    assert b["input_ids"].shape[0] == 6
    chosen, rejected = b["response_mask"].chunk(2)
    first = lambda m: m.float().argmax(-1)
    assert torch.equal(first(chosen), first(rejected))  # responses start at the same position
    key = "chosen" if mode == "step" else "full_chosen"
    assert tokenizer.decode(b["input_ids"][0][b["response_mask"][0]]) == rows[0][key] + (tokenizer.eos_token if eos else "")
    assert (b["attention_mask"].bool() | ~b["response_mask"]).all()


def test_step_checker_rejects_a_right_answer_reached_through_a_wrong_step(synth_dir):
    from yfpo.data.synthetic import first_wrong_step

    q = "Mia has 20 books. Mia finds 5 more, then gives away 7. How many books does Mia have now?"
    assert first_wrong_step(q, "Let's think step by step.\n20 + 5 = 25 books.\n25 - 7 = 18 books.\n#### 18") is None
    assert first_wrong_step(q, "20 + 5 = 27 books.\n27 - 9 = 18 books.\n#### 18") == 0  # right answer, wrong step
    assert first_wrong_step(q, "20 + 6 = 26 books.\n26 - 8 = 18 books.\n#### 18") == 0  # right sums, wrong events
    assert first_wrong_step(q, "20 + 5 = 25 books.\n25 - 7 = 18 books.\n#### 17") == 2
    assert first_wrong_step(q, "20 + 5 = 25 books.\n#### 25") == 1  # a step left out
    assert first_wrong_step(q, "20 + 5 = 25 books.\n25 - 7 = 18 books.") == 2  # never states the answer
    assert first_wrong_step(q, "Let's think step by step.\n#### 18") is None  # the answer alone: no step to be wrong
    assert first_wrong_step(q, "#### 17") == 0 and first_wrong_step(q, "#### 18\n20 + 5 = 25 books.") == 0
    rows = [json.loads(l) for l in (synth_dir / "preference.jsonl").read_text().splitlines()]
    for r in rows:  # the generator's own pairs: chosen all right, rejected wrong exactly at its step
        assert first_wrong_step(r["prompt"], r["initial_reason_steps"] + r["full_chosen"]) is None
        given = len(r["initial_reason_steps"].strip().splitlines()) - 1  # minus the LEAD line
        assert first_wrong_step(r["prompt"], r["initial_reason_steps"] + r["full_rejected"]) == given


def test_a_careless_solver_forgets_the_carry_and_the_slip_propagates():
    import random

    p = synthetic.Problem("q", ("17 + 5 = 22 pens.", "22 + 3 = 25 pens."), (17, 22, 25), (5, 3), "pens")
    slipped = synthetic.slipped(p, random.Random(0), slip_rate=1.0)
    assert slipped.steps == ("17 + 5 = 12 pens.", "12 + 3 = 15 pens.")  # the carry forgotten, then carried on
    question = "Mia has 17 pens. Mia buys 5 more, then gets 3 more. How many pens does Mia have now?"
    assert synthetic.first_wrong_step(question, slipped.solution) == 0 and synthetic.first_wrong_step(question, p.solution) is None
    assert synthetic.slipped(p, random.Random(0), slip_rate=0.0) == p
    assert synthetic.crosses_ten(17, 5) and synthetic.crosses_ten(23, -5) and not synthetic.crosses_ten(22, 3)


def test_a_share_of_sft_demonstrations_states_the_answer_alone(tmp_path):
    """direct_share: that share of SFT rows is "#### N" with the right N; no other file and no question changes."""
    plain = synthetic.generate(tmp_path / "a", num_sft=1000, num_preference=5, num_test=5, num_dev=5, num_questions=5, seed=2)
    mixed = synthetic.generate(tmp_path / "b", num_sft=1000, num_preference=5, num_test=5, num_dev=5, num_questions=5,
                               direct_share=0.3, seed=2)
    assert all(plain[k].read_text() == mixed[k].read_text() for k in plain if k != "sft")
    before, after = ([json.loads(l) for l in files["sft"].read_text().splitlines()] for files in (plain, mixed))
    assert [r["question"] for r in before] == [r["question"] for r in after]
    direct = [(b, a) for b, a in zip(before, after) if a["answer"] != b["answer"]]
    assert 0.25 < len(direct) / len(after) < 0.35
    assert all(a["answer"] == "#### " + b["answer"].rsplit("#### ", 1)[1] for b, a in direct)


def test_the_answer_alone_share_can_depend_on_the_item(tmp_path):
    """direct_item_skew: problems about the first half of the items are answered alone at direct_share +
    skew/2, the others at direct_share - skew/2; the questions do not change; a share outside 0..1 is refused."""
    sizes = dict(num_sft=4000, num_preference=5, num_test=5, num_dev=5, num_questions=5, seed=3)
    plain = synthetic.generate(tmp_path / "a", **sizes)
    skewed = synthetic.generate(tmp_path / "b", direct_share=0.4, direct_item_skew=0.7, **sizes)
    before, after = ([json.loads(l) for l in files["sft"].read_text().splitlines()] for files in (plain, skewed))
    assert [r["question"] for r in before] == [r["question"] for r in after]
    item = lambda q: next(i for i in synthetic.ITEMS if f" {i}." in q)  # noqa: E731  ("has 5 pens.")
    for direct, share in ((True, 0.75), (False, 0.05)):
        rows = [r for r in after if (item(r["question"]) in synthetic.DIRECT_ITEMS) == direct]
        alone = sum(r["answer"].startswith("####") for r in rows) / len(rows)
        assert abs(alone - share) < 0.04, (direct, alone)
    with pytest.raises(ConfigError, match=r"direct_share=0.4 with direct_item_skew=0.9 gives the second half .* -0.05, outside 0..1"):
        synthetic.generate(tmp_path / "c", direct_share=0.4, direct_item_skew=0.9, **sizes)


def test_cached_synthetic_data_follows_its_settings(cache):
    """The directory is named by no setting: a changed synthetic.* (e.g. slip_rate) is refused, since
    runs made from the old files would silently change under it; the same settings reuse the files,
    and the suggested directory of its own generates them."""
    from yfpo.core.artefacts import StaleArtefactError
    from yfpo.assets.prepare import synthetic_files

    args = ["synthetic.num_sft=40", "synthetic.num_preference=8", "synthetic.num_test=8"]
    paths = synthetic_files(compose_cfg(*args).synthetic)
    clean, test, stamp = paths["sft"].read_text(), paths["test"].read_text(), paths["sft"].stat().st_mtime_ns
    assert synthetic_files(compose_cfg(*args).synthetic) == paths and paths["sft"].stat().st_mtime_ns == stamp
    with pytest.raises(StaleArtefactError, match=r"slip_rate: made with '0.0', now '1.0'") as refused:
        synthetic_files(compose_cfg(*args, "synthetic.slip_rate=1.0").synthetic)
    fix = str(refused.value).split("(synthetic.dir=")[1].split(")")[0].replace("NAME", "slips")
    slipped = synthetic_files(compose_cfg(*args, "synthetic.slip_rate=1.0", f"synthetic.dir={fix}").synthetic)
    assert slipped["sft"].read_text() != clean and slipped["test"].read_text() == test  # slips touch SFT demonstrations only
    assert paths["sft"].read_text() == clean
