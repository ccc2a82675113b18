"""The statistics of the tables, tested like code: hand-made cases whose answer is known, and
simulated evaluated runs (seed effects, seed x problem interaction) with and without a true
difference, written in the layout ``yfpo.evaluate`` writes and tabulated by the real table code."""

import json

import numpy as np
import pytest

from yfpo.pipelines import stats
from yfpo.pipelines import paper_table, results

ALPHA = 0.05


def problem_only_bootstrap_p(row: np.ndarray, base: np.ndarray, rng, samples: int = 2000) -> float:
    """What yfpo's tables did before: average the seeds per problem, then resample problems only
    (the between-run variance never enters). Kept here to show its false-positive rate."""
    d = row - base
    means = d[rng.integers(0, len(d), size=(samples, len(d)))].mean(axis=1)
    return float(min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())))


def simulate_arm(rng, difficulty, seeds, ckpts, shift=0.0, seed_sd=0.15, interaction_sd=0.6, ckpt_sd=0.05):
    """``c[seed, checkpoint, problem]`` in {0, 1}: logit = difficulty + shift + seed effect + seed x problem
    interaction + checkpoint effect. The runs' accuracies then differ by ~3 points (SD), as on the toy."""
    out = np.empty((seeds, ckpts, len(difficulty)), dtype=bool)
    for s in range(seeds):
        run = difficulty + shift + rng.normal(0, seed_sd) + rng.normal(0, interaction_sd, len(difficulty))
        for k in range(ckpts):
            logit = run + rng.normal(0, ckpt_sd)
            out[s, k] = rng.random(len(difficulty)) < 1 / (1 + np.exp(-logit))
    return out


def write_runs(root, c, task="gsm8k"):
    """``c[seed, checkpoint, problem]`` as evaluated run directories ``root/seed=S/eval/<task>/ckpt-k/``."""
    for s in range(c.shape[0]):
        for k in range(c.shape[1]):
            d = root / f"seed={s + 1}" / "eval" / task / f"ckpt-{k + 1}"
            d.mkdir(parents=True)
            (d / "predictions.jsonl").write_text(
                "".join(f'{{"id": {i}, "correct": {"true" if v else "false"}}}\n' for i, v in enumerate(c[s, k])))
            (d / "summary.json").write_text(json.dumps({"n": c.shape[2], "accuracy": float(c[s, k].mean())}))


def experiments(tmp_path, count, seeds, ckpts, problems, shift, rng):
    """Simulate ``count`` two-arm experiments on disk and tabulate each with :func:`paper_table.build`.
    Returns the table's p (Avg) of the second arm against the first, and the old bootstrap's p."""
    p_table, p_old = [], []
    for e in range(count):
        difficulty = rng.normal(1.0, 1.5, problems)  # shared by both arms: the same test problems
        root = tmp_path / f"exp{e}"
        write_runs(root / "dpo", simulate_arm(rng, difficulty, seeds, ckpts))
        write_runs(root / "yfpo", simulate_arm(rng, difficulty, seeds, ckpts, shift))
        spec = {"name": "sim", "task": "gsm8k", "baseline": "DPO", "rows": [
            {"data": "2K", "method": "DPO", "runs": [f"exp{e}/dpo/seed=*"]},
            {"data": "2K", "method": "YFPO", "lambda": 0.1, "runs": [f"exp{e}/yfpo/seed=*"]}]}
        header, table = paper_table.build(spec, tmp_path)
        assert table[1][header.index("seeds")] == str(seeds)
        p_table.append(float(table[1][header.index("p (Avg)")].lstrip("<")))
        rows = [results.Row.read(r, tmp_path, "gsm8k") for r in spec["rows"]]
        p_old.append(problem_only_bootstrap_p(rows[1].c.mean(axis=(0, 1)), rows[0].c.mean(axis=(0, 1)), rng))
    return np.array(p_table), np.array(p_old)


def test_no_true_difference_is_rejected_at_most_7_percent_and_the_old_bootstrap_far_more(tmp_path):
    """300 experiments, 3 seeds a side, 3 checkpoints, 400 problems, between-seed accuracy SD ~3 points."""
    p_table, p_old = experiments(tmp_path, 300, seeds=3, ckpts=3, problems=400, shift=0.0, rng=np.random.default_rng(0))
    rate, old = (p_table < ALPHA).mean(), (p_old < ALPHA).mean()
    print(f"false-positive rate: seed-level test {rate:.3f}, problem-only bootstrap {old:.3f}")
    assert rate <= 0.07
    assert old >= 0.25, "the simulation must contain the between-run variance the old test left out"
    assert (p_table < 0.5).mean() > 0.3, "p-values spread over [0, 1] under the null, not stuck at 1"


def test_a_large_true_difference_with_5_seeds_a_side_is_detected(tmp_path):
    """200 experiments, 5 seeds a side, +0.5 on the logit (~7.5 points, over twice the between-seed SD)."""
    p_table, _ = experiments(tmp_path, 200, seeds=5, ckpts=1, problems=400, shift=0.5, rng=np.random.default_rng(1))
    power = (p_table < ALPHA).mean()
    print(f"power: {power:.3f}")
    assert power >= 0.8


def test_two_seeds_that_disagree_completely_give_a_wide_interval():
    y = np.array([[1.0] * 100, [0.0] * 100])  # one run gets everything right, the other nothing
    est = stats.mean(stats.Arm(y))
    lo, hi = est.interval()
    assert est.value == 0.5 and lo < 0 and hi > 1  # with 2 runs nothing is known about the next one
    pooled = y.mean(axis=0)  # what a problem-only interval sees: 0.5 on every problem, no spread at all
    assert pooled.std() == 0.0
    agree = stats.mean(stats.Arm(np.array([[1.0] * 50 + [0.0] * 50] * 2)))  # two identical runs
    assert agree.interval()[1] - agree.interval()[0] < 0.25


def test_one_seed_leaves_the_between_run_variance_unknown_and_a_fixed_arm_does_not():
    y = np.array([[1.0, 0.0, 1.0, 1.0]])
    assert stats.mean(stats.Arm(y)).interval() is None and stats.mean(stats.Arm(y)).p() is None
    fixed = stats.mean(stats.Arm(y, fixed=True))  # the start model: one model, problems only
    assert fixed.interval() is not None and fixed.se == pytest.approx((0.25 / 4) ** 0.5)
    two = stats.Arm(np.array([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]]))
    assert stats.difference(two, stats.Arm(y)).p() is None
    assert stats.difference(two, stats.Arm(y, fixed=True)).p() is not None


def test_the_standard_error_by_hand():
    """Two arms, 2 seeds, 4 problems: every term of the variance formula written out."""
    a = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], dtype=float)
    b = np.array([[0, 1, 0, 0], [1, 1, 0, 0]], dtype=float)
    s2 = lambda arm: np.var(arm.mean(axis=1), ddof=1)  # noqa: E731
    res = lambda arm: (((arm - arm.mean(1, keepdims=True) - arm.mean(0, keepdims=True) + arm.mean()) ** 2).sum()  # noqa: E731
                       / ((arm.shape[0] - 1) * (arm.shape[1] - 1)))
    d = a.mean(0) - b.mean(0)
    var = s2(a) / 2 + s2(b) / 2 + max(0.0, np.var(d, ddof=1) - res(a) / 2 - res(b) / 2) / 4
    est = stats.difference(stats.Arm(a), stats.Arm(b))
    assert est.value == pytest.approx(0.25) and est.se == pytest.approx(var**0.5)


def test_holm_against_a_hand_computation():
    # sorted 0.01, 0.03, 0.04, 0.20 -> x4, x3, x2, x1 = 0.04, 0.09, 0.08, 0.20; made monotone: 0.04, 0.09, 0.09, 0.20
    assert stats.holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert stats.holm([0.5, None, 0.6]) == [pytest.approx(1.0), None, pytest.approx(1.0)]
    assert stats.holm([]) == []


def test_seeds_needed_reaches_the_stated_power_in_simulation():
    """The seeds it asks for, taken from a pilot, give close to 80 % power when simulated."""
    rng = np.random.default_rng(3)
    difficulty = rng.normal(1.0, 1.5, 400)
    pilot = [stats.Arm(simulate_arm(rng, difficulty, 8, 1).mean(axis=1)) for _ in range(2)]
    effect = 0.04
    n = stats.seeds_needed(effect, pilot[1], pilot[0])
    assert n is not None and 2 <= n <= 30
    assert stats.seeds_needed(2 * effect, pilot[1], pilot[0]) < n  # a larger effect needs fewer seeds
    shift = 0.04 / 0.2  # logit shift for ~4 points near 70 % accuracy (slope p(1-p) ~ 0.2)
    hits = [stats.difference(stats.Arm(simulate_arm(rng, difficulty, n, 1, shift).mean(axis=1)),
                             stats.Arm(simulate_arm(rng, difficulty, n, 1).mean(axis=1))).p() < ALPHA for _ in range(300)]
    assert 0.65 <= np.mean(hits) <= 0.97
    assert stats.seeds_needed(1e-4, pilot[1], pilot[0], most=50) is None  # the problems' own noise is too large
