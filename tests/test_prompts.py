"""Prompt templates, few-shot prompts and default stops (yfpo/data/prompts.py)."""

import pytest

from yfpo.data import prompts
from yfpo.evaluate.grading import extract_answer
from yfpo.data.prompts import FEWSHOT, PromptError, default_stops, eval_prompt, exemplars, stop_token_ids


def test_zero_shot_is_the_training_prompt(tokenizer):
    assert eval_prompt("alpaca", "Q?") == prompts.format_prompt("alpaca", "Q?", None)
    assert eval_prompt("chat", "Q?", tokenizer) == prompts.format_prompt("chat", "Q?", None, tokenizer)
    with pytest.raises(PromptError, match="eval.template='vicuna'"):
        eval_prompt("vicuna", "Q?")


@pytest.mark.parametrize("fewshot_set,marker", [("gsm8k", "\nA: "), ("minerva_math", "\n\nSolution:\n")])
def test_fewshot_prompt_holds_k_exemplars_in_a_fixed_order(fewshot_set, marker):
    for k in range(1, len(FEWSHOT[fewshot_set]) + 1):
        p = eval_prompt("alpaca", "How many?", None, k, fewshot_set)
        assert p == eval_prompt("alpaca", "How many?", None, k, fewshot_set)  # deterministic
        assert p.count(marker) == k  # k worked answers; the query ends without one
        shots = exemplars(fewshot_set, k)
        assert [p.index(s.question) for s in shots] == sorted(p.index(s.question) for s in shots)
        assert not any(s.question in p for s in FEWSHOT[fewshot_set][k:])
        assert p.endswith("How many?\nA:" if fewshot_set == "gsm8k" else "How many?\n\nSolution:")
        assert "### Instruction" not in p  # base-model few-shot text, not the alpaca wrapper


def test_exemplar_answers_are_what_the_grader_extracts():
    for fewshot_set, layout in prompts.FEWSHOT_LAYOUTS.items():
        task = "gsm8k" if fewshot_set == "gsm8k" else "math500"
        for s in FEWSHOT[fewshot_set]:
            shot = layout.shot.format(question=s.question, reasoning=s.reasoning, answer=s.answer)
            assert extract_answer(task, shot) == s.answer


def test_chat_fewshot_puts_exemplars_in_earlier_turns(tokenizer):
    p = eval_prompt("chat", "How many?", tokenizer, 3, "gsm8k")
    assert p.count("<|im_start|>user") == 4 and p.count("<|im_start|>assistant") == 4
    assert p.count("\\boxed{") == 3 + 4  # three boxed exemplar answers, four boxed instructions
    assert p.endswith("<|im_start|>assistant\n" + prompts.LEAD)


def test_bad_fewshot_settings_name_the_key():
    with pytest.raises(PromptError, match=r"eval.num_fewshot=5: .* 4 exemplars"):
        eval_prompt("alpaca", "Q?", None, 5, "minerva_math")
    with pytest.raises(PromptError, match="eval.fewshot_set='mmlu'"):
        eval_prompt("alpaca", "Q?", None, 1, "mmlu")
    with pytest.raises(PromptError, match="eval.stop"):
        prompts.check_stops("### Instruction")  # a string, not a list


def test_default_stops_per_layout():
    assert "### Instruction" in default_stops("alpaca") and default_stops("chat") == []
    assert default_stops("alpaca", 4, "gsm8k") == list(prompts.FEWSHOT_LAYOUTS["gsm8k"].stops)
    assert default_stops("chat", 4, "gsm8k") == []  # chat exemplars are turns: the turn's end stops it
    # no stop string occurs inside the prompts' own worked examples or a usual solution
    for layout in prompts.FEWSHOT_LAYOUTS.values():
        for s in FEWSHOT["gsm8k"] + FEWSHOT["minerva_math"]:
            assert not any(stop in s.reasoning for stop in layout.stops + prompts.TEMPLATE_STOPS["alpaca"])


def test_stop_token_ids(tokenizer, tmp_path):
    assert stop_token_ids("alpaca", tokenizer) == [tokenizer.eos_token_id]
    vocab = tokenizer.get_vocab()
    expected = sorted({tokenizer.eos_token_id} | {vocab[t] for t in prompts.CHAT_END_OF_TURN if t in vocab})
    assert stop_token_ids("chat", tokenizer) == expected and vocab["<|im_end|>"] in expected
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [7, 9]}')
    assert {7, 9} <= set(stop_token_ids("alpaca", tokenizer, tmp_path))


def test_the_fewshot_sets_are_the_choices_the_schema_accepts():
    """eval.fewshot_set is refused at composition outside FewshotSet: a set added to FEWSHOT needs its name there."""
    from yfpo.core.schema import FewshotSet

    assert set(prompts.FEWSHOT) == set(prompts.FEWSHOT_LAYOUTS) == {f.value for f in FewshotSet}

