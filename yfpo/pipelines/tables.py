"""``python -m yfpo.tables experiments/NAME.yaml ... [--seeds-for D]``: paper-style tables and plots
from evaluated runs.

A table spec (YAML) names its rows and the run directories behind each (several = seeds):

    name: demo
    title: ...
    task: synthetic            # which eval/<task>/ results to read; a list gives one table each
    layout: checkpoints        # checkpoints: Ckpt-1..N, Avg, Best, dAvg, dBest (YFPO Tables 1-2)
                               # tasks: one column group per task in `tasks` (the FDT table)
    tasks: [gsm8k, math500]    # tasks layout only
    baseline: DPO              # the method every row is compared with, on the same data
    paper_task: gsm8k          # the task of the rows' published numbers (default: the first)
    dev: {gsm8k: gsm8k_dev}    # optional: per task, the evaluation (eval.name) that selects checkpoints
    rows:
      - {data: synthetic, method: DPO, lambda: null, runs: ["multirun/demo/method=dpo,seed=*"],
         paper: {Avg: 0.36, Best: 0.37}}   # optional: published numbers, shown as "paper <key>"
      - {data: synthetic, method: SFT, start: true, runs: [runs/demo/method=dpo]}
                               # start: the runs' starting model (their ckpt-0), e.g. as the baseline

``runs`` entries are paths relative to the base directory, or glob patterns (``seed=*``): each
match is one seed. (``experiments:`` and ``evals:`` name the runs' recipes for :mod:`yfpo.pipelines.reproduce`.)

Beyond the paper, inference whose unit is the training run (:mod:`yfpo.pipelines.stats`): each row's seeds
and per-seed Avg, Avg's 95 % interval over seeds and problems, and against the baseline row on the
same data the difference with its interval, a p-value, its Holm adjustment over the table's rows,
the smallest difference the comparison could detect (80 % power, alpha 0.05), and a verdict. One
seed leaves the between-run variance unknown, and then the table says so instead of a p-value. Best
is the maximum over checkpoints of the test score itself (selected on test): shown for the paper,
never tested. With ``dev``, each seed's checkpoint is chosen on the dev evaluation and its test
score reported (``Dev-sel.``) and tested. All seeds of a row must have the same checkpoints and
problems, and a row the same problems as its baseline; anything else is refused, not averaged.

The paper-style table uses the headline score (``correct`` in predictions.jsonl, see
:mod:`yfpo.evaluate.grading`); below it a scoring table gives, per row and task, Avg under the headline,
strict and flexible conventions and the truncated and extracted rates, flagging rows above
``warn_rate`` (spec key, default 5 %). Writes ``<out>/<name>.md``, ``<name>.csv``,
``<name>_scoring.csv`` and ``<name>_curves.png`` (reward and neuron margins over steps, accuracy per
checkpoint: the paper's Figure 2) next to the spec.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from yfpo.pipelines import stats
from yfpo.train.checkpoints import DONE, ckpt_index, ckpt_name
from yfpo.core.config import CONF_DIR
from yfpo.core.errors import ConfigError, MissingError, run_cli
from yfpo.core.log import STDERR, log

LAYOUTS = ("checkpoints", "tasks")
WARN_RATE = 0.05  # default spec `warn_rate`: the evaluation's warning threshold (conf/eval/*.yaml warn_rate)
UNKNOWN = "unknown (1 seed)"  # a cell whose between-run variance cannot be estimated
# Per-checkpoint means read from predictions.jsonl for the scoring table (None: not recorded).
SCORING_KEYS = {"strict": "correct_strict", "flexible": "correct_flexible", "truncated": "truncated",
                "extracted": "extracted"}
SCORING_NOTE = ("Ckpt-k, Avg and Best above use the headline score: the answer after the last final-answer marker "
                "(\\boxed{}, 'The answer is', ####), else the last number (MATH-500: math-verify on the marked "
                "answer). strict: marked answers only; flexible: the last number (lm-eval's flexible-extract). "
                "truncated: share of completions that hit max_new_tokens; extracted: share with a marked answer. "
                "Means over checkpoints and seeds; blank: not in the predictions.")
STATS_NOTE = ("Statistics (yfpo/pipelines/stats.py): the unit of replication is the training run. Intervals and p-values "
              "combine the variance between seeds and between problems (t on Welch-Satterthwaite degrees of "
              "freedom), paired on problems against the baseline; a start row (the model every run starts from) "
              "has no between-run variance. Read `p Holm` when scanning several rows against one baseline, "
              "`p` for one planned comparison; `vs baseline` is the Holm verdict at 0.05. `detectable` is the "
              "smallest true dAvg this comparison finds with 80 % power at 0.05. "
              f"`{UNKNOWN}`: between-run variance unknown with one training run per row, so no interval or "
              "p-value is given: train more seeds (e.g. seed=1,2,3). Best is the maximum over checkpoints "
              "selected on the test set itself, so it is biased upwards and never tested; Dev-sel. is the test "
              "score of each seed's checkpoint chosen on the dev evaluation.")


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


def evaluate_hint(run: Path, name: str) -> str:
    """The command that fills ``run/eval/<name>/``, pasteable into a shell; a sweep directory's ``,``
    and ``=`` need no quotes (``python -m yfpo.evaluate`` quotes an existing path for Hydra)."""
    group = (Path(CONF_DIR) / "eval" / f"{name}.yaml").is_file()
    return (f"python -m yfpo.evaluate {shlex.quote(f'run_dir={run}')} " + (f"eval={name}" if group else
            f"eval.name={name} (with the eval=... settings that evaluation used)"))


def read_run(run: Path, task: str, start: bool = False) -> RunResults:
    """The evaluated checkpoints ``ckpt-1..N`` of ``run`` (``ckpt-0``, the start model, is left out),
    or with ``start`` only ``ckpt-0``: a row for the model training started from (e.g. SFT)."""
    root = run / "eval" / task
    if not run.is_dir():
        raise MissingError(f"{run} not found: train that run first (the table spec's `experiments:` name its recipe)")
    # a checkpoint evaluated by itself (run_dir=<run>/checkpoints/ckpt-k) keeps its results inside it
    found = {p.name: p for p in run.glob(f"checkpoints/ckpt-*/eval/{task}/ckpt-*") if p.name == p.parents[2].name}
    found.update({p.name: p for p in root.glob("ckpt-*")})  # the run's own evaluation first
    if not found:
        raise MissingError(f"{root} not found: run `{evaluate_hint(run, task)}` first")
    res = RunResults(run)
    for ckpt in sorted(found.values(), key=lambda p: ckpt_index(p.name)):
        if (ckpt.name == ckpt_name(0)) != start or not (ckpt / "summary.json").is_file():
            continue
        rows = [json.loads(l) for l in (ckpt / "predictions.jsonl").read_text().splitlines() if l.strip()]
        res.by_ckpt[ckpt.name] = {r["id"]: float(r["correct"]) for r in rows}
        res.scoring[ckpt.name] = {name: _mean_of(rows, key) for name, key in SCORING_KEYS.items()}
    if not res.by_ckpt:
        raise MissingError(f"no finished evaluations under {root}: run `{evaluate_hint(run, task)}` first")
    return res


def row_runs(row: dict, base_dir: Path) -> list[Path]:
    """The run directories of a spec row, one per seed: its ``runs`` entries, glob patterns expanded
    (an entry that names an existing directory is taken as it is, ``[`` in a swept list value included)."""
    out = []
    for entry in row["runs"]:
        if glob.has_magic(entry) and not (base_dir / entry).is_dir():
            matches = sorted(Path(p) for p in glob.glob(str(base_dir / entry)))
            if not matches:
                raise MissingError(f"row {_label(row)}: no run directory matches {base_dir / entry}: "
                                   "train those runs first (see experiments/README.md)")
            out += matches
        else:
            out.append(base_dir / entry)
    return out


def read_row(row: dict, base_dir: Path, task: str) -> list[RunResults]:
    """Every seed's results of a spec row for ``task``."""
    return [read_run(r, task, row.get("start", False)) for r in row_runs(row, base_dir)]


def common(runs: list[RunResults], label: str, task: str) -> tuple[list[str], list]:
    """The checkpoints and problem ids every seed of a row shares; seeds evaluated on other
    checkpoints or other problems are refused, since a mean over them would mix different things."""
    ckpts = list(runs[0].by_ckpt)
    ids = sorted(runs[0].by_ckpt[ckpts[0]], key=str)
    for r in runs:
        if list(r.by_ckpt) != ckpts:
            short = r if len(r.by_ckpt) < len(ckpts) else runs[0]  # the one to evaluate further
            raise ConfigError(f"row {label}: {r.run} has evaluated checkpoints {list(r.by_ckpt)}, {runs[0].run} has "
                              f"{ckpts}: evaluate the missing ones (`{evaluate_hint(short.run, task)}`) or leave the run out")
        for name, scores in r.by_ckpt.items():
            if sorted(scores, key=str) != ids:
                raise ConfigError(f"row {label}: {r.run} {name} was evaluated on {len(scores)} problems, "
                                  f"{runs[0].run} {ckpts[0]} on {len(ids)} other ones (eval.limit or eval.path differ): "
                                  "evaluate every run on the same problems")
    return ckpts, ids


def matrix(runs: list[RunResults], ckpts: list[str], ids: list) -> np.ndarray:
    """``c[seed, checkpoint, problem]`` of one row."""
    return np.array([[[r.by_ckpt[k][i] for i in ids] for k in ckpts] for r in runs], dtype=float)


@dataclass
class Row:
    """One spec row on one task: its seeds' correctness ``c[seed, checkpoint, problem]``."""

    label: str
    ckpts: list[str]
    ids: list
    c: np.ndarray
    fixed: bool  # the start model: one model, no between-run variance
    dev_choice: list[str] | None = None  # per seed, the checkpoint chosen on dev

    @classmethod
    def read(cls, row: dict, base_dir: Path, task: str, dev: str | None = None) -> "Row":
        runs = read_row(row, base_dir, task)
        ckpts, ids = common(runs, _label(row), task)
        out = cls(_label(row), ckpts, ids, matrix(runs, ckpts, ids), bool(row.get("start")))
        if dev and not row.get("start"):
            out.dev_choice = [dev_choice(d, ckpts, dev) for d in read_row(row, base_dir, dev)]
        return out

    @property
    def seeds(self) -> int:
        return self.c.shape[0]

    def ckpt_acc(self) -> dict[str, float]:
        """Per checkpoint, the accuracy (mean over seeds)."""
        return {k: float(self.c[:, j].mean()) for j, k in enumerate(self.ckpts)}

    def avg(self) -> stats.Arm:
        """Each seed's per-problem mean over the checkpoints (the paper's Avg)."""
        return stats.Arm(self.c.mean(axis=1), self.fixed)

    def dev_selected(self) -> stats.Arm | None:
        """Each seed's per-problem test correctness at its dev-chosen checkpoint."""
        if self.dev_choice is None:
            return None
        return stats.Arm(np.stack([self.c[s, self.ckpts.index(k)] for s, k in enumerate(self.dev_choice)]))

    def best(self) -> float:
        """The paper's Best: the maximum over checkpoints of the test accuracy (selected on test)."""
        return max(self.ckpt_acc().values())


def dev_choice(dev_run: RunResults, ckpts: list[str], dev: str) -> str:
    """The checkpoint of ``ckpts`` with the highest dev accuracy (on a tie, the earliest)."""
    missing = [k for k in ckpts if k not in dev_run.by_ckpt]
    if missing:
        raise MissingError(f"{dev_run.run / 'eval' / dev} has no {missing}: evaluate the dev set "
                           f"(`{evaluate_hint(dev_run.run, dev)}`)")
    return max(ckpts, key=lambda k: (np.mean(list(dev_run.by_ckpt[k].values())), -ckpt_index(k)))


def _label(row: dict) -> str:
    return f"{row['data']} {row['method']}" + (f" λ={row['lambda']}" if row.get("lambda") is not None else "")


def _fmt_lambda(row: dict) -> str:
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


def compare(rows: list[Row], pairs: list[tuple[int, int]], dev: bool = False) -> dict[int, dict]:
    """For each ``(row, baseline)`` index pair, the difference of Avg (or of the dev-selected score)
    and its test, Holm-adjusted over the family ``pairs``: ``{row: {diff, p, p_holm, verdict}}``."""
    out = {}
    for i, b in pairs:
        if rows[i].ids != rows[b].ids:
            raise ConfigError(f"row {rows[i].label} and its baseline {rows[b].label} were evaluated on different "
                              f"problems ({len(rows[i].ids)} vs {len(rows[b].ids)}): evaluate both with the same eval settings")
        if not (rows[i].fixed or rows[b].fixed) and rows[i].ckpts != rows[b].ckpts:  # Avg over other checkpoints
            raise ConfigError(f"row {rows[i].label} has evaluated checkpoints {rows[i].ckpts}, its baseline "
                              f"{rows[b].label} {rows[b].ckpts}: evaluate the missing ones so that both Avgs cover the same")
        arm, base = (rows[i].dev_selected(), rows[b].dev_selected()) if dev else (rows[i].avg(), rows[b].avg())
        if arm is None:
            continue
        base = base or rows[b].avg()  # a start baseline has no checkpoints to choose among
        out[i] = {"diff": stats.difference(arm, base)}
    adjusted = stats.holm([r["diff"].p() for r in out.values()])
    for r, p_holm in zip(out.values(), adjusted):
        r.update(p=r["diff"].p(), p_holm=p_holm, verdict=verdict(r["diff"], p_holm))
    return out


def spec_tasks(spec: dict) -> list[str]:
    """The tasks that get a table of their own: one for the tasks layout, one per task otherwise."""
    if spec.get("layout", "checkpoints") == "tasks":
        return [spec["tasks"][0]]
    return spec["task"] if isinstance(spec["task"], list) else [spec["task"]]


def baseline_pairs(spec: dict) -> list[tuple[int, int]]:
    """``(row, baseline row)`` for every row that has a baseline on its data (the baseline itself
    excluded); a baseline that is no row's method is refused, not left as blank columns."""
    methods = [r["method"] for r in spec["rows"]]
    if spec.get("baseline") not in methods:
        raise ConfigError(f"{spec['name']}: baseline={spec.get('baseline')!r} is not the method of any row: "
                          f"choose one of {sorted(set(methods))}")
    baseline = {row["data"]: i for i, row in enumerate(spec["rows"]) if row["method"] == spec["baseline"]}
    return [(i, baseline[r["data"]]) for i, r in enumerate(spec["rows"]) if baseline.get(r["data"], i) != i]


def build(spec: dict, base_dir: Path, task: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the table described by ``spec`` (paths relative to ``base_dir``) for
    ``task`` (default: the first of :func:`spec_tasks`)."""
    task = task or spec_tasks(spec)[0]
    header, table = _build(spec, base_dir, task)
    keys = list(dict.fromkeys(k for r in spec["rows"] for k in (r.get("paper") or {})))
    if keys and (spec.get("layout") == "tasks" or task == spec.get("paper_task", spec_tasks(spec)[0])):
        header = header + [f"paper {k}" for k in keys]
        table = [t + [str((r.get("paper") or {}).get(k, "")) for k in keys] for t, r in zip(table, spec["rows"])]
    return header, table


def _build(spec: dict, base_dir: Path, task: str) -> tuple[list[str], list[list[str]]]:
    layout = spec.get("layout", "checkpoints")
    if layout not in LAYOUTS:
        raise ConfigError(f"{spec['name']}: layout={layout!r}, choose one of {LAYOUTS}")
    dev = spec.get("dev") or {}
    pairs = baseline_pairs(spec)
    rows_of = {t: [Row.read(r, base_dir, t, dev.get(t)) for r in spec["rows"]]
               for t in (spec["tasks"] if layout == "tasks" else [task])}
    head = ["data", "method", "lambda", "seeds"]
    lead = [[str(r["data"]), r["method"], _fmt_lambda(r), "start" if r.get("start") else str(row.seeds)]
            for r, row in zip(spec["rows"], rows_of[next(iter(rows_of))])]
    if layout == "tasks":
        header, table = head, lead
        for t, rows in rows_of.items():
            tests = compare(rows, pairs)
            sel = [row.dev_selected() for row in rows] if t in dev else None
            header = (header + [f"{t} Avg", f"{t} Best (test-sel.)"] + ([f"{t} Dev-sel."] if sel else [])
                      + [f"{t} p (Avg)", f"{t} p Holm", f"{t} detectable dAvg"])
            table = [cells + [f"{row.avg().y.mean():.4f}", f"{row.best():.4f}"]
                     + ([f"{sel[i].y.mean():.4f}" if sel[i] is not None else ""] if sel else [])
                     + ([format_p(tests[i]["p"]), format_p(tests[i]["p_holm"]), format_detectable(tests[i]["diff"])]
                        if i in tests else ["", "", ""])
                     for i, (cells, row) in enumerate(zip(table, rows))]
        return header, table
    rows = rows_of[task]
    n_ckpts = max(ckpt_index(k) for row in rows for k in row.ckpts)
    tests, dev_tests = compare(rows, pairs), compare(rows, pairs, dev=True) if task in dev else {}
    header = (head + [f"Ckpt-{k}" for k in range(1, n_ckpts + 1)]
              + ["Avg", "Avg 95% CI", "Avg per seed", "Best (test-sel.)"]
              + (["Dev-sel.", "dDev-sel.", "p (Dev-sel.)", "p Holm (Dev-sel.)"] if task in dev else [])
              + ["dAvg", "dAvg 95% CI", "p (Avg)", "p Holm", "detectable dAvg", "vs baseline", "dBest (test-sel.)"])
    by_row = dict(pairs)
    table = []
    for i, (cells, row) in enumerate(zip(lead, rows)):
        acc, avg = row.ckpt_acc(), stats.mean(row.avg())
        ckpts = [f"{acc[ckpt_name(k)]:.4f}" if ckpt_name(k) in acc else "" for k in range(1, n_ckpts + 1)]
        dev_cells = []
        if task in dev:
            sel = row.dev_selected()
            t = dev_tests.get(i)
            dev_cells = [f"{sel.y.mean():.4f}" if sel is not None else "",
                         *((f"{t['diff'].value:+.4f}", format_p(t["p"]), format_p(t["p_holm"])) if t else ("", "", ""))]
        if i in tests:
            t, b = tests[i], rows[by_row[i]]
            d = t["diff"]
            delta = [f"{d.value:+.4f}", format_interval(d.interval()), format_p(t["p"]), format_p(t["p_holm"]),
                     format_detectable(d), t["verdict"], f"{row.best() - b.best():+.4f}"]
        else:
            delta = [""] * 7
        table.append(cells + ckpts + [f"{avg.value:.4f}", format_interval(avg.interval()), per_seed(row.avg()),
                                      f"{row.best():.4f}", *dev_cells, *delta])
    return header, table


def seeds_for(spec: dict, base_dir: Path, effect: float, problems: int | None = None) -> tuple[list[str], list[list[str]]]:
    """Per task and row against its baseline: the seeds per arm that would detect ``effect`` (a
    difference of Avg) with 80 % power at 0.05, from this table's own variance components, on
    ``problems`` problems (default: those evaluated)."""
    header = ["task", "data", "method", "lambda", "seeds now", "between-seed SD (row / baseline)", "problems", "seeds needed"]
    table = []
    for task in (spec["tasks"] if spec.get("layout") == "tasks" else spec_tasks(spec)):
        rows = [Row.read(r, base_dir, task) for r in spec["rows"]]
        for i, b in baseline_pairs(spec):
            n = stats.seeds_needed(effect, rows[i].avg(), rows[b].avg(), problems)
            r = spec["rows"][i]
            need = (UNKNOWN if not (rows[i].avg().known and rows[b].avg().known)
                    else str(n) if n else "not within 1000 (more problems needed)")
            sd = " / ".join("start" if x.fixed else UNKNOWN if x.seeds < 2 else f"{x.avg().seed_means().std(ddof=1):.4f}"
                            for x in (rows[i], rows[b]))
            table.append([task, str(r["data"]), r["method"], _fmt_lambda(r), "start" if r.get("start") else str(rows[i].seeds),
                          sd, str(problems or len(rows[i].ids)), need])
    return header, table


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
            runs = read_row(row, base_dir, task)
            per_ckpt = [r.scoring[c] for r in runs for c in r.by_ckpt]
            means = [_mean_of(per_ckpt, k) for k in SCORING_KEYS]
            over = [what for what, bad in checks.items() if any(bad(c) for c in per_ckpt)]
            warnings += [f"{_label(row)} [{task}]: {what} above {limit:.0%} in some checkpoint" for what in over]
            avg = np.mean([np.mean(list(r.by_ckpt[c].values())) for r in runs for c in r.by_ckpt])
            table.append([str(row["data"]), row["method"], _fmt_lambda(row), task, f"{avg:.4f}",
                          *("" if m is None else f"{m:.4f}" for m in means), ", ".join(f"{w} > {limit:.0%}" for w in over)])
    return header, table, warnings


def markdown(title: str, header: list[str], table: list[list[str]], note: str = "") -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in table] + ([("\n" + note)] if note else [])) + "\n"


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` points (fewer at the start): a trend under per-batch noise."""
    return [float(np.mean(values[max(0, i + 1 - window) : i + 1])) for i in range(len(values))]


def logged_curve(run: Path, key: str) -> dict[int, float]:
    """``{step: value}`` of one logged metric of a run (empty when the run logged none)."""
    metrics = run / "logs" / "metrics.csv"
    if not metrics.is_file():
        return {}
    with open(metrics) as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def plot_curves(spec: dict, base_dir: Path, out: Path) -> None:
    """Reward margin and neuron margin over steps, and accuracy per checkpoint from the start model
    (``ckpt-0``) on, one colour per row: the line is the mean over the row's seeds, the band their
    range (min to max). Margins are smoothed per seed first (a trailing mean over a tenth of the
    logged points), on the steps every seed logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    task = spec_tasks(spec)[0]
    for n, row in enumerate(r for r in spec["rows"] if not r.get("start")):  # the start model has no curves
        label = _label(row).split(" ", 1)[1]
        color = f"C{n}"
        runs = row_runs(row, base_dir)
        label += f" ({len(runs)} seeds)" if len(runs) > 1 else ""
        for ax, key in zip(axes[:2], ("rewards/margins", "neuron/margin")):
            curves = [logged_curve(run, key) for run in runs]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if all(curves) else []
            if steps:
                smoothed = np.array([smooth([c[t] for t in steps], max(1, len(steps) // 10)) for c in curves])
                ax.plot(steps, smoothed.mean(axis=0), color=color, label=label)
                ax.fill_between(steps, smoothed.min(axis=0), smoothed.max(axis=0), color=color, alpha=0.2, linewidth=0)
        try:
            start = read_run(runs[0], task, start=True).by_ckpt
        except MissingError:  # the start model was not evaluated: the line begins at ckpt-1
            start = {}
        r = Row.read(row, base_dir, task)
        points = {**{k: np.array([np.mean(list(v.values()))]) for k, v in start.items()},
                  **{k: r.c[:, j].mean(axis=1) for j, k in enumerate(r.ckpts)}}  # per checkpoint: each seed's accuracy
        ks = sorted(points, key=ckpt_index)
        xs, mean = [ckpt_index(k) for k in ks], [points[k].mean() for k in ks]
        axes[2].plot(xs, mean, "o-", color=color, label=label)
        axes[2].fill_between(xs, [points[k].min() for k in ks], [points[k].max() for k in ks], color=color, alpha=0.2,
                             linewidth=0)
    for ax, title in zip(axes, ("rewards/margins", "neuron/margin", f"{task} accuracy per checkpoint (0: start)")):
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle("line: mean over a row's seeds; band: their range (min to max)", fontsize=9)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("step")
    axes[2].set_xlabel("checkpoint")
    axes[2].xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def unfinished_note(spec: dict, base_dir: Path) -> str:
    """A line naming the trained runs of the spec whose training has not finished (no ``DONE``), or ''."""
    runs = sorted({str(r) for row in spec["rows"] if not row.get("start") for r in row_runs(row, base_dir) if not (r / DONE).is_file()})
    if not runs:
        return ""
    return (f"**Unfinished runs** (no {DONE}: training stopped before its last step, so their last checkpoints are "
            f"missing; run the same training command to finish them): {', '.join(runs)}\n")


def make_tables(spec_path: Path, base_dir: Path = Path("."), out: Path | None = None, baseline: str | None = None) -> str:
    """Build one spec's Markdown, CSV and curves (in ``out``, default: next to the spec); runs whose
    training has not finished are named at the top and in a warning."""
    spec = load_spec(spec_path, baseline)
    out = out or spec_path.parent
    out.mkdir(parents=True, exist_ok=True)
    unfinished = unfinished_note(spec, base_dir)
    tasks, parts = spec_tasks(spec), [unfinished] if unfinished else []
    for task in tasks:
        header, table = build(spec, base_dir, task)
        title = spec.get("title", spec["name"]) + (f" [{task}]" if len(tasks) > 1 else "")
        parts.append(markdown(title, header, table, STATS_NOTE))
        stem = spec["name"] + (f"_{task}" if len(tasks) > 1 else "")
        with open(out / f"{stem}.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *table])
    score_tasks = spec["tasks"] if spec.get("layout") == "tasks" else tasks
    header, table, warnings = scoring_table(spec, base_dir, score_tasks)
    parts.append(markdown(spec.get("title", spec["name"]) + ": scoring conventions and generation health",
                          header, table, SCORING_NOTE))
    with open(out / f"{spec['name']}_scoring.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    for w in warnings + ([unfinished.replace("**", "").strip()] if unfinished else []):
        log.warning(f"{spec['name']}: {w}", extra=STDERR)
    md = "\n".join(parts)
    (out / f"{spec['name']}.md").write_text(md)
    plot_curves(spec, base_dir, out / f"{spec['name']}_curves.png")
    return md


def load_spec(spec_path: Path, baseline: str | None = None) -> dict:
    """A table spec, with ``baseline`` (a method of its rows) in place of its own when given."""
    if not spec_path.is_file():
        raise MissingError(f"{spec_path}: no such table spec (see experiments/*.yaml)")
    spec = yaml.safe_load(spec_path.read_text())
    layout = spec.get("layout", "checkpoints") if isinstance(spec, dict) else None
    needed = ["name", "baseline", "rows", "tasks" if layout == "tasks" else "task"]
    missing = [k for k in needed if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise ConfigError(f"{spec_path}: the table spec needs the keys {missing} (format: python -m yfpo.tables --help, "
                          "or the docstring of yfpo/pipelines/tables.py)")
    if baseline is not None:
        spec["baseline"] = baseline  # checked, as the spec's own, by baseline_pairs
    return spec


def power_report(spec_path: Path, effect: float, problems: int | None, baseline: str | None = None,
                 base_dir: Path = Path(".")) -> str:
    """Markdown: :func:`seeds_for` of one spec."""
    spec = load_spec(spec_path, baseline)
    header, table = seeds_for(spec, base_dir, effect, problems)
    return markdown(f"{spec['name']}: seeds per arm to detect dAvg = {effect:+g} with 80 % power at 0.05", header,
                    table, "From this table's own between-seed, seed x problem and arm x problem variances "
                           "(yfpo/pipelines/stats.py seeds_needed); both arms get that many seeds.")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m yfpo.tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", type=Path, help="table specs, e.g. experiments/yfpo_table2.yaml")
    parser.add_argument("--seeds-for", type=float, metavar="D",
                        help="instead of the tables: seeds per arm needed to detect a difference D of Avg (e.g. 0.0076)")
    parser.add_argument("--problems", type=int, help="with --seeds-for: assume this many test problems (default: those evaluated)")
    parser.add_argument("--baseline", metavar="METHOD", help="compare every row with this method instead of the spec's `baseline`")
    args = parser.parse_args(argv)
    for path in args.specs:
        if args.seeds_for is not None:
            print(run_cli(power_report, path, args.seeds_for, args.problems, args.baseline))
        else:
            print(run_cli(make_tables, path, baseline=args.baseline))

