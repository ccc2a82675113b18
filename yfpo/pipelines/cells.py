"""How the tables print a cell: p-values, intervals, verdicts, per-seed scores, a row's λ, and a
table as Markdown."""

from __future__ import annotations

from yfpo.pipelines import stats

UNKNOWN = "unknown (1 seed)"  # a cell whose between-run variance cannot be estimated


def format_lambda(row: dict) -> str:
    return "" if row.get("lambda") is None else str(row["lambda"])


def format_p(p: float | None) -> str:
    """A p-value as the tables print it."""
    return UNKNOWN if p is None else f"{p:.3f}" if p >= 1e-3 else "<0.001"


def format_interval(ci: tuple[float, float] | None) -> str:
    return UNKNOWN if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def format_detectable(diff: stats.Estimate) -> str:
    return UNKNOWN if diff.se is None else f"{diff.detectable():.4f}"


def verdict(diff: stats.Estimate, p_adjusted: float | None, alpha: float = stats.ALPHA) -> str:
    """``higher``/``lower`` when the (adjusted) p-value resolves the difference, else ``unresolved``."""
    if p_adjusted is None:
        return UNKNOWN
    if p_adjusted >= alpha:
        return "unresolved"
    return "higher" if diff.value > 0 else "lower"


def per_seed(arm: stats.Arm) -> str:
    """The runs' accuracies, as the tables print them."""
    return " / ".join(f"{m:.3f}" for m in arm.seed_means())


def markdown(title: str, header: list[str], table: list[list[str]], note: str = "") -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in table] + ([("\n" + note)] if note else [])) + "\n"
