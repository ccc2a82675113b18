"""``python -m yfpo.demo``: the whole pipeline on the embedded offline default, then a table.

Stages run as the CLI commands a user would type (see ``conf/experiment/demo.yaml``):
``python -m yfpo.neurons`` (which first builds and SFT-trains the tiny model when it is not
cached), one ``python -m yfpo.train +experiment=demo ...`` per run, ``python -m yfpo.evaluate``
over every checkpoint, then the tables (``yfpo/tables.py``, spec ``experiments/demo.yaml``).
Finished stages are skipped on a re-run.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from yfpo.config import CONF_DIR, compose_config, run_dirname
from yfpo.tables import make_tables

TABLE_KEYS = ("rewards/margins", "rewards/accuracies", "neuron/margin")


def sh(module: str, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", module, *overrides]
    print(f"\n[demo] $ python -m {module} {' '.join(overrides)}", flush=True)
    done = subprocess.run(cmd)
    if done.returncode:  # the stage has printed its own error
        print(f"[demo] stopped: `python -m {module}` exited with status {done.returncode}", file=sys.stderr)
        sys.exit(done.returncode)


def tail_metrics(metrics_csv: Path, keys: tuple[str, ...], rows: int) -> dict[str, float]:
    """Mean of each metric over its last ``rows`` logged values."""
    values: dict[str, list[float]] = {k: [] for k in keys}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for k in keys:
                if row.get(k):
                    values[k].append(float(row[k]))
    return {k: sum(v[-rows:]) / len(v[-rows:]) for k, v in values.items() if v}


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    base = ["+experiment=demo", *argv]
    cfg = compose_config(base)
    sh("yfpo.neurons", base)  # prepares the tiny SFT model on first use
    results = []
    for run in cfg.demo.runs:
        sh("yfpo.train", [*base, *run])
        rdir = Path("runs") / cfg.name / run_dirname(",".join(sorted(run)))  # hydra.run.dir of conf/config.yaml
        if not (rdir / "DONE").is_file():
            raise RuntimeError(f"expected the finished run in {rdir}; was hydra.run.dir changed?")
        results.append((" ".join(run), rdir))
    out = Path("runs") / cfg.name
    sh("yfpo.evaluate", [*base, f"run_dir={out}"])

    def accuracy(rdir: Path, ckpt: str) -> str:
        summary = json.loads((rdir / "eval" / cfg.eval.task / ckpt / "summary.json").read_text())
        return f"{summary['accuracy']:.2f}"

    header = ["run", "final rewards/margins", "final rewards/accuracies", "final neuron/margin", "accuracy"]
    table = [["SFT model (start)", "", "", "", accuracy(results[0][1], "ckpt-0")]]
    for name, rdir in results:
        m = tail_metrics(rdir / "logs" / "metrics.csv", TABLE_KEYS, cfg.demo.tail_rows)
        last = f"ckpt-{cfg.checkpoints.count}"
        table.append([name, *(f"{m[k]:.4g}" if k in m else "n/a" for k in TABLE_KEYS), accuracy(rdir, last)])
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *table]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    spec = Path(cfg.demo.table)
    spec = spec if spec.is_absolute() else Path(CONF_DIR).parent / spec  # the project's own spec, from any cwd
    paper_style = make_tables(spec, out=out)
    print(f"\n{text}\n\n{paper_style}\n[demo] tables and curves saved under {out}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
