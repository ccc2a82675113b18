"""Answer extraction and grading, usable on its own.

Tasks ``gsm8k`` and ``synthetic`` (numeric answers). ``grade`` never raises: a completion with no
recognisable answer is simply wrong.
"""

from __future__ import annotations

import re

TASKS = ("gsm8k", "synthetic")
_NUM = r"-?[$]?\d[\d,]*(?:\.\d+)?"
_PATTERNS = [
    re.compile(r"\\boxed\{([^{}]*)\}"),
    re.compile(r"[Tt]he (?:final )?answer is[:\s]*(" + _NUM + ")"),
    re.compile(r"####\s*(" + _NUM + ")"),
]
_LAST_NUMBER = re.compile(_NUM)


def _number(text: str) -> float | None:
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    m = re.fullmatch(r"-?\d+(?:\.\d+)?", cleaned)
    return float(cleaned) if m else None


def extract_answer(task: str, completion: str) -> str | None:
    """The answer a completion commits to: ``\\boxed{}``, "The answer is", ``####``, else the last number.

    The first pattern that matches wins and its last occurrence is taken.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: choose one of {TASKS}")
    for pattern in _PATTERNS:
        found = pattern.findall(completion)
        if found:
            return found[-1].strip()
    numbers = _LAST_NUMBER.findall(completion)
    return numbers[-1] if numbers else None


def gold_answer(task: str, solution: str) -> str:
    """The gold answer of a GSM8K-layout solution: the text after its last ``####``."""
    return solution.rsplit("####", 1)[-1].strip()


def grade(task: str, completion: str, gold: str) -> bool:
    """True when the extracted answer equals ``gold`` numerically (commas, ``$`` and a final period ignored)."""
    try:
        pred = extract_answer(task, completion)
        if pred is None:
            return False
        p, g = _number(pred), _number(gold)
        return p is not None and g is not None and abs(p - g) < 1e-6
    except Exception:  # grading must never take down an evaluation run
        return False
