"""Answer extraction and grading, usable on its own.

Tasks ``gsm8k`` and ``synthetic`` have numeric answers; ``math500`` has LaTeX answers, compared with
math-verify and then a normalised-string comparison. ``grade`` never raises on its string inputs (a
completion with no recognisable answer is simply wrong); an unknown task is a caller bug and raises
``ValueError``.

Numeric tasks are scored three ways (:func:`score`):

- ``headline`` (:func:`grade`, the paper-style tables): the answer after the last final-answer
  marker (``\\boxed{}``, "the answer is", ``####``), else the last number;
- ``strict``: only a marker counts (no marker: wrong), as lm-eval's ``strict-match``;
- ``flexible``: the last number-like token, with lm-eval's ``flexible-extract`` regex, whatever
  the markers say.

``math500`` has one convention (math-verify on the last ``\\boxed{}``, else "the answer is"); its
strict and flexible scores are None.
"""

from __future__ import annotations

import re
from decimal import Decimal

from yfpo.core.errors import ConfigError

TASKS = ("gsm8k", "synthetic", "math500")

# A number; a "-" counts as a sign only where it cannot be a binary minus ("5-3" gives 5 and 3).
# Thousands groups must be exactly three digits, so "1,000" is one number and "1,2" two.
_NUM = re.compile(r"(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?")
# LaTeX group delimiters; escaped braces (\{ \}) are literal characters, not groups.
_TOKEN = re.compile(r"\\[{}]|\\(?:boxed|fbox)(?![a-zA-Z])\s*\{?|[{}]")
_BARE = re.compile(r"[^\s{}$]+")  # the argument of a brace-less ``\boxed 5``
_ANSWER_IS = re.compile(r"\banswer is\b\s*:?\s*", re.IGNORECASE)
_MAX_VERIFY_CHARS = 1000  # longer answers skip sympy, which has no timeout here (see _too_costly)
_POWER_TOKEN = re.compile(r"\\[a-zA-Z]+|\d+|.", re.DOTALL)  # an exponent written without a group
# lm-eval's gsm8k "flexible-extract": the last match of a number-like run (it also matches e.g. "1.2.3"
# or "$,", which then grade wrong, as there); "$", "," and a trailing "." are dropped before comparing.
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def _check(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"task={task!r}: choose one of {TASKS}")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` (nested braces balanced) or ``\\boxed 5``.

    One pass with a stack, so many unclosed ``\\boxed{`` cannot make it quadratic. "Last" means the
    last to start, which also picks the inner box of ``\\boxed{\\boxed{5}}``.
    """
    best, best_start = None, -1
    stack: list[int | None] = []  # per open "{": where its content starts if it opens a box
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok[:2] in ("\\b", "\\f"):
            if tok.endswith("{"):
                stack.append(m.end())
            elif (bare := _BARE.match(text, m.end())) and m.start() > best_start:
                best, best_start = bare.group().rstrip("."), m.start()  # "\\boxed 5." ends a sentence
        elif tok == "{":
            stack.append(None)
        elif tok == "}" and stack:
            start = stack.pop()
            if start is not None and start > best_start:
                best, best_start = text[start:m.start()], start
    return (best.strip() or None) if best is not None else None


def _answer_is(text: str) -> str | None:
    """What follows the last "the answer is": a ``$..$``/``\\(..\\)``/``\\[..\\]`` span, else the rest of its sentence."""
    last = None
    for last in _ANSWER_IS.finditer(text):  # noqa: B007 (the loop only finds the last match)
        pass
    if last is None:
        return None
    rest = text[last.end():]
    line = rest.split("\n", 1)[0]
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(open_):
            end = rest.find(close, len(open_))
            ans = rest[len(open_):end] if end >= 0 else line[len(open_):]
            break
    else:  # a sentence ends at a period followed by space, unlike a decimal point
        ans = re.split(r"\.(?=\s|$)", line, maxsplit=1)[0]
    return ans.strip(" *.") or None


def _clean_number_text(text: str) -> str:
    # Currency signs and LaTeX thousands separators ("1,\!000", "1{,}000", "1\,000") hide numbers.
    text = re.sub(r"\\?\$|\\!", "", text).replace("{,}", ",").replace("\\,", ",")
    return text.replace("\u2212", "-")  # unicode minus


def _first_number(text: str) -> str | None:
    m = _NUM.search(_clean_number_text(text))
    return m.group().replace(",", "") if m else None


def _marked_number(completion: str) -> str | None:
    """The first number after the last final-answer marker: ``\\boxed{}``, then "the answer is", then ``####``."""
    for source in (_last_boxed(completion), _answer_is(completion),
                   completion.rsplit("####", 1)[1] if "####" in completion else None):
        if source is not None and (number := _first_number(source)) is not None:
            return number
    return None


def _numeric_answer(completion: str) -> str | None:
    if (number := _marked_number(completion)) is not None:
        return number
    numbers = _NUM.findall(_clean_number_text(completion))
    return numbers[-1].replace(",", "") if numbers else None


def _flexible_number(completion: str) -> str | None:
    """lm-eval's flexible extraction: the last :data:`_FLEXIBLE` match, "$", "," and a final "." removed."""
    matches = _FLEXIBLE.findall(completion)
    if not matches:
        return None
    last = next(g for g in matches[-1] if g)
    return re.sub(r"[$,]", "", last).removesuffix(".")


def extract_answer(task: str, completion: str) -> str | None:
    """The answer a completion commits to, or None.

    Numeric tasks: the number in the last ``\\boxed{}``, else after the last "the answer is", else after
    the last ``####``, else the last number in the text (commas removed). ``math500``: the content of
    the last ``\\boxed{}``/``\\fbox{}``, else the expression after the last "the answer is".
    """
    _check(task)
    if task == "math500":
        return _last_boxed(completion) or _answer_is(completion)
    return _numeric_answer(completion)


def gold_answer(task: str, solution: str) -> str:
    """The gold answer in a reference solution: after the last ``####`` (GSM8K layout) or, for
    ``math500``, the last boxed content. A solution without either marker is taken as the answer itself."""
    _check(task)
    if task == "math500":
        return _last_boxed(solution) or solution.strip()
    return solution.rsplit("####", 1)[-1].strip()


def _same_number(pred: str | None, gold: str) -> bool:
    """``pred`` equals the first number of ``gold`` as a decimal (False for None or a non-number)."""
    g = _first_number(gold)
    if pred is None or g is None:
        return False
    try:
        return Decimal(pred) == Decimal(g)
    except ArithmeticError:  # e.g. flexible extraction's "1.2.3"
        return False


def score(task: str, completion: str, gold: str) -> dict:
    """Every convention's verdict on one completion, as stored per prediction.

    ``answer``/``correct``: the headline (:func:`extract_answer`, :func:`grade`); ``extracted``: the
    completion commits to an answer with a final-answer marker (numeric tasks: the strict rule found
    one; ``math500``: a ``\\boxed{}`` or "the answer is"); ``answer_strict``/``correct_strict`` and
    ``answer_flexible``/``correct_flexible``: the two lm-eval conventions (None for ``math500``).
    Any completion is graded without an error; a bug in the grader raises, it is not a wrong answer.
    """
    _check(task)
    out = {"answer": None, "correct": False, "extracted": False, "answer_strict": None, "correct_strict": None,
           "answer_flexible": None, "correct_flexible": None}
    out["answer"] = extract_answer(task, completion)
    out["correct"] = grade(task, completion, gold)
    if task == "math500":
        out["extracted"] = out["answer"] is not None
        return out
    strict, flexible = _marked_number(completion), _flexible_number(completion)
    out.update(extracted=strict is not None, answer_strict=strict, correct_strict=_same_number(strict, gold),
               answer_flexible=flexible, correct_flexible=_same_number(flexible, gold))
    return out


def _power_arg(s: str, i: int) -> tuple[str, int]:
    """The exponent starting at ``s[i]`` (a balanced ``{..}``/``(..)`` group or one token) and where it ends."""
    while i < len(s) and s[i].isspace():
        i += 1
    if i < len(s) and s[i] in "{(":
        opener, closer, depth = s[i], "})"["{(".index(s[i])], 0
        for j in range(i, len(s)):
            depth += (s[j] == opener) - (s[j] == closer)
            if depth == 0:
                return s[i + 1:j], j + 1
        return s[i:], len(s)  # unbalanced: judge everything after it
    m = _POWER_TOKEN.match(s, i)
    return (m.group(), m.end()) if m else ("", i)


def _too_costly(s: str) -> bool:
    """Could sympy spend forever evaluating ``s``? math-verify runs here without its timeout (see
    ``_math_equal``), so inputs with huge or stacked powers, big factorials or big binomials skip it.
    A heuristic: it catches 9^{9^{9^9}}, 2^{10^9}, 9**9**9, (10^9)!, not every slow expression."""
    if len(s) > _MAX_VERIFY_CHARS or re.search(r"\d{5,}\s*!|[)}\]]\s*!", s):
        return True
    if re.search(r"\\(?:binom|choose)|factorial|binomial", s) and re.search(r"\d{4}|\^|\*\*", s):
        return True
    for m in re.finditer(r"\^|\*\*", s):
        arg, end = _power_arg(s, m.end())
        if re.search(r"\^|\*\*|!|\d{6,}|\\left|\\uparrow", arg) or re.match(r"\s*(?:\^|\*\*|!)", s[end:]):
            return True
    return False


def _normalise(s: str) -> str:
    """A canonical string for the fallback comparison: layout, units and notation variants removed."""
    s = re.sub(r"\\?\$|\\left|\\right|(?<!\\)\\[!,;: ]|~", "", s.strip())  # (?<!\\): keep "\\" row breaks
    s = re.sub(r"\^\s*\{?\\circ\}?|\\circ|°|\\?%", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)  # \frac12 shorthand
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    # A trailing \text{..} after a value is a unit ("5 \text{ cm}"); a lone \text{Evelyn} is the answer.
    s = re.sub(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\{[^{}]*\}(?:\^\{?\d\}?)?\s*$", "", s)
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    if s.count("=") == 1:  # "x = 5" answers the same as "5"
        s = re.sub(r"^\s*(?:[a-zA-Z]|\\[a-zA-Z]+)\s*=", "", s)
    return re.sub(r"\s+", "", s).rstrip(".")


def _math_equal(pred: str, gold: str) -> bool:
    """math-verify equivalence (gold first), else equal normalised strings."""
    if not (_too_costly(pred) or _too_costly(gold)):
        from math_verify import parse, verify

        # parse only sees LaTeX inside $..$ or \boxed{}. Timeouts off: math-verify implements them
        # with signal.alarm, which raises outside the main thread (e.g. a threaded evaluator).
        def wrap(s: str) -> str:
            return "$" + re.sub(r"\\?\$", "", s) + "$"

        try:
            if verify(parse(wrap(gold), parsing_timeout=None), parse(wrap(pred), parsing_timeout=None),
                      timeout_seconds=None):
                return True
        except Exception:  # noqa: BLE001  math-verify (sympy, latex2sympy) on a model's malformed LaTeX raises
            pass           # any type (TypeError, RecursionError, ...): not a verdict; try the string comparison
    norm = _normalise(pred)
    return norm != "" and norm == _normalise(gold)


def grade(task: str, completion: str, gold: str) -> bool:
    """True when the answer extracted from ``completion`` matches ``gold``.

    Numeric tasks compare the first number of each exactly as decimals ("3.50" == "3.5", "1,000" ==
    "1000", units and "$" ignored); ``math500`` uses ``_math_equal``.
    """
    _check(task)
    pred = extract_answer(task, completion)
    if pred is None:
        return False
    if task == "math500":
        return _math_equal(pred, gold.strip())
    return _same_number(pred, gold)
