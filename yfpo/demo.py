"""``python -m yfpo.demo``: the whole pipeline on the embedded offline default, then the tables.

Stages run as the CLI commands a user would type (settings: ``conf/experiment/demo.yaml``):

1. ``python -m yfpo.neurons neurons=attnlrp`` and ``neurons=random`` (the first builds and
   SFT-trains the tiny model when it is not cached);
2. ``python -m yfpo.pairs``: on-policy pairs sampled from the SFT model, every step checked;
3. ``python -m yfpo.train -m +variant=...`` : one sweep (one process) of the arms in
   ``conf/variant/`` x ``demo.seeds``;
4. ``python -m yfpo.evaluate run_dir=multirun/demo``: every arm and the SFT model on all test problems;
5. the tables (:mod:`yfpo.tables`): SFT as the baseline (intervals, paired bootstrap p-values) and
   the curves (the paper's Figure 2), plus what the logged metrics show of each mechanism.

Finished stages are skipped on a re-run, and an interrupted one resumes.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import yaml

from yfpo.config import compose_config, run_dirname
from yfpo.tables import make_tables

# Logged metrics whose first- and last-epoch means say what each arm did (TRL's names).
MECHANISMS = ("logps/chosen", "logps/rejected", "rewards/margins", "neuron/margin", "train/nll")
LABELS = {"dpo": ("DPO", None), "dpo_nll": ("DPO+NLL", None), "yfpo_attnlrp": ("YFPO (AttnLRP)", "lambda"),
          "yfpo_random": ("YFPO (random)", "lambda"), "fdt": ("FDT", None)}


def sh(module: str, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", module, *overrides]
    print(f"\n[demo] $ python -m {module} {' '.join(overrides)}", flush=True)
    done = subprocess.run(cmd)
    if done.returncode:  # the stage has printed its own error
        print(f"[demo] stopped: `python -m {module}` exited with status {done.returncode}", file=sys.stderr)
        sys.exit(done.returncode)


def epoch_means(metrics_csv: Path, keys: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Mean of each metric over the first and over the last epoch's logged steps."""
    by_epoch: dict[str, dict[int, list[float]]] = {k: {} for k in keys}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for k in keys:
                if row.get(k):
                    by_epoch[k].setdefault(int(row["epoch"]), []).append(float(row[k]))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {k: (mean(e[min(e)]), mean(e[max(e)])) for k, e in by_epoch.items() if e}


def table_spec(cfg, runs: dict[str, list[str]]) -> dict:
    """The paper-style table of the arms (``runs``: variant -> run directories, one per seed), SFT first."""
    rows = [{"data": "synthetic", "method": "SFT", "lambda": None, "start": True, "runs": runs[cfg.demo.variants[0]][:1]}]
    for v in cfg.demo.variants:
        method, lam = LABELS.get(v, (v, None))
        rows.append({"data": "synthetic", "method": method, "lambda": cfg.demo[lam] if lam else None, "runs": runs[v]})
    return {"name": cfg.name, "task": cfg.eval.task, "layout": "checkpoints", "baseline": "SFT",
            "title": f"Demo: tiny Qwen2 after SFT, then {cfg.trainer.max_epochs} epoch(s) of each method on "
                     f"on-policy pairs; {cfg.eval.task} test (all problems), seeds {list(cfg.demo.seeds)}",
            "rows": rows}


def mechanisms(cfg, runs: dict[str, list[str]]) -> str:
    """Markdown: first -> last epoch's mean of :data:`MECHANISMS` per arm (first seed)."""
    header = ["arm", *MECHANISMS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in cfg.demo.variants:
        m = epoch_means(Path(runs[v][0]) / "logs" / "metrics.csv", MECHANISMS)
        cells = [f"{m[k][0]:.4g} -> {m[k][1]:.4g}" if k in m else "" for k in MECHANISMS]
        lines.append("| " + " | ".join([LABELS.get(v, (v,))[0], *cells]) + " |")
    return ("What training did (first seed; mean over the first epoch's logged steps -> over the last's; "
            "each arm's neuron/margin is on its own neuron set):\n\n"
            + "\n".join(lines) + "\n")


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    base = ["+experiment=demo", *argv]
    cfg = compose_config(base)
    sh("yfpo.neurons", [*base, "neurons=attnlrp"])  # prepares the tiny SFT model on first use
    sh("yfpo.neurons", [*base, "neurons=random"])
    sh("yfpo.pairs", base)
    variants, seeds = ",".join(cfg.demo.variants), ",".join(str(s) for s in cfg.demo.seeds)
    sh("yfpo.train", ["-m", *base, f"+variant={variants}", f"seed={seeds}"])
    sweep = Path("multirun") / cfg.name  # hydra.sweep.dir of conf/config.yaml
    runs = {v: [str(sweep / run_dirname(f"+variant={v},seed={s}")) for s in cfg.demo.seeds] for v in cfg.demo.variants}
    missing = [r for rs in runs.values() for r in rs if not (Path(r) / "DONE").is_file()]
    if missing:
        raise RuntimeError(f"expected finished runs in {missing}; was hydra.sweep.dir changed?")
    sh("yfpo.evaluate", [*base, f"run_dir={sweep}"])
    spec_path = sweep / f"{cfg.name}_spec.yaml"
    spec_path.write_text(yaml.safe_dump(table_spec(cfg, runs), sort_keys=False))
    paper_style = make_tables(spec_path, out=sweep)
    text = mechanisms(cfg, runs)
    (sweep / "mechanisms.md").write_text(text)
    print(f"\n{paper_style}\n{text}\n[demo] tables, curves and spec under {sweep}; "
          f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
