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
from pathlib import Path

import numpy as np
import yaml

from yfpo.pipelines import stats
from yfpo.pipelines.cells import UNKNOWN, format_lambda, markdown
from yfpo.pipelines.curves import plot_curves
from yfpo.pipelines.paper_table import STATS_NOTE, baseline_pairs, build, spec_tasks
from yfpo.pipelines.results import SCORING_KEYS, Row, mean_of, read_row, row_label, row_runs
from yfpo.train.checkpoints import DONE
from yfpo.core.errors import ConfigError, MissingError, run_cli
from yfpo.core.log import STDERR, log

WARN_RATE = 0.05  # default spec `warn_rate`: the evaluation's warning threshold (conf/eval/*.yaml warn_rate)
SCORING_NOTE = ("Ckpt-k, Avg and Best above use the headline score: the answer after the last final-answer marker "
                "(\\boxed{}, 'The answer is', ####), else the last number (MATH-500: math-verify on the marked "
                "answer). strict: marked answers only; flexible: the last number (lm-eval's flexible-extract). "
                "truncated: share of completions that hit max_new_tokens; extracted: share with a marked answer. "
                "Means over checkpoints and seeds; blank: not in the predictions.")


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
            table.append([task, str(r["data"]), r["method"], format_lambda(r), "start" if r.get("start") else str(rows[i].seeds),
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
            means = [mean_of(per_ckpt, k) for k in SCORING_KEYS]
            over = [what for what, bad in checks.items() if any(bad(c) for c in per_ckpt)]
            warnings += [f"{row_label(row)} [{task}]: {what} above {limit:.0%} in some checkpoint" for what in over]
            avg = np.mean([np.mean(list(r.by_ckpt[c].values())) for r in runs for c in r.by_ckpt])
            table.append([str(row["data"]), row["method"], format_lambda(row), task, f"{avg:.4f}",
                          *("" if m is None else f"{m:.4f}" for m in means), ", ".join(f"{w} > {limit:.0%}" for w in over)])
    return header, table, warnings


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
