"""Synthetic GSM8K-style word problems, so the whole pipeline runs with no network.

Each problem is a start amount followed by ``num_steps`` add/subtract events. SFT sees start
amounts up to ``max_start``. The held-out problems (test, dev and the questions pairs are sampled
on) go up to ``heldout_max_start``: equal to it by default, or above it for a slice beyond anything
SFT demonstrated. With ``direct_share``, part of the SFT demonstrations states the answer alone
(with ``direct_item_skew``, more of those about some items than others). A small model cannot add
several numbers in one token, so its answers alone are mostly wrong where its worked solutions are
right, and its own verified samples can teach it to work the problem (the demo's design,
docs/demo.md). Five files are written in the field layouts of the real datasets:

- ``sft.jsonl``: GSM8K layout, ``question`` and ``answer`` (a worked solution ending in ``#### N``).
  With ``slip_rate > 0`` the SFT demonstrations are those of a careless solver: a step whose
  result crosses a multiple of ten forgets the carry or borrow with that probability
  (``17 + 5 = 12``), and the slip propagates to the final answer. With ``direct_share > 0``, that
  share of them states the answer alone (``#### N``), as answer-only rows in a real SFT mix do;
- ``test.jsonl`` and ``dev.jsonl`` (for choosing checkpoints): GSM8K layout, the whole held-out
  range (with what lies beyond SFT's, when there is such a slice), always right;
- ``questions.jsonl``: training questions for on-policy pairs (from the range beyond SFT's only,
  when there is one), with worked solutions (GSM8K layout) that no stage trains on: the pairs stage
  grades against them;
- ``preference.jsonl``: Math-Step-DPO-10K layout (``dataset``, ``prompt``,
  ``initial_reason_steps``, ``chosen``, ``rejected``, ``full_chosen``, ``full_rejected``,
  ``answer``). The rejected step has exactly one arithmetic error; ``full_rejected`` carries the
  error through to a wrong final answer, as a model that made it would.

Problems are drawn from one seeded RNG; test questions never appear in the training files.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from yfpo.core.artefacts import atomic_write
from yfpo.core.errors import ConfigError
from yfpo.data.prompts import LEAD

NAMES = ["Mia", "Tom", "Ana", "Sam", "Leo", "Zoe", "Max", "Ivy", "Ben", "Eva"]
ITEMS = ["apples", "coins", "books", "shells", "cards", "pens", "stamps", "marbles"]
GAIN = ["finds {n} more", "buys {n} more", "gets {n} more"]
LOSS = ["gives away {n}", "loses {n}", "sells {n}"]
DIRECT_ITEMS = frozenset(ITEMS[: len(ITEMS) // 2])  # answered alone more often with direct_item_skew > 0


@dataclass(frozen=True)
class Problem:
    question: str
    steps: tuple[str, ...]  # worked steps, without the final "#### N" line
    values: tuple[int, ...]  # running total after each step (values[0] is the start)
    deltas: tuple[int, ...]  # signed change of each step
    item: str

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def solution(self) -> str:
        return "\n".join(self.steps) + f"\n#### {self.answer}"


def _step_text(prev: int, delta: int, result: int, item: str) -> str:
    op = "+" if delta >= 0 else "-"
    return f"{prev} {op} {abs(delta)} = {result} {item}."


def crosses_ten(value: int, delta: int) -> bool:
    """Whether ``value + delta`` needs a carry or a borrow (its tens digit differs from ``value``'s)."""
    return value // 10 != (value + delta) // 10


def slipped(p: Problem, rng: random.Random, slip_rate: float) -> Problem:
    """``p`` as a careless solver writes it: at each step that crosses a ten, with probability
    ``slip_rate``, the carry or borrow is forgotten (the tens digit is kept: ``17 + 5 = 12``,
    ``23 - 5 = 28``); later steps carry on from the slipped value."""
    value, values = p.values[0], [p.values[0]]
    for delta in p.deltas:
        result = value + delta
        if crosses_ten(value, delta) and rng.random() < slip_rate:
            result = (value // 10) * 10 + result % 10
        values.append(result)
        value = result
    steps = tuple(_step_text(values[k], p.deltas[k], values[k + 1], p.item) for k in range(len(p.deltas)))
    return Problem(p.question, steps, tuple(values), p.deltas, p.item)


def make_problem(rng: random.Random, num_steps: int, max_start: int, max_delta: int, min_start: int = 2) -> Problem:
    """One problem, starting at ``min_start..max_start``, whose running total stays non-negative."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(min_start, max_start)
    values, deltas, events = [value], [], []
    for _ in range(num_steps):
        n = rng.randint(1, max_delta)
        if value - n >= 0 and rng.random() < 0.5:
            delta, event = -n, rng.choice(LOSS)
        else:
            delta, event = n, rng.choice(GAIN)
        events.append(event.format(n=n))
        deltas.append(delta)
        value += delta
        values.append(value)
    question = f"{name} has {values[0]} {item}. {name} " + ", then ".join(events) + f". How many {item} does {name} have now?"
    steps = tuple(_step_text(values[k], deltas[k], values[k + 1], item) for k in range(num_steps))
    return Problem(question, steps, tuple(values), tuple(deltas), item)


STEP = re.compile(r"^\s*(\d+)\s*([+-])\s*(\d+)\s*=\s*(\d+)\b")
FINAL = re.compile(r"^####\s*(-?\d+)\s*$")
EVENT = re.compile("|".join(t.replace("{n}", r"\d+") for t in GAIN + LOSS))
LOSS_VERBS = tuple(t.split(" {n}")[0] for t in LOSS)


def question_plan(question: str) -> tuple[int, list[int]] | None:
    """``(start, signed deltas)`` of a synthetic question, or None if it is not one."""
    start = re.search(r" has (\d+) ", question)
    if not start:
        return None
    deltas = []
    for event in EVENT.findall(question[start.end():]):
        n = int(re.search(r"\d+", event).group())
        deltas.append(-n if event.startswith(LOSS_VERBS) else n)
    return int(start.group(1)), deltas


def first_wrong_step(question: str, solution: str) -> int | None:
    """The index of the first wrong line of a worked solution to a synthetic problem, or None if
    every line is right. Step ``k`` must read ``a op b = c`` with ``a`` the question's amount (then
    the previous result), ``op b`` the question's ``k``-th event, and ``a op b == c``; the last line
    ``#### N`` must repeat the last result. A line that fits none of these counts as wrong. So a
    right final answer reached through a wrong step (``20 + 5 = 27``, ``27 - 7 = 20``) is caught.
    The answer alone (``#### N``, no steps written) has nothing wrong but its answer.
    The leading "Let's think step by step." line is skipped."""
    plan = question_plan(question)
    if plan is None:
        return 0
    expected, deltas = plan
    lines = [l for l in solution.strip().splitlines() if l.strip() and l.strip() != LEAD.strip()]
    for i, line in enumerate(lines):
        final = FINAL.match(line.strip())
        if final:
            alone = i == 0  # the answer without steps
            target = expected + sum(deltas) if alone else expected
            right = (alone or i == len(deltas)) and i == len(lines) - 1 and int(final.group(1)) == target
            return None if right else i
        m = STEP.match(line)
        if not m or i >= len(deltas):
            return i
        a, sign, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        delta = b if sign == "+" else -b
        if a != expected or delta != deltas[i] or a + delta != c:
            return i
        expected = c
    return len(lines)  # no "#### N" line: the solution never states its answer


def _wrong(rng: random.Random, right: int) -> int:
    """A plausible arithmetic slip: off by a small amount, never equal, never negative."""
    while True:
        wrong = right + rng.choice([-10, -2, -1, 1, 2, 10])
        if wrong >= 0 and wrong != right:
            return wrong


def preference_row(rng: random.Random, p: Problem) -> dict:
    """A Math-Step-DPO-10K row: the first wrong step is step ``k`` of the rejected solution."""
    k = rng.randrange(len(p.steps))
    wrong = _wrong(rng, p.values[k + 1])
    bad_steps = [_step_text(p.values[k], p.deltas[k], wrong, p.item)]
    value = wrong
    for j in range(k + 1, len(p.steps)):  # the error propagates with otherwise correct arithmetic
        bad_steps.append(_step_text(value, p.deltas[j], value + p.deltas[j], p.item))
        value += p.deltas[j]
    # Like Math-Step-DPO-10K, the given steps start with the "Let's think step by step." line,
    # which is also how SFT and evaluation prompts start the response (yfpo.data.prompts.format_prompt).
    prefix = LEAD + "".join(s + "\n" for s in p.steps[:k])
    return {
        "dataset": "synthetic",
        "prompt": p.question,
        "initial_reason_steps": prefix,
        "chosen": p.steps[k],
        "rejected": bad_steps[0],
        "full_chosen": "\n".join(p.steps[k:]) + f"\n#### {p.answer}",
        "full_rejected": "\n".join(bad_steps) + f"\n#### {value}",
        "answer": str(p.answer),
    }


def generate(
    out_dir: str | Path,
    num_sft: int = 20000,
    num_preference: int = 4000,
    num_test: int = 500,
    num_dev: int = 500,
    num_questions: int = 2000,
    num_steps: int = 2,
    max_start: int = 20,
    heldout_max_start: int | None = None,
    sft_beyond: float = 0.0,
    max_delta: int = 9,
    slip_rate: float = 0.0,
    direct_share: float = 0.0,
    direct_item_skew: float = 0.0,
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``sft.jsonl``, ``preference.jsonl``, ``test.jsonl``, ``dev.jsonl`` and ``questions.jsonl``
    under ``out_dir``. SFT and preference problems start at 2..``max_start`` (with ``sft_beyond``, that
    share of SFT problems at ``max_start``+1..``heldout_max_start`` instead); test and dev at
    2..``heldout_max_start`` (None: ``max_start``); the questions for on-policy pairs beyond SFT's
    range, at ``max_start``+1..``heldout_max_start`` (at 2..``max_start`` when there is no such range).
    ``slip_rate``: the share of ten-crossing steps whose carry the SFT demonstrations forget (see
    :func:`slipped`). ``direct_share``: the share of SFT demonstrations that state the answer alone
    (``#### N``), with no worked steps. ``direct_item_skew``: how much more often problems about the
    first half of :data:`ITEMS` are answered alone than the others (their shares are ``direct_share``
    plus and minus half of it), as when answer-only rows come mostly from sources on some topics.

    Returns the five paths. Writing is atomic per file, so an interrupted run leaves no
    half-written file behind.
    """
    heldout = max_start if heldout_max_start is None else heldout_max_start
    # the answer-alone share of problems about DIRECT_ITEMS (True) and about the other items (False)
    alone_share = {True: direct_share + direct_item_skew / 2, False: direct_share - direct_item_skew / 2}
    for direct, half in ((True, "first"), (False, "second")):
        if not 0 <= alone_share[direct] <= 1:
            raise ConfigError(f"direct_share={direct_share} with direct_item_skew={direct_item_skew} gives the {half} "
                              f"half of the items an answer-alone share of {alone_share[direct]:g}, outside 0..1")
    if heldout < max_start:
        raise ConfigError(f"heldout_max_start={heldout} is below max_start={max_start}: the held-out range contains SFT's")
    beyond_range = (max_start + 1, heldout) if heldout > max_start else (2, max_start)
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()

    def fresh(n: int, low: int, high: int, beyond: float = 0.0) -> list[Problem]:
        """``n`` new problems starting at ``low..high``; with probability ``beyond`` each in the beyond range."""
        problems = []
        while len(problems) < n:
            lo, hi = beyond_range if beyond and rng.random() < beyond else (low, high)
            p = make_problem(rng, num_steps, hi, max_delta, min_start=lo)
            if p.question not in seen:
                seen.add(p.question)
                problems.append(p)
        return problems

    test = fresh(num_test, 2, heldout)  # drawn first so that training files can never contain them
    sft, pref = fresh(num_sft, 2, max_start, beyond=sft_beyond), fresh(num_preference, 2, max_start)
    slips = random.Random(seed + 1)  # its own stream: slip_rate changes no question
    styles = random.Random(seed + 2)  # likewise for direct_share

    def demonstration(p: Problem) -> str:
        shown = slipped(p, slips, slip_rate)
        return f"#### {shown.answer}" if styles.random() < alone_share[p.item in DIRECT_ITEMS] else shown.solution

    files = {
        "test": [{"question": p.question, "answer": p.solution} for p in test],
        "sft": [{"question": p.question, "answer": demonstration(p)} for p in sft],
        "preference": [preference_row(rng, p) for p in pref],
        "dev": [{"question": p.question, "answer": p.solution} for p in fresh(num_dev, 2, heldout)],
        "questions": [{"question": p.question, "answer": p.solution} for p in fresh(num_questions, *beyond_range)],
    }
    paths = {}
    for name, rows in files.items():
        paths[name] = out / f"{name}.jsonl"
        atomic_write(paths[name], "".join(json.dumps(r) + "\n" for r in rows))
    return paths
