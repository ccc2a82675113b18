"""What a checkpoint's ``summary.json`` reports beside its accuracy: the Wilson interval, rates,
health warnings, library versions and the backends' agreement; and its scores as W&B metrics."""

from __future__ import annotations

import math
import sys

# Libraries whose versions can change a completion or a verdict (recorded in every summary).
VERSIONED = ("torch", "transformers", "vllm", "math-verify", "yfpo")


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (well-behaved at 0 and 1)."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(rows: list[dict], key: str) -> float:
    """Share of ``rows`` whose ``key`` is true (0 for no rows)."""
    return sum(bool(r[key]) for r in rows) / len(rows) if rows else 0.0


def accuracy(rows: list[dict], key: str) -> float | None:
    """Mean of ``key`` over ``rows``; None where the convention does not apply (math500 strict/flexible)."""
    if not rows or any(r[key] is None for r in rows):
        return None
    return sum(r[key] for r in rows) / len(rows)


def health_warnings(summary: dict, limit: float) -> list[str]:
    """Warnings for a truncated rate or a missing-answer rate above ``limit`` (``eval.warn_rate``)."""
    out = []
    if summary["truncated_rate"] > limit:
        out.append(f"{summary['truncated_rate']:.1%} of completions hit max_new_tokens="
                   f"{summary['decoding']['max_new_tokens']} without a stop: read a few in predictions.jsonl (a repetition "
                   "loop never ends; a solution cut short needs a larger eval.max_new_tokens; text past the answer needs eval.stop)")
    if 1 - summary["extracted_rate"] > limit:
        out.append(f"{1 - summary['extracted_rate']:.1%} of completions give no marked final answer "
                   "(\\boxed{}, 'The answer is', ####): check the prompt (eval.template, eval.num_fewshot)")
    return out


def library_versions() -> dict:
    """Installed versions of :data:`VERSIONED` (None when not installed) and of Python."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def agreement(report: dict) -> dict:
    """The headline of a ``backend_agreement.json`` report, as kept in ``summary.json``."""
    return {k: report[k] for k in ("n", "output_agreement", "grade_agreement", "mean_common_prefix")}


def wandb_scores(name: str, s: dict) -> dict:
    """The scores of one checkpoint's summary as W&B metrics ``eval/<evaluation>/<score>``."""
    keys = ("accuracy", "accuracy_strict", "accuracy_flexible", "truncated_rate", "extracted_rate")
    out = {f"eval/{name}/{k}": s[k] for k in keys if s.get(k) is not None}
    if s.get("backend_agreement"):
        out.update({f"eval/{name}/{k}": s["backend_agreement"][k] for k in ("output_agreement", "grade_agreement")})
    return out
