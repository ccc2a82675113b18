"""``python -m yfpo.tables experiments/NAME.yaml ...``: paper-style tables and plots from evaluated runs.

A table spec (YAML) names its rows and the run directories behind each (several = seeds):

    name: demo
    title: ...
    task: synthetic            # which eval/<task>/ results to read; a list gives one table each
    layout: checkpoints        # checkpoints: Ckpt-1..N, Avg, Best, dAvg, dBest (YFPO Tables 1-2)
                               # tasks: one column per task in `tasks` (the FDT table)
    tasks: [gsm8k, math500]    # tasks layout only
    baseline: DPO              # the method every row is compared with, on the same data
    paper_task: gsm8k          # the task of the rows' published numbers (default: the first)
    rows:
      - {data: synthetic, method: DPO, lambda: null, runs: [runs/demo/method=dpo],
         paper: {Avg: 0.36, Best: 0.37}}   # optional: published numbers, shown as "paper <key>"
      - {data: synthetic, method: SFT, start: true, runs: [runs/demo/method=dpo]}
                               # start: the runs' starting model (their ckpt-0), e.g. as the baseline

(``experiments:`` and ``evals:`` name the runs' recipes for :mod:`yfpo.reproduce`.)

Beyond the paper: the number of seeds, the 95 % interval of Avg, and a paired bootstrap p-value
of each row against the baseline row on the same problems. The paper-style table uses the headline
score (``correct`` in predictions.jsonl, see :mod:`yfpo.grading`); below it a scoring table gives,
per row and task, Avg under the headline, strict and flexible conventions and the truncated and
extracted rates, flagging rows above ``warn_rate`` (spec key, default 5 %). Writes
``<out>/<name>.md``, ``<name>.csv``, ``<name>_scoring.csv`` and ``<name>_curves.png`` (reward and
neuron margins over steps, accuracy per checkpoint: the paper's Figure 2) next to the spec.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from yfpo.errors import ConfigError, MissingError, run_cli

LAYOUTS = ("checkpoints", "tasks")
BOOTSTRAP_SAMPLES = 10_000
WARN_RATE = 0.05  # default spec `warn_rate`: the evaluation's warning threshold (conf/eval/*.yaml warn_rate)
# Per-checkpoint means read from predictions.jsonl for the scoring table (None: not recorded).
SCORING_KEYS = {"strict": "correct_strict", "flexible": "correct_flexible", "truncated": "truncated",
                "extracted": "extracted"}
SCORING_NOTE = ("Ckpt-k, Avg and Best above use the headline score: the answer after the last final-answer marker "
                "(\\boxed{}, 'The answer is', ####), else the last number (MATH-500: math-verify on the marked "
                "answer). strict: marked answers only; flexible: the last number (lm-eval's flexible-extract). "
                "truncated: share of completions that hit max_new_tokens; extracted: share with a marked answer. "
                "Means over checkpoints and seeds; blank: not recorded (an evaluation by an older yfpo).")


@dataclass
class RunResults:
    """Per-problem correctness of one run, ``{checkpoint: {problem id: 0/1}}`` for one task, and per
    checkpoint the means of :data:`SCORING_KEYS` (``{checkpoint: {name: float or None}}``)."""

    run: Path
    by_ckpt: dict[str, dict] = field(default_factory=dict)
    scoring: dict[str, dict] = field(default_factory=dict)


def _mean_of(rows: list[dict], key: str) -> float | None:
    """Mean of ``key`` over ``rows`` (booleans as 0/1); None when a row lacks it or holds None."""
    values = [r.get(key) for r in rows]
    return None if not values or any(v is None for v in values) else float(np.mean([float(v) for v in values]))


def read_run(run: Path, task: str, start: bool = False) -> RunResults:
    """The evaluated checkpoints ``ckpt-1..N`` of ``run`` (``ckpt-0``, the start model, is left out),
    or with ``start`` only ``ckpt-0``: a row for the model training started from (e.g. SFT)."""
    root = run / "eval" / task
    if not root.is_dir():
        raise MissingError(f"{root} not found: run `python -m yfpo.evaluate run_dir={run} eval={task}` first")
    res = RunResults(run)
    for ckpt in sorted(root.glob("ckpt-*"), key=lambda p: int(p.name.split("-")[1])):
        if (ckpt.name == "ckpt-0") != start or not (ckpt / "summary.json").is_file():
            continue
        rows = [json.loads(l) for l in (ckpt / "predictions.jsonl").read_text().splitlines() if l.strip()]
        res.by_ckpt[ckpt.name] = {r["id"]: float(r["correct"]) for r in rows}
        res.scoring[ckpt.name] = {name: _mean_of(rows, key) for name, key in SCORING_KEYS.items()}
    if not res.by_ckpt:
        raise MissingError(f"no finished evaluations under {root}: run `python -m yfpo.evaluate run_dir=...` first")
    return res


def per_problem(runs: list[RunResults], ckpts: list[str] | None = None) -> dict:
    """Mean correctness per problem over the given checkpoints (default: all) and over seeds."""
    acc: dict = {}
    for r in runs:
        for name in ckpts or r.by_ckpt:
            for pid, c in r.by_ckpt[name].items():
                acc.setdefault(pid, []).append(c)
    return {pid: float(np.mean(v)) for pid, v in acc.items()}


def paired_bootstrap_p(row: dict, base: dict, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> float:
    """Two-sided paired bootstrap p-value of ``mean(row - base)`` over the problems both have.

    Resamples problems with replacement; ``p = 2 * min(P(mean* <= 0), P(mean* >= 0))`` capped at 1.
    """
    ids = sorted(set(row) & set(base))
    if not ids:
        raise ConfigError("the row and its baseline share no problems: were they evaluated on the same task?")
    d = np.array([row[i] - base[i] for i in ids])
    if not d.any():
        return 1.0
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(samples, len(d)))].mean(axis=1)
    return float(min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())))


def format_p(p: float) -> str:
    """A p-value as the tables print it; 0 (no resample on the other side) is below the bootstrap's resolution."""
    return f"{p:.3f}" if p >= 1e-3 else f"<{1 / BOOTSTRAP_SAMPLES:g}" if p == 0 else "<0.001"


def checkpoint_row(runs: list[RunResults]) -> dict:
    """Ckpt-k accuracies (mean over seeds), Avg, Best, Avg's 95 % interval (normal, over problems)."""
    names = sorted(set.intersection(*(set(r.by_ckpt) for r in runs)), key=lambda n: int(n.split("-")[1]))
    ckpt_acc = {n: float(np.mean([np.mean(list(r.by_ckpt[n].values())) for r in runs])) for n in names}
    avg_pp = np.array(list(per_problem(runs, names).values()))
    half = 1.96 * avg_pp.std(ddof=1) / np.sqrt(len(avg_pp)) if len(avg_pp) > 1 else 0.0
    return {"ckpts": ckpt_acc, "avg": float(np.mean(list(ckpt_acc.values()))), "best": max(ckpt_acc.values()),
            "ci95": (float(avg_pp.mean() - half), float(avg_pp.mean() + half)), "seeds": len(runs)}


def spec_tasks(spec: dict) -> list[str]:
    """The tasks that get a table of their own: one for the tasks layout, one per task otherwise."""
    if spec.get("layout", "checkpoints") == "tasks":
        return [spec["tasks"][0]]
    return spec["task"] if isinstance(spec["task"], list) else [spec["task"]]


def build(spec: dict, base_dir: Path, task: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the table described by ``spec`` (paths relative to ``base_dir``) for
    ``task`` (default: the first of :func:`spec_tasks`)."""
    header, table = _build(spec, base_dir, task or spec_tasks(spec)[0])
    keys = list(dict.fromkeys(k for r in spec["rows"] for k in (r.get("paper") or {})))
    if keys and (spec.get("layout") == "tasks" or (task or spec_tasks(spec)[0]) == spec.get("paper_task", spec_tasks(spec)[0])):
        header = header + [f"paper {k}" for k in keys]
        table = [t + [str((r.get("paper") or {}).get(k, "")) for k in keys] for t, r in zip(table, spec["rows"])]
    return header, table


def _build(spec: dict, base_dir: Path, task: str) -> tuple[list[str], list[list[str]]]:
    layout = spec.get("layout", "checkpoints")
    if layout not in LAYOUTS:
        raise ConfigError(f"{spec['name']}: layout={layout!r}, choose one of {LAYOUTS}")
    tasks = spec["tasks"] if layout == "tasks" else [task]
    rows = spec["rows"]
    results = {(i, t): [read_run(base_dir / r, t, row.get("start", False)) for r in row["runs"]]
               for i, row in enumerate(rows) for t in tasks}
    baseline = {row["data"]: i for i, row in enumerate(rows) if row["method"] == spec["baseline"]}
    if layout == "tasks":
        header = ["data", "method", "lambda", "seeds"] + [f"{t} (best)" for t in tasks]
        table = [[str(r["data"]), r["method"], _fmt_lambda(r), str(len(r["runs"]))]
                 + [f"{checkpoint_row(results[(i, t)])['best']:.4f}" for t in tasks] for i, r in enumerate(rows)]
        return header, table
    stats = {i: checkpoint_row(results[(i, task)]) for i in range(len(rows))}
    n_ckpts = max(len(s["ckpts"]) for s in stats.values())
    header = (["data", "method", "lambda", "seeds"] + [f"Ckpt-{k}" for k in range(1, n_ckpts + 1)]
              + ["Avg", "Avg 95% CI", "Best", "dAvg", "dBest", "p (vs baseline)"])
    table = []
    for i, row in enumerate(rows):
        s, b = stats[i], baseline.get(row["data"])
        ckpts = [f"{s['ckpts'][f'ckpt-{k}']:.4f}" if f"ckpt-{k}" in s["ckpts"] else "" for k in range(1, n_ckpts + 1)]
        if b is None or b == i:
            delta = ["", "", ""]
        else:
            p = paired_bootstrap_p(per_problem(results[(i, task)]), per_problem(results[(b, task)]), seed=spec.get("seed", 0))
            delta = [f"{s['avg'] - stats[b]['avg']:+.4f}", f"{s['best'] - stats[b]['best']:+.4f}",
                     format_p(p)]
        lo, hi = s["ci95"]
        table.append([str(row["data"]), row["method"], _fmt_lambda(row), str(s["seeds"]), *ckpts,
                      f"{s['avg']:.4f}", f"[{lo:.3f}, {hi:.3f}]", f"{s['best']:.4f}", *delta])
    return header, table


def _fmt_lambda(row: dict) -> str:
    return "" if row.get("lambda") is None else str(row["lambda"])


def scoring_table(spec: dict, base_dir: Path, tasks: list[str]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and warnings of the scoring table: per spec row and task, Avg under the headline,
    strict and flexible conventions, and the truncated and extracted rates (means over checkpoints
    ``ckpt-1..N`` and seeds). A row is flagged when any checkpoint's truncated share, or share
    without a marked answer, exceeds the spec's ``warn_rate``."""
    limit = spec.get("warn_rate", WARN_RATE)
    header = ["data", "method", "lambda", "task", "Avg", "Avg strict", "Avg flexible", "truncated", "extracted", "warning"]
    checks = {"truncated": lambda c: c["truncated"] is not None and c["truncated"] > limit,
              "no answer": lambda c: c["extracted"] is not None and 1 - c["extracted"] > limit}
    table, warnings = [], []
    for row in spec["rows"]:
        for task in tasks:
            runs = [read_run(base_dir / r, task, row.get("start", False)) for r in row["runs"]]
            per_ckpt = [r.scoring[c] for r in runs for c in r.by_ckpt]
            means = [_mean_of(per_ckpt, k) for k in SCORING_KEYS]
            over = [what for what, bad in checks.items() if any(bad(c) for c in per_ckpt)]
            label = f"{row['data']} {row['method']}" + (f" λ={row['lambda']}" if row.get("lambda") is not None else "")
            warnings += [f"{label} [{task}]: {what} above {limit:.0%} in some checkpoint" for what in over]
            table.append([str(row["data"]), row["method"], _fmt_lambda(row), task, f"{checkpoint_row(runs)['avg']:.4f}",
                          *("" if m is None else f"{m:.4f}" for m in means), ", ".join(f"{w} > {limit:.0%}" for w in over)])
    return header, table, warnings


def markdown(title: str, header: list[str], table: list[list[str]], note: str = "") -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in table] + ([("\n" + note)] if note else [])) + "\n"


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` points (fewer at the start): a trend under per-batch noise."""
    return [float(np.mean(values[max(0, i + 1 - window) : i + 1])) for i in range(len(values))]


def plot_curves(spec: dict, base_dir: Path, out: Path) -> None:
    """Reward margin and neuron margin over steps (faint: as logged per batch; solid: a trailing mean
    over a tenth of the points), and accuracy per checkpoint from the start model (``ckpt-0``) on,
    one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    task = spec_tasks(spec)[0]
    for n, row in enumerate(r for r in spec["rows"] if not r.get("start")):  # the start model has no curves
        label = row["method"] + (f" λ={row['lambda']}" if row.get("lambda") is not None else "")
        color = f"C{n}"
        run = base_dir / row["runs"][0]
        metrics = run / "logs" / "metrics.csv"
        if metrics.is_file():
            with open(metrics) as f:
                logged = list(csv.DictReader(f))
            for ax, key in zip(axes[:2], ("rewards/margins", "neuron/margin")):
                pts = [(int(r["step"]), float(r[key])) for r in logged if r.get(key)]
                if pts:
                    steps, values = zip(*pts)
                    ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.8)
                    ax.plot(steps, smooth(list(values), max(1, len(values) // 10)), color=color, label=label)
        try:
            start = read_run(run, task, start=True).by_ckpt
        except MissingError:  # the start model was not evaluated: the line begins at ckpt-1
            start = {}
        points = {**start, **read_run(run, task).by_ckpt}
        ks = sorted(points, key=lambda n: int(n.split("-")[1]))
        axes[2].plot([int(k.split("-")[1]) for k in ks], [np.mean(list(points[k].values())) for k in ks], "o-",
                     color=color, label=label)
    for ax, title in zip(axes, ("rewards/margins", "neuron/margin", f"{task} accuracy per checkpoint (0: start)")):
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("step")
    axes[2].set_xlabel("checkpoint")
    axes[2].xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def make_tables(spec_path: Path, base_dir: Path = Path("."), out: Path | None = None) -> str:
    """Build one spec's Markdown, CSV and curves (in ``out``, default: next to the spec)."""
    spec = yaml.safe_load(spec_path.read_text())
    out = out or spec_path.parent
    out.mkdir(parents=True, exist_ok=True)
    tasks, parts = spec_tasks(spec), []
    for task in tasks:
        header, table = build(spec, base_dir, task)
        title = spec.get("title", spec["name"]) + (f" [{task}]" if len(tasks) > 1 else "")
        parts.append(markdown(title, header, table))
        stem = spec["name"] + (f"_{task}" if len(tasks) > 1 else "")
        with open(out / f"{stem}.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *table])
    score_tasks = spec["tasks"] if spec.get("layout") == "tasks" else tasks
    header, table, warnings = scoring_table(spec, base_dir, score_tasks)
    parts.append(markdown(spec.get("title", spec["name"]) + ": scoring conventions and generation health",
                          header, table, SCORING_NOTE))
    with open(out / f"{spec['name']}_scoring.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    for w in warnings:
        print(f"[yfpo] warning: {spec['name']}: {w}", file=sys.stderr)
    md = "\n".join(parts)
    (out / f"{spec['name']}.md").write_text(md)
    plot_curves(spec, base_dir, out / f"{spec['name']}_curves.png")
    return md


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m yfpo.tables experiments/NAME.yaml [...]")
    for path in argv:
        print(run_cli(make_tables, Path(path)))


if __name__ == "__main__":
    main(sys.argv[1:])
