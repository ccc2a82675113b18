"""Prompt templates and their stops: training, pair generation and evaluation prompts, few-shot exemplars.

Two templates (``model.template``):

- ``alpaca``: Step-DPO's prompt for base models; evaluation starts the response with :data:`LEAD`.
- ``chat``: the tokenizer's chat template, the question plus the ``\\boxed{}`` instruction.

Evaluation may prefix ``eval.num_fewshot`` fixed worked examples (:data:`FEWSHOT`, written for this
project in the GSM8K 8-shot chain-of-thought and Minerva-MATH 4-shot layouts). Each prompt
layout has default stop strings, and chat models stop at their end-of-turn tokens
(:func:`default_stops`, :func:`stop_token_ids`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from yfpo.core.errors import ConfigError
from yfpo.core.schema import Template

# Step-DPO's prompt for base models; its evaluation prompt starts the response with LEAD.
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
BOXED = "{instruction}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
LEAD = "Let's think step by step.\n"
TEMPLATES = tuple(t.value for t in Template)  # model.template, data.template, eval.template

# Where a zero-shot completion is over (used when eval.stop is null). A base model given the
# alpaca prompt answers, then keeps writing the format it has seen: a new "### Instruction:"
# block with an invented question (whose numbers the last-number rule would grade), a new
# "### Response:", the alpaca preamble again, or blank lines before unrelated text. None of
# these strings occurs inside a worked solution. Chat models end their turn with a token
# instead (CHAT_END_OF_TURN), so they need no stop string.
TEMPLATE_STOPS = {
    "alpaca": ("### Instruction", "### Response", "Below is an instruction that describes a task", "\n\n\n"),
    "chat": (),
}
# End-of-turn / end-of-text tokens of the chat families this project supports (Qwen2 and
# SmolLM2: <|im_end|>, <|endoftext|>; Llama 3.x: <|eot_id|>, <|eom_id|>, <|end_of_text|>).
# Only those in the tokenizer's vocabulary are used.
CHAT_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


class PromptError(ConfigError):
    """A prompt setting that cannot be used; the message names the config key and the fix."""


def _template_error(template: str, key: str) -> PromptError:
    return PromptError(f"{key}={template!r}: choose one of {TEMPLATES}")


def format_prompt(template: str, question: str, steps: str | None, tokenizer: Any = None,
                  key: str = "data.template") -> str:
    """The text that precedes a response.

    ``steps`` are the already-given reasoning steps (``initial_reason_steps``); ``None`` means a
    bare question (SFT or evaluation), which starts the response with Step-DPO's "Let's think
    step by step." line so that SFT, preference pairs and evaluation share one boundary.
    ``key`` is the config key that chose ``template``, named in the error for an unknown one.
    """
    steps = LEAD if steps is None else steps
    if template == "alpaca":
        return ALPACA.format(instruction=question) + ("\n" + steps if steps else "")
    if template == "chat":
        messages = [{"role": "user", "content": BOXED.format(instruction=question)}]
        head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return head + steps
    raise _template_error(template, key)


# ----------------------------------------------------------------------------------------------
# Few-shot exemplars (evaluation of base models)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exemplar:
    """One worked example: the question, its reasoning (no final-answer line) and the answer."""

    question: str
    reasoning: str
    answer: str


@dataclass(frozen=True)
class FewshotLayout:
    """How a few-shot set is written: one ``shot`` per exemplar, joined by ``separator``, then the
    ``query`` for the problem; ``stops`` end a completion that starts the next example."""

    shot: str  # fields {question}, {reasoning}, {answer}
    query: str  # field {question}; ends where the model's answer starts
    separator: str
    stops: tuple[str, ...]


# Written for this project (not the published exemplar texts), in the published conventions:
# GSM8K chain-of-thought ("Q: ... A: <reasoning> The answer is N.", 8 shots) and Minerva MATH
# ("Problem: ... Solution: ... Final Answer: The final answer is $X$. I hope it is correct.",
# 4 shots). Each set is used in this fixed order; k shots are the first k.
FEWSHOT: dict[str, tuple[Exemplar, ...]] = {
    "gsm8k": (
        Exemplar("A baker fills 6 trays with 12 muffins each. She sells 50 muffins in the morning. "
                 "How many muffins are left?",
                 "The baker makes 6 * 12 = 72 muffins. After selling 50, she has 72 - 50 = 22 muffins left.", "22"),
        Exemplar("Tom reads 15 pages on Monday and twice as many pages on Tuesday. His book has 120 pages. "
                 "How many pages does he still have to read?",
                 "On Tuesday Tom reads 2 * 15 = 30 pages. So far he has read 15 + 30 = 45 pages. "
                 "He still has 120 - 45 = 75 pages to read.", "75"),
        Exemplar("A bike costs $240. Maria has saved $90 and saves $25 more each week. How many weeks "
                 "does she need to save before she can buy the bike?",
                 "Maria still needs 240 - 90 = 150 dollars. At 25 dollars a week that takes 150 / 25 = 6 weeks.",
                 "6"),
        Exemplar("A garden has 4 rows of tomato plants with 9 plants in each row. Each plant gives 3 "
                 "tomatoes. How many tomatoes does the garden give?",
                 "There are 4 * 9 = 36 plants. They give 36 * 3 = 108 tomatoes.", "108"),
        Exemplar("A school bus holds 40 students. 172 students go on a trip. How many buses does the "
                 "school need?",
                 "172 / 40 = 4.3, so 4 buses hold only 160 students and the other 12 need one more bus. "
                 "The school needs 4 + 1 = 5 buses.", "5"),
        Exemplar("Lena buys 3 notebooks at $2.50 each and a pen for $1.75. She pays with a $20 bill. "
                 "How much change does she get?",
                 "The notebooks cost 3 * 2.50 = 7.50 dollars. With the pen she spends 7.50 + 1.75 = 9.25 "
                 "dollars. Her change is 20 - 9.25 = 10.75 dollars.", "10.75"),
        Exemplar("A train travels at 80 km per hour for 2.5 hours and then at 60 km per hour for 1.5 "
                 "hours. How many kilometres does it travel in total?",
                 "The first part covers 80 * 2.5 = 200 km and the second 60 * 1.5 = 90 km. In total the "
                 "train travels 200 + 90 = 290 km.", "290"),
        Exemplar("A shop had 250 shirts. It sold 40% of them in July and 30 more in August. How many "
                 "shirts does the shop have left?",
                 "In July the shop sold 250 * 40 / 100 = 100 shirts. After August it has sold "
                 "100 + 30 = 130 shirts, so 250 - 130 = 120 are left.", "120"),
    ),
    "minerva_math": (
        Exemplar("Solve for $x$: $3x - 7 = 11$.",
                 "Adding 7 to both sides gives $3x = 18$, and dividing by 3 gives $x = 6$.", "6"),
        Exemplar("What is the remainder when $2^{10}$ is divided by $7$?",
                 "Since $2^3 = 8 \\equiv 1 \\pmod 7$, we have $2^{10} = (2^3)^3 \\cdot 2 \\equiv 1^3 \\cdot 2 "
                 "= 2 \\pmod 7$.", "2"),
        Exemplar("Compute $\\frac{3}{4} + \\frac{5}{6}$. Express your answer as a common fraction.",
                 "With the common denominator 12, $\\frac{3}{4} + \\frac{5}{6} = \\frac{9}{12} + \\frac{10}{12} "
                 "= \\frac{19}{12}$.", "\\frac{19}{12}"),
        Exemplar("In how many ways can a committee of 2 people be chosen from a group of 6 people?",
                 "The order of the two members does not matter, so the count is "
                 "$\\binom{6}{2} = \\frac{6 \\cdot 5}{2} = 15$.", "15"),
    ),
}
FEWSHOT_LAYOUTS = {
    # A new "Q:" line starts the next example; the exemplars end every answer with "The answer is N."
    "gsm8k": FewshotLayout("Q: {question}\nA: {reasoning} The answer is {answer}.", "Q: {question}\nA:", "\n\n",
                           ("\nQ:", "\n\n\n")),
    "minerva_math": FewshotLayout(
        "Problem:\n{question}\n\nSolution:\n{reasoning}\nFinal Answer: The final answer is ${answer}$. "
        "I hope it is correct.", "Problem:\n{question}\n\nSolution:", "\n\n", ("\nProblem:", "\n\n\n")),
}
# The chat template's exemplar turns answer as the zero-shot instruction asks, in \boxed{}.
CHAT_SHOT_ANSWER = "{reasoning}\nThe final answer is $\\boxed{{{answer}}}$."


def exemplars(fewshot_set: str, k: int) -> tuple[Exemplar, ...]:
    """The first ``k`` exemplars of ``fewshot_set`` (fixed order, so prompts are deterministic)."""
    if fewshot_set not in FEWSHOT:
        raise PromptError(f"eval.fewshot_set={fewshot_set!r}: choose one of {tuple(FEWSHOT)}")
    shots = FEWSHOT[fewshot_set]
    if not 0 <= k <= len(shots):
        raise PromptError(f"eval.num_fewshot={k}: the {fewshot_set!r} set has {len(shots)} exemplars; "
                          f"choose 0..{len(shots)}")
    return shots[:k]


def eval_prompt(template: str, question: str, tokenizer: Any = None, num_fewshot: int = 0,
                fewshot_set: str | None = None) -> str:
    """The evaluation prompt of one problem.

    ``num_fewshot=0``: the zero-shot training prompt (:func:`format_prompt` with no steps).
    ``num_fewshot=k``: ``alpaca`` (base models) gets the plain few-shot text of ``fewshot_set``'s
    layout — k worked examples, then the question — as published base-model figures use;
    ``chat`` gets the k examples as earlier user/assistant turns, then the zero-shot turn.
    """
    if num_fewshot == 0:
        return format_prompt(template, question, None, tokenizer, key="eval.template")
    shots = exemplars(fewshot_set, num_fewshot)
    if template == "alpaca":
        layout = FEWSHOT_LAYOUTS[fewshot_set]
        parts = [layout.shot.format(question=s.question, reasoning=s.reasoning, answer=s.answer) for s in shots]
        return layout.separator.join(parts + [layout.query.format(question=question)])
    if template == "chat":
        messages = []
        for s in shots:
            messages += [{"role": "user", "content": BOXED.format(instruction=s.question)},
                         {"role": "assistant", "content": LEAD + CHAT_SHOT_ANSWER.format(reasoning=s.reasoning,
                                                                                         answer=s.answer)}]
        messages.append({"role": "user", "content": BOXED.format(instruction=question)})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + LEAD
    raise _template_error(template, "eval.template")


def default_stops(template: str, num_fewshot: int = 0, fewshot_set: str | None = None) -> list[str]:
    """Stop strings for a prompt layout (``eval.stop: null``): the template's, or with few-shot
    alpaca prompts the few-shot layout's (a completion that starts the next example is over)."""
    if template not in TEMPLATE_STOPS:
        raise _template_error(template, "eval.template")
    if num_fewshot and template == "alpaca":
        exemplars(fewshot_set, num_fewshot)  # validates the set and k
        return list(FEWSHOT_LAYOUTS[fewshot_set].stops)
    return list(TEMPLATE_STOPS[template])


def stop_token_ids(template: str, tokenizer: Any, model_dir: str | Path | None = None) -> list[int]:
    """Token ids that end a completion (``eval.stop_token_ids: null``), sorted.

    Always the tokenizer's EOS and the EOS ids of the model's ``generation_config.json`` (which
    lists e.g. Qwen2.5-Instruct's and Llama-3's end-of-turn tokens); for ``chat`` also every
    :data:`CHAT_END_OF_TURN` token the vocabulary has.
    """
    ids: set[int] = set()
    eos = tokenizer.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    config = Path(model_dir) / "generation_config.json" if model_dir is not None else None
    if config is not None and config.is_file():
        gen_eos = json.loads(config.read_text()).get("eos_token_id")
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    if template == "chat":
        vocab = tokenizer.get_vocab()  # (convert_tokens_to_ids maps an unknown token to <unk>)
        ids.update(vocab[t] for t in CHAT_END_OF_TURN if t in vocab)
    return sorted(ids)


def check_stops(stop: Sequence[str] | None, key: str = "eval.stop") -> list[str] | None:
    """``stop`` as a list of non-empty strings (None stays None: the template default)."""
    if stop is None:
        return None
    if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
        raise PromptError(f"{key}={stop!r}: give null (the template's default) or a list of non-empty strings, "
                          f"e.g. {key}='[\"### Instruction\"]'")
    return list(stop)
