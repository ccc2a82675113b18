"""The paper-style table of one spec and task, in its layout (``checkpoints``: Ckpt-1..N, Avg, Best;
``tasks``: one column group per task), with each row's comparison against its baseline."""

from __future__ import annotations

from pathlib import Path

from yfpo.pipelines import stats
from yfpo.pipelines.cells import UNKNOWN, format_detectable, format_interval, format_lambda, format_p, per_seed, verdict
from yfpo.pipelines.results import Row
from yfpo.train.checkpoints import ckpt_index, ckpt_name
from yfpo.core.errors import ConfigError

LAYOUTS = ("checkpoints", "tasks")
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
    lead = [[str(r["data"]), r["method"], format_lambda(r), "start" if r.get("start") else str(row.seeds)]
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
