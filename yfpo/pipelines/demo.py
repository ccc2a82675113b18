"""``python -m yfpo.demo``: the whole pipeline on the embedded offline default, then the tables.

Stages run as the CLI commands a user would type (settings: ``conf/experiment/demo.yaml``):

1. ``python -m yfpo.neurons neurons=attnlrp`` and ``neurons=random`` (the first builds and
   SFT-trains the tiny model when it is not cached);
2. ``python -m yfpo.pairs``: on-policy pairs sampled from the SFT model, every step checked;
3. ``python -m yfpo.train -m +variant=...`` : one sweep (one process) of the arms in
   ``conf/variant/`` x ``demo.seeds``;
4. ``python -m yfpo.evaluate run_dir=multirun/demo``: every arm and the SFT model on all test problems;
5. the tables (:mod:`yfpo.pipelines.tables`): SFT as the baseline (seed-level intervals and p-values) and
   the curves (the paper's Figure 2), plus what the logged metrics show of each mechanism and the
   arm pairs of ``demo.compare`` tested against each other at the seed level.

Finished stages are skipped on a re-run, and an interrupted one resumes.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from yfpo.pipelines import stats
from yfpo.core.config import compose_config
from yfpo.core.errors import ConfigError, MissingError
from yfpo.pipelines.cells import format_detectable, format_interval, format_p, per_seed, verdict
from yfpo.pipelines.results import Row
from yfpo.pipelines.tables import make_tables

# Logged metrics whose means over the first and last quarter of training say what each arm did (TRL's names).
MECHANISMS = ("logps/chosen", "logps/rejected", "rewards/margins", "neuron/margin", "train/nll")
LABELS = {"dpo": ("DPO", None), "dpo_nll": ("DPO+NLL", None), "yfpo_attnlrp": ("YFPO (AttnLRP)", "lambda"),
          "yfpo_random": ("YFPO (random)", "lambda"), "fdt": ("FDT", None)}


def sh(module: str, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", module, *overrides]
    print(f"\n[demo] $ python -m {module} {' '.join(overrides)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd)
    if done.returncode:  # the stage has printed its own error
        print(f"[demo] stopped: `python -m {module}` exited with status {done.returncode}", file=sys.stderr)
        sys.exit(done.returncode)
    print(f"[demo] python -m {module}: {time.perf_counter() - start:.0f} s", flush=True)


def window_means(metrics_csv: Path, keys: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Mean of each metric over the first and over the last quarter of its logged steps."""
    logged: dict[str, list[float]] = {k: [] for k in keys}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for k in keys:
                if row.get(k):
                    logged[k].append(float(row[k]))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {k: (mean(v[: max(1, len(v) // 4)]), mean(v[-max(1, len(v) // 4):])) for k, v in logged.items() if v}


def label(variant: str) -> str:
    """The arm's name in the tables (``LABELS``; the variant's own name otherwise)."""
    return LABELS.get(variant, (variant,))[0]


def identity(overrides: list[str]) -> str:
    """Command-line overrides as a comparable key: parsed by Hydra, so that ``3e-5`` and Hydra's
    rewritten ``3e-05`` are the same, and sorted, so that their order does not matter."""
    parsed = {o.get_key_element(): o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    return repr(sorted(parsed.items(), key=str))


def find_runs(sweep: Path, base: list[str], variants, seeds) -> dict[str, list[str]]:
    """variant -> the finished run directory of each seed, as recorded by Hydra in each job's
    ``.hydra/overrides.yaml`` (the directory names depend on every override the user added)."""
    by_overrides = {}
    for done in sweep.glob("*/DONE"):
        recorded = yaml.safe_load((done.parent / ".hydra" / "overrides.yaml").read_text())
        by_overrides[identity(recorded)] = str(done.parent)
    runs, missing = {}, []
    for v in variants:
        for s in seeds:
            want = identity([*base, f"+variant={v}", f"seed={s}"])
            if want in by_overrides:
                runs.setdefault(v, []).append(by_overrides[want])
            else:
                missing.append(f"+variant={v} seed={s}")
    if missing:
        raise MissingError(f"no finished run under {sweep} for {missing}; was hydra.sweep.dir changed?")
    return runs


def table_spec(cfg, runs: dict[str, list[str]]) -> dict:
    """The paper-style table of the arms (``runs``: variant -> run directories, one per seed), SFT first."""
    rows = [{"data": "synthetic", "method": "SFT", "lambda": None, "start": True, "runs": runs[cfg.demo.variants[0]][:1]}]
    for v in cfg.demo.variants:
        method, lam = LABELS.get(v, (v, None))
        rows.append({"data": "synthetic", "method": method, "lambda": cfg.demo[lam] if lam else None, "runs": runs[v]})
    return {"name": cfg.name, "task": cfg.eval.task, "layout": "checkpoints", "baseline": "SFT",
            "title": f"Demo: tiny Qwen2 after SFT, then {cfg.trainer.max_steps} steps of each method on "
                     f"on-policy pairs; {cfg.eval.task} test (all problems), seeds {list(cfg.demo.seeds)}",
            "rows": rows}


def mechanisms(cfg, runs: dict[str, list[str]]) -> str:
    """Markdown: per arm, the first -> last quarter's mean of :data:`MECHANISMS` (mean over seeds), and
    on how many seeds it moved that way: a direction is stated only where every seed agrees."""
    header = ["arm", *MECHANISMS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in cfg.demo.variants:
        logged = [window_means(Path(r) / "logs" / "metrics.csv", MECHANISMS) for r in runs[v]]
        cells = []
        for k in MECHANISMS:
            pairs = [m[k] for m in logged if k in m]
            if len(pairs) < len(logged):
                cells.append("")
                continue
            first, last = (sum(p[j] for p in pairs) / len(pairs) for j in (0, 1))
            up = sum(p[1] > p[0] for p in pairs)
            trend = "up on every seed" if up == len(pairs) else "down on every seed" if up == 0 else f"up on {up} of {len(pairs)} seeds"
            cells.append(f"{first:.4g} -> {last:.4g} ({trend})")
        lines.append("| " + " | ".join([label(v), *cells]) + " |")
    return (f"What training did (mean over the {len(cfg.demo.seeds)} seeds of the first quarter of the logged steps -> "
            "the last quarter's; each arm's neuron/margin is on its own neuron set):\n\n" + "\n".join(lines) + "\n")


def versus(cfg, runs: dict[str, list[str]]) -> str:
    """Markdown: the arm pairs of ``demo.compare`` on the same problems (Avg over checkpoints), tested
    at the seed level (:mod:`yfpo.pipelines.stats`) and Holm-adjusted over the pairs: the differences between
    the methods, which the SFT-baseline table does not test. Only resolved ones get a direction."""
    arms = {v: Row.read({"data": "synthetic", "method": label(v), "runs": rs}, Path("."), cfg.eval.task)
            for v, rs in runs.items()}
    diffs = [stats.difference(arms[a].avg(), arms[b].avg()) for a, b in cfg.demo.compare]
    adjusted = stats.holm([d.p() for d in diffs])
    lines = ["| arm | accuracy per seed | against | its accuracy per seed | difference | 95% CI | p | p Holm | detectable | verdict |",
             "|" + "---|" * 10]
    for (a, b), d, p_holm in zip(cfg.demo.compare, diffs, adjusted):
        lines.append(f"| {label(a)} | {per_seed(arms[a].avg())} | {label(b)} | {per_seed(arms[b].avg())} | "
                     f"{d.value:+.4f} | {format_interval(d.interval())} | {format_p(d.p())} | {format_p(p_holm)} | "
                     f"{format_detectable(d)} | {verdict(d, p_holm)} |")
    return ("Arms against each other (Avg over checkpoints; the seed-level test of yfpo/pipelines/stats.py, paired on "
            "problems, Holm-adjusted over these pairs; `unresolved`: the seeds do not tell the arms apart):\n\n"
            + "\n".join(lines) + "\n")


def worked(completion: str) -> bool:
    """Whether a completion works the problem (writes a step) rather than stating the answer alone (``#### N``)."""
    return not completion.strip().startswith("####")


def graded(predictions: Path) -> list[tuple[bool, bool]]:
    """``(worked, correct)`` of each problem in an evaluation's ``predictions.jsonl``."""
    return [(worked(r["completion"]), r["correct"]) for r in map(json.loads, predictions.read_text().splitlines())]


def headroom(cfg, runs: dict[str, list[str]]) -> str:
    """Markdown: what the start model leaves to learn. Its greedy test accuracy, overall and by how it
    answers (worked solution or the answer alone); on the pairs' questions its pass@k (k = ``pairs.samples``,
    at least one sample right at every step); and how the pairs' chosen and rejected responses answer."""
    start = Path(runs[cfg.demo.variants[0]][0]) / "eval" / cfg.eval.task / "ckpt-0" / "predictions.jsonl"
    greedy = graded(start)
    pairs_file = Path(cfg.pairs.out)
    meta = json.loads(pairs_file.with_name(pairs_file.name + ".meta.json").read_text())
    solved = sum(k > 0 for k in meta["correct_per_question"])
    pairs = [json.loads(l) for l in pairs_file.read_text().splitlines()]

    def accuracy(rows) -> str:
        return f"{sum(ok for _, ok in rows) / len(rows):.3f} ({sum(ok for _, ok in rows)}/{len(rows)})" if rows else "-"

    def answers(way: bool) -> str:
        rows = [r for r in greedy if r[0] == way]
        return f"{len(rows) / len(greedy):.3f} of answers; accuracy {accuracy(rows)}"

    def contrast(way: bool) -> str:
        chosen, rejected = (sum(worked(r[f"full_{side}"]) == way for r in pairs) for side in ("chosen", "rejected"))
        return f"chosen {chosen}, rejected {rejected}"

    lines = ["| | all | worked solution | answer alone |", "|---|---|---|---|",
             f"| SFT greedy, test | accuracy {accuracy(greedy)} | {answers(True)} | {answers(False)} |",
             f"| SFT pass@{meta['samples_per_question']} (T={cfg.pairs.temperature}), pairs' questions | "
             f"{solved / len(meta['correct_per_question']):.3f} ({solved}/{len(meta['correct_per_question'])}) | | |",
             f"| pairs | {len(pairs)} | {contrast(True)} | {contrast(False)} |"]
    return "What the start model leaves to learn:\n\n" + "\n".join(lines) + "\n"


def by_style(cfg, runs: dict[str, list[str]]) -> str:
    """Markdown: how often each arm works the problem (greedy, last checkpoint) and how right it is each way
    (mean over the seeds, each seed's in brackets), beside the start model: what training changed."""
    def shares(predictions: Path) -> tuple[float, float, float]:
        rows = graded(predictions)
        worked_rows, alone = [ok for w, ok in rows if w], [ok for w, ok in rows if not w]
        mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
        return len(worked_rows) / len(rows), mean(worked_rows), mean(alone)

    def cell(values: list[float]) -> str:
        seen = [v for v in values if v == v]  # nan: that run never answered that way
        text = f"{sum(seen) / len(seen):.3f}" if seen else "-"
        return text if len(values) == 1 else f"{text} ({' / '.join(f'{v:.3f}' if v == v else '-' for v in values)})"

    evals = lambda run: sorted((Path(run) / "eval" / cfg.eval.task).glob("ckpt-*/predictions.jsonl"))  # noqa: E731
    lines = ["| arm | worked solutions (share) | their accuracy | answers alone: accuracy |", "|---|---|---|---|"]
    sft = shares(evals(runs[cfg.demo.variants[0]][0])[0])
    lines.append("| SFT (the start model) | " + " | ".join(cell([v]) for v in sft) + " |")
    for v in cfg.demo.variants:
        last = [shares(evals(r)[-1]) for r in runs[v]]  # each run's last checkpoint
        lines.append(f"| {label(v)} | " + " | ".join(cell([x[j] for x in last]) for j in range(3)) + " |")
    return ("How each arm answers (greedy, test, last checkpoint; mean over the seeds, each seed's in brackets; "
            "-: never answered that way):\n\n" + "\n".join(lines) + "\n")


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    base = ["+experiment=demo", *argv]
    cfg = compose_config(base)
    unknown = sorted({a for pair in cfg.demo.compare for a in pair} - set(cfg.demo.variants))
    if unknown:  # before any training, not after it
        raise ConfigError(f"demo.compare names {unknown}, which are not in demo.variants={list(cfg.demo.variants)}")
    sh("yfpo.prepare", base)  # the tiny SFT model: a training run of its own, done once
    sh("yfpo.neurons", [*base, "neurons=attnlrp"])
    sh("yfpo.neurons", [*base, "neurons=random"])
    sh("yfpo.pairs", base)
    variants, seeds = ",".join(cfg.demo.variants), ",".join(str(s) for s in cfg.demo.seeds)
    sh("yfpo.train", ["-m", *base, f"+variant={variants}", f"seed={seeds}"])
    sweep = Path("multirun") / cfg.name  # hydra.sweep.dir of conf/config.yaml
    runs = find_runs(sweep, base, cfg.demo.variants, cfg.demo.seeds)
    sh("yfpo.evaluate", [*base, f"run_dir={sweep}"])
    spec_path = sweep / f"{cfg.name}_spec.yaml"
    spec_path.write_text(yaml.safe_dump(table_spec(cfg, runs), sort_keys=False))
    paper_style = make_tables(spec_path, out=sweep)
    text = headroom(cfg, runs) + "\n" + by_style(cfg, runs) + "\n" + mechanisms(cfg, runs) + "\n" + versus(cfg, runs)
    (sweep / "mechanisms.md").write_text(text)
    print(f"\n{paper_style}\n{text}\n[demo] tables, curves and spec under {sweep}; "
          f"total {time.perf_counter() - start:.0f} s")

