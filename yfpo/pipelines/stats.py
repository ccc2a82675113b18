"""Inference for accuracy tables whose unit of replication is the training run.

Data of one arm (a table row): ``y[s, i]``, the correctness of training seed ``s`` on problem ``i``
(0/1, or its mean over the checkpoints a column summarises). The model behind every interval and
p-value, per arm ``a``::

    y[a, s, i] = mu_a + p[a, i] + u[a, s] + e[a, s, i]

``p`` is the problem effect (difficulty, and how this arm fares on it), ``u`` the training run's
effect (seed), ``e`` the run x problem interaction together with the 0/1 noise. Seeds are
independent runs; the problems are the same for every arm, so the difficulty part of ``p`` cancels
in a difference and only the arm x problem part ``p[a, i] - p[b, i]`` remains (the pairing).

With ``m_s`` the per-seed means, ``S2`` their variance over seeds, ``R`` the residual mean square of
the seed x problem two-way layout (``E R = var e``), and ``V`` the variance over problems of the
seed-averaged per-problem values (of one arm, or of the difference of two arms):

    Var(mean)        = S2 / n + max(0, V - R / n) / N
    Var(mean_a - mean_b) = S2_a / n_a + S2_b / n_b + max(0, V_ab - R_a / n_a - R_b / n_b) / N

The seed terms carry the between-run variance (and, through ``S2``, the interaction noise once);
the problem term is the arm x problem variance, with the noise already counted removed. The
reference distribution is Student's t with Welch-Satterthwaite degrees of freedom, so that a
table with 3 seeds a side is tested on about 4 degrees of freedom, not on the hundreds of problems.

Why this and not a two-level bootstrap (resample seeds, then problems): with the 2-5 seeds a
table has, the bootstrap distribution of a mean of n seeds has (n - 1) / n of its variance and
only a handful of distinct seed draws, so its percentile intervals are too narrow and its p-values
too small; the t reference with few degrees of freedom is what corrects for estimating a variance
from three runs. ``tests/test_stats.py`` checks the false-positive rate and the power on simulated
evaluated runs, through the table code.

Arms are treated as independent training runs. Where two arms share seeds (the demo trains every
arm with seeds 1, 2, 3, so seed s of two arms sees the same batch order), their runs are positively
correlated and the variance of the difference is overstated: the test is conservative there.

A *fixed* arm has no between-run variance by design, such as the model every run starts from (the
demo's SFT row): it is one model, not a draw of training runs. One seed of a trained arm leaves the
between-run variance unknown, and then no interval or p-value is given (``se`` is None).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.8


@dataclass(frozen=True)
class Arm:
    """One arm's ``y[s, i]`` (``[seeds, problems]``) and whether it is fixed (no between-run variance)."""

    y: np.ndarray
    fixed: bool = False

    def __post_init__(self):
        if self.y.ndim != 2 or self.y.shape[1] == 0:
            raise ValueError(f"an arm needs y[seeds, problems], got shape {self.y.shape}")

    @property
    def seeds(self) -> int:
        return self.y.shape[0]

    @property
    def problems(self) -> int:
        return self.y.shape[1]

    @property
    def known(self) -> bool:
        """Whether the between-run variance is known: fixed by design, or estimable from >= 2 seeds."""
        return self.fixed or self.seeds >= 2

    def seed_means(self) -> np.ndarray:
        """``[seeds]``: each training run's accuracy."""
        return self.y.mean(axis=1)

    def seed_term(self) -> tuple[float, int]:
        """``(S2 / n, n - 1)``: the variance of the mean from the runs, and its degrees of freedom."""
        if self.fixed or self.seeds < 2:
            return 0.0, 0
        return float(self.seed_means().var(ddof=1)) / self.seeds, self.seeds - 1

    def residual(self) -> float:
        """``R``: the seed x problem residual mean square (0 for a fixed arm or one seed)."""
        n, N = self.y.shape
        if self.fixed or n < 2 or N < 2:
            return 0.0
        r = self.y - self.y.mean(axis=1, keepdims=True) - self.y.mean(axis=0, keepdims=True) + self.y.mean()
        return float((r**2).sum()) / ((n - 1) * (N - 1))


@dataclass(frozen=True)
class Estimate:
    """A mean or a difference of means, with its standard error and degrees of freedom (None: the
    between-run variance is unknown, from one seed)."""

    value: float
    se: float | None
    df: float | None

    def interval(self, level: float = 0.95) -> tuple[float, float] | None:
        if self.se is None:
            return None
        half = float(sps.t.ppf(0.5 + level / 2, self.df)) * self.se if self.se > 0 else 0.0
        return self.value - half, self.value + half

    def p(self) -> float | None:
        """Two-sided p-value against 0."""
        if self.se is None:
            return None
        if self.se == 0:
            return 1.0 if self.value == 0 else 0.0
        return float(2 * sps.t.sf(abs(self.value) / self.se, self.df))

    def detectable(self, alpha: float = ALPHA, power: float = POWER) -> float | None:
        """The smallest true difference this comparison detects with ``power`` at two-sided ``alpha``."""
        if self.se is None:
            return None
        return detectable(self.se, self.df, alpha, power)


def detectable(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """``(t_{1 - alpha/2} + t_{power}) * se`` on ``df`` degrees of freedom."""
    return float((sps.t.ppf(1 - alpha / 2, df) + sps.t.ppf(power, df)) * se)


def _satterthwaite(terms: list[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance terms ``(value, df)``."""
    total = sum(v for v, _ in terms)
    denom = sum(v * v / d for v, d in terms if d > 0 and v > 0)
    return total * total / denom if denom > 0 else float("inf")


def mean(arm: Arm) -> Estimate:
    """The arm's accuracy: mean over seeds and problems, with both sources of variance."""
    value = float(arm.y.mean())
    if not arm.known:
        return Estimate(value, None, None)
    seed_var, seed_df = arm.seed_term()
    per_problem = arm.y.mean(axis=0)
    v = float(per_problem.var(ddof=1)) if arm.problems > 1 else 0.0
    problem_var = max(0.0, v - arm.residual() / arm.seeds) / arm.problems
    terms = [(seed_var, seed_df), (problem_var, arm.problems - 1)]
    return Estimate(value, (seed_var + problem_var) ** 0.5, _satterthwaite(terms))


def difference(a: Arm, b: Arm) -> Estimate:
    """``mean(a) - mean(b)`` on the same problems (columns paired), with its standard error."""
    if a.problems != b.problems:
        raise ValueError(f"arms on different problems ({a.problems} vs {b.problems} columns)")
    value = float(a.y.mean() - b.y.mean())
    if not (a.known and b.known):
        return Estimate(value, None, None)
    (sa, da), (sb, db) = a.seed_term(), b.seed_term()
    d = a.y.mean(axis=0) - b.y.mean(axis=0)
    v = float(d.var(ddof=1)) if a.problems > 1 else 0.0
    problem_var = max(0.0, v - a.residual() / a.seeds - b.residual() / b.seeds) / a.problems
    terms = [(sa, da), (sb, db), (problem_var, a.problems - 1)]
    return Estimate(value, (sa + sb + problem_var) ** 0.5, _satterthwaite(terms))


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values of one family (None stays None)."""
    known = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    out: list[float | None] = [None] * len(ps)
    running, m = 0.0, len(known)
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def seeds_needed(effect: float, a: Arm, b: Arm, problems: int | None = None, alpha: float = ALPHA,
                 power: float = POWER, most: int = 1000) -> int | None:
    """Seeds per arm for ``a - b`` to detect ``effect`` with ``power`` at two-sided ``alpha``, with the
    variance components these arms show, on ``problems`` problems (default: theirs).

    Per arm, the between-run variance ``S2 - R / N`` (kept >= 0) and the interaction ``R``; the
    arm x problem variance as in :func:`difference`. None: not reached by ``most`` seeds (the
    problems' own term alone is too large: more problems are needed), or a variance is unknown.
    """
    if not (a.known and b.known) or effect <= 0:
        return None
    N0, N = a.problems, problems or a.problems
    comps = []
    for arm in (a, b):
        s2 = arm.seed_term()[0] * arm.seeds
        comps.append((max(0.0, s2 - arm.residual() / N0), arm.residual(), arm.fixed))
    d = a.y.mean(axis=0) - b.y.mean(axis=0)
    v = float(d.var(ddof=1)) if N0 > 1 else 0.0
    interaction = max(0.0, v - a.residual() / a.seeds - b.residual() / b.seeds)
    for n in range(2, most + 1):
        terms = [((0.0 if fixed else (u + r / N) / n), n - 1) for u, r, fixed in comps] + [(interaction / N, N - 1)]
        se = sum(t for t, _ in terms) ** 0.5
        if se == 0 or detectable(se, _satterthwaite(terms), alpha, power) <= effect:
            return n
    return None
