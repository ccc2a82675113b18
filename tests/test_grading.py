"""Grading: gold self-consistency, adversarial completions, robustness to junk and threads.

Fixtures are hand-written in the published GSM8K / MATH-500 formats (no network in tests).
"""

from __future__ import annotations

import threading

import pytest

from yfpo.evaluate.generation import cut_at_stop
from yfpo.evaluate.grading import TASKS, extract_answer, gold_answer, grade, score
from yfpo.data.prompts import default_stops

# GSM8K "answer" fields: reasoning with <<calculator>> annotations, then "#### <gold>".
GSM8K_SOLUTIONS = [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
    "Betty has 100/2 = $<<100/2=50>>50.\nHer grandparents gave her 15*2 = $<<15*2=30>>30.\n"
    "She needs 100-50-30-15 = $<<100-50-30-15=5>>5 more.\n#### 5",
    "The rent is 400*3 = $<<400*3=1200>>1,200 per quarter.\n#### 1,200",
    "He sells 25,000 - 12,500 = <<25000-12500=12500>>12,500 units.\nAt $2 each that is 12,500*2 = <<12500*2=25000>>25000.\n#### 25,000",
    "The temperature was 5 degrees and fell by 12 degrees.\nSo it is 5-12 = <<5-12=-7>>-7 degrees.\n#### -7",
    "Each cookie costs 7/2 = $<<7/2=3.5>>3.5.\n#### 3.5",
    "A pen costs 1.25 and a pad costs 2.25.\nTogether they cost 1.25+2.25 = $<<1.25+2.25=3.50>>3.50.\n#### 3.50",
    "She ran 3/4 = <<3/4=0.75>>0.75 miles.\n#### 0.75",
    "There are 3 boxes of 12 eggs, so 3*12 = <<3*12=36>>36 eggs.\n6 broke, leaving 36-6 = <<36-6=30>>30.\n#### 30",
    "The account lost 150+250 = <<150+250=400>>400 dollars from 300.\n300-400 = <<300-400=-100>>-100\n#### -100",
    "Tom reads 20 pages a day for 7 days: 20*7 = <<20*7=140>>140 pages.\nHe has 2 books of 300 pages, "
    "so 600-140 = <<600-140=460>>460 pages are left.\n#### 460",
    "A car goes 60 miles per hour for 2.5 hours: 60*2.5 = <<60*2.5=150>>150 miles.\n#### 150",
    "Mark had 1,000,000 - 250,000 = <<1000000-250000=750000>>750,000 dollars.\n#### 750000",
    "The farm has 4 cows with 4 legs: 4*4 = <<4*4=16>>16 legs.\nAnd 10 hens with 2 legs: 10*2 = <<10*2=20>>20.\n"
    "16+20 = <<16+20=36>>36\n#### 36",
    "Half of 0 is 0/2 = <<0/2=0>>0.\n#### 0",
]

# MATH-500-style rows: (solution ending in a boxed answer, the row's "answer" field).
MATH500_ROWS = [
    (r"Hence $3x = 14$, so $x = \boxed{\frac{14}{3}}$.", r"\frac{14}{3}"),
    (r"We have $r = \sqrt{0^2 + 3^2} = 3$ and $\theta = \frac{\pi}{2}$, so the polar coordinates are "
     r"$\boxed{\left( 3, \frac{\pi}{2} \right)}.$", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"Swapping the order of summation, the sum equals $\boxed{p - q}.$", r"p - q"),
    (r"Evelyn has the greatest average speed, so the answer is $\boxed{\text{Evelyn}}.$", r"\text{Evelyn}"),
    (r"Multiplying out, $(1-2i)(4+3i) - 4 + 2i = \boxed{6-5i}$.", r"6 - 5i"),
    (r"The range of $f$ is $\boxed{[-2,7]}.$", r"[-2, 7]"),
    (r"Therefore the distance is $\boxed{\sqrt2}$.", r"\sqrt{2}"),
    (r"The angles sum to $180^\circ$, so $\angle C = \boxed{90^\circ}$.", r"90^\circ"),
    (r"The price dropped by $\frac{5}{50} = \boxed{10\%}$.", r"10\%"),
    (r"Expanding, $(x+2)(x+5) = \boxed{x^2+7x+10}$.", r"x^2+7x+10"),
    (r"The probability is $\boxed{\frac{1}{2}}$.", r"\dfrac{1}{2}"),
    (r"Solving $3a + 1 = 0$ gives $a = \boxed{-\frac13}$.", r"-\frac{1}{3}"),
    (r"The total is $\boxed{\$32,\!348}$.", r"\$32,\!348"),
    (r"Only choice (C) works, so the answer is $\boxed{\text{(C)}}$.", r"\text{(C)}"),
    (r"The hypotenuse is $\sqrt{242} = \boxed{11\sqrt{2}}$.", r"11\sqrt2"),
    (r"$\cos 30^\circ = \boxed{\frac{\sqrt{3}}{2}}$.", r"\frac{\sqrt{3}}{2}"),
    (r"The projection is $\boxed{\begin{pmatrix} 1 \\ -2 \end{pmatrix}}.$", r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}"),
    (r"In base 5, $555_{10} = \boxed{4210_{5}}$.", r"4210_{5}"),
    (r"The roots are $\boxed{3, 5}$.", r"3, 5"),
]


@pytest.mark.parametrize("solution", GSM8K_SOLUTIONS)
def test_gsm8k_gold_self_consistency(solution):
    assert grade("gsm8k", solution, gold_answer("gsm8k", solution)) is True


def test_gsm8k_gold_is_text_after_last_hashes():
    assert gold_answer("gsm8k", GSM8K_SOLUTIONS[3]) == "1,200"
    assert gold_answer("gsm8k", "#### 3\nrevised\n#### 4") == "4"


@pytest.mark.parametrize(("solution", "answer"), MATH500_ROWS)
def test_math500_gold_self_consistency(solution, answer):
    assert grade("math500", solution, answer) is True
    assert grade("math500", solution, gold_answer("math500", solution)) is True


def test_math500_string_fallback(monkeypatch):
    # With math-verify unusable, the normalised-string comparison alone still grades the gold rows.
    import math_verify

    def broken(*args, **kwargs):
        raise RuntimeError("math-verify unavailable")

    monkeypatch.setattr(math_verify, "verify", broken)
    assert all(grade("math500", solution, answer) for solution, answer in MATH500_ROWS)
    assert grade("math500", r"$\boxed{x = 5\text{ cm}}$", "5") is True
    assert grade("math500", r"$\boxed{\dfrac12}$", r"\frac{1}{2}") is True
    assert grade("math500", r"$\boxed{\frac{1}{2}}$", "0.5") is False  # needs math-verify


def test_math500_gold_answer_is_last_boxed():
    assert gold_answer("math500", MATH500_ROWS[1][0]) == r"\left( 3, \frac{\pi}{2} \right)"
    assert gold_answer("math500", r"first $\boxed{1}$, corrected: $\boxed{\frac{2}{3}}$") == r"\frac{2}{3}"
    assert gold_answer("math500", r"\frac{14}{3}") == r"\frac{14}{3}"  # a bare answer field is its own gold


@pytest.mark.parametrize(("completion", "gold", "expected"), [
    ("I have 3 apples and 4 pears, 7 in all. Add 5 more: 12", "12", True),  # last number
    ("The answer is 12. Check: 12 = 3 * 4, and 99 is unrelated.", "12", True),
    ("The answer is 12. Check: 12 = 3 * 4, and 99 is unrelated.", "99", False),
    ("Step 1: 5 + 6 = 11\n#### 11\nsomething 42", "11", True),
    (r"Tried 3 and 8; final: $\boxed{8}$, not 3.", "8", True),  # boxed beats later numbers
    ("It dropped to -7 degrees.", "-7", True),
    ("The answer is -7.", "7", False),
    ("5-3 = 2", "2", True),  # binary minus is not a sign
    ("She pays $3.50 in total.", "3.5", True),
    ("The answer is $1,000 per month.", "1000", True),
    ("#### 1,200 dollars", "1200", True),
    ("The answer is 0.5", "1/2", False),  # numeric tasks read the first number: 1
    ("No idea.", "3", False),
    ("The answer is 13.", "12", False),
])
def test_numeric_adversarial(completion, gold, expected):
    for task in ("gsm8k", "synthetic"):
        assert grade(task, completion, gold) is expected


def test_numeric_extraction():
    assert extract_answer("gsm8k", "Nothing numeric here.") is None
    assert extract_answer("gsm8k", "total 1,000,000 and then 2") == "2"
    assert extract_answer("gsm8k", r"so \boxed{\$1,\!200}.") == "1200"
    assert extract_answer("synthetic", "The final answer is: 3.25, done") == "3.25"


@pytest.mark.parametrize(("completion", "gold", "expected"), [
    (r"So $\boxed{\frac{1}{2}}$.", "1/2", True),
    (r"So $\boxed{\frac{1}{2}}$.", "0.5", True),
    (r"So $\boxed{0.5}$.", r"\frac{1}{2}", True),
    (r"So $\boxed{\frac{1}{2}}$.", r"\frac{1}{3}", False),
    (r"First $\boxed{3}$, but correcting: $\boxed{\frac{a}{b}}$", r"\frac{a}{b}", True),  # last box, nested braces
    (r"First $\boxed{3}$, but correcting: $\boxed{\frac{a}{b}}$", "3", False),
    (r"$\boxed{(1, 2]}$", "(1,2]", True),
    (r"$\boxed{(1, 2]}$", "[1,2]", False),
    (r"$\boxed{5 \text{ cm}}$", "5", True),
    (r"$\boxed{5}$", r"5 \text{ cm}", True),
    (r"Thus \boxed 5.", "5", True),  # brace-less \boxed
    (r"Thus \fbox{-2}", "-2", True),
    (r"$\boxed{x = -2}$", "-2", True),
    (r"The answer is $\frac{7}{2}$. Later we mention 9.", r"\frac72", True),
    (r"The answer is $\frac{7}{2}$. Later we mention 9.", "9", False),
    (r"$\boxed{\text{Evelyn}}$", r"\text{Bob}", False),
    (r"$\boxed{-\frac{1}{3}}$", r"\frac{1}{3}", False),
    ("I could not solve it; maybe 4?", "4", False),  # math500 needs an explicit answer
])
def test_math500_adversarial(completion, gold, expected):
    assert grade("math500", completion, gold) is expected


def test_math500_extraction():
    assert extract_answer("math500", "no answer, not even 4") is None
    assert extract_answer("math500", r"\boxed{\frac{\sqrt{3}}{2}}") == r"\frac{\sqrt{3}}{2}"
    assert extract_answer("math500", r"\boxed{\{1, 2\}}") == r"\{1, 2\}"  # escaped braces are not groups
    assert extract_answer("math500", r"\boxed{\boxed{4}}") == "4"
    assert extract_answer("math500", r"$\boxed{2}$ and then \boxed{") == "2"  # unclosed box skipped


NASTY = ["", " ", "\n", r"\boxed{", r"\boxed", r"\boxed{}", "}}}}", "{{{{", "$$$", "$", "####", "#### ", "-",
         ".", "1" * 100_000, r"\boxed{" * 5000, r"\boxed{" + "9" * 100_000 + "}", "The answer is",
         "The answer is $", "ünïcödé ½ − ∞ 你好 🙂", "\x00\x01\ufffd", r"\frac{", r"\left(", "\\", "\\\\" * 1000,
         r"\boxed{9^{9^{9^{9}}}}", r"\boxed{(10^9)!}", r"\boxed{9**9**9}", r"The answer is $2^{10^{9}}$"]


@pytest.mark.parametrize("task", TASKS)
def test_grade_never_raises(task):
    for a in NASTY:
        for b in (NASTY[:14] + ["3", r"\frac{1}{2}"]):
            assert isinstance(grade(task, a, b), bool)
            assert isinstance(grade(task, b, a), bool)


def test_math500_grade_in_worker_thread():
    # math-verify's default timeouts use signal.alarm, which fails outside the main thread.
    results = []
    worker = threading.Thread(target=lambda: results.extend(
        [grade("math500", r"$\boxed{\frac{1}{2}}$", "0.5"), grade("math500", r"$\boxed{3}$", "4")]))
    worker.start()
    worker.join(timeout=30)
    assert results == [True, False]


def test_unknown_task_raises():
    for fn, args in ((grade, ("x", "1")), (extract_answer, ("x",)), (gold_answer, ("x",))):
        with pytest.raises(ValueError, match="aime"):
            fn("aime", *args)


# A base model's alpaca completion: it answers, then writes a new instruction block with numbers of its own.
RUNAWAY = ("Tom has 3 bags of 6 apples, so 3 * 6 = 18 apples. The answer is 18.\n\n### Instruction:\n"
           "Mia has 4 pens and buys 5 more. How many pens does she have?\n\n### Response:\n4 + 5 = 9")


def test_strict_and_flexible_on_a_runaway_completion():
    s = score("gsm8k", RUNAWAY, "18")
    assert s["correct"] and s["correct_strict"] and s["answer_strict"] == "18" and s["extracted"]
    assert s["answer_flexible"] == "9" and s["correct_flexible"] is False  # grades the invented number
    cut = cut_at_stop(RUNAWAY, default_stops("alpaca"))  # what generation returns with the template's stops
    assert cut.endswith("The answer is 18.\n\n") and score("gsm8k", cut, "18")["correct_flexible"] is True


@pytest.mark.parametrize(("completion", "gold", "strict", "flexible", "headline"), [
    ("She has 20 - 2 = 18 eggs left.", "18", False, True, True),  # no marker: strict finds nothing
    (r"So $\boxed{18}$, which is 3 more than 15.", "18", True, False, True),
    ("#### 18\nThat is 6 per person, 3 people.", "18", True, False, True),
    ("The answer is 17. Check: 18.", "18", False, True, False),
    ("The total is $1,234.50.", "1234.5", False, True, True),  # lm-eval drops "$", "," and a final "."
    ("The total is 5...", "5", False, False, True),  # lm-eval's regex takes "5..." whole: wrong there too
    ("No numbers at all.", "3", False, False, False),
])
def test_strict_and_flexible_conventions(completion, gold, strict, flexible, headline):
    for task in ("gsm8k", "synthetic"):
        s = score(task, completion, gold)
        assert (s["correct_strict"], s["correct_flexible"], s["correct"]) == (strict, flexible, headline)
        assert s["extracted"] is (s["answer_strict"] is not None)
        assert s["correct"] is grade(task, completion, gold) and s["answer"] == extract_answer(task, completion)


def test_math500_score_has_one_convention():
    s = score("math500", r"so $\boxed{\frac{1}{2}}$", "0.5")
    assert s["correct"] and s["extracted"] and s["correct_strict"] is None and s["correct_flexible"] is None
    assert not score("math500", "maybe 4", "4")["extracted"]


@pytest.mark.parametrize("task", TASKS)
def test_score_never_raises(task):
    keys = {"answer", "correct", "extracted", "answer_strict", "correct_strict", "answer_flexible", "correct_flexible"}
    for a in NASTY[:20]:
        assert set(score(task, a, "3")) == keys and isinstance(score(task, a, "3")["extracted"], bool)


def test_a_bug_in_the_grader_raises_instead_of_grading_the_answer_wrong(monkeypatch):
    """Only math-verify's failures on malformed LaTeX are absorbed (above); an error in yfpo's own
    extraction is a bug, and an evaluation that swallowed it would report it as a wrong answer."""
    from yfpo.evaluate import grading

    def broken(text):
        raise ZeroDivisionError("a deliberately broken extractor")

    monkeypatch.setattr(grading, "_marked_number", broken)
    for fn in (lambda: grading.score("gsm8k", "The answer is 18.", "18"), lambda: grading.grade("gsm8k", "The answer is 18.", "18")):
        with pytest.raises(ZeroDivisionError, match="deliberately broken"):
            fn()
