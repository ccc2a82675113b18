"""``python -m yfpo.demo``: the whole pipeline on the embedded offline default, then a table.

Stages run as the CLI commands a user would type (see ``conf/experiment/demo.yaml``):
``python -m yfpo.neurons`` (which first builds and SFT-trains the tiny model when it is not
cached), one ``python -m yfpo.train +experiment=demo ...`` per run, then greedy accuracy of the
SFT model and of each run's final checkpoint. Finished stages are skipped on a re-run.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from yfpo import run_dirname
from yfpo.config import compose_config
from yfpo.generation import greedy_generate
from yfpo.grading import gold_answer, grade
from yfpo.models import ensure_synthetic, load_model, load_tokenizer
from yfpo.data import format_prompt

TABLE_KEYS = ("rewards/margins", "rewards/accuracies", "neuron/margin")


def sh(module: str, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", module, *overrides]
    print(f"\n[demo] $ python -m {module} {' '.join(overrides)}", flush=True)
    subprocess.run(cmd, check=True)


def tail_metrics(metrics_csv: Path, keys: tuple[str, ...], rows: int) -> dict[str, float]:
    """Mean of each metric over its last ``rows`` logged values."""
    values: dict[str, list[float]] = {k: [] for k in keys}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for k in keys:
                if row.get(k):
                    values[k].append(float(row[k]))
    return {k: sum(v[-rows:]) / len(v[-rows:]) for k, v in values.items() if v}


def accuracy(model_dir: Path, cfg: DictConfig, test_rows: list[dict]) -> float:
    tok = load_tokenizer(cfg.model, model_dir)
    model = load_model(cfg.model, model_dir)
    prompts = [format_prompt(cfg.data.template, r["question"], None, tok) for r in test_rows]
    completions = greedy_generate(model, tok, prompts, cfg.demo.max_new_tokens, cfg.demo.batch_size)
    return sum(grade("synthetic", c, gold_answer("synthetic", r["answer"])) for c, r in zip(completions, test_rows)) / len(test_rows)


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

    test_rows = [json.loads(l) for l in ensure_synthetic(cfg)["test"].read_text().splitlines()[: cfg.demo.num_problems]]
    print(f"\n[demo] greedy accuracy on {len(test_rows)} synthetic test problems", flush=True)
    header = ["run", "final rewards/margins", "final rewards/accuracies", "final neuron/margin", "accuracy"]
    table = [["SFT model (start)", "", "", "", f"{accuracy(Path(cfg.model.path), cfg, test_rows):.2f}"]]
    for name, rdir in results:
        final = rdir / "checkpoints" / f"ckpt-{cfg.checkpoints.count}"
        m = tail_metrics(rdir / "logs" / "metrics.csv", TABLE_KEYS, cfg.demo.tail_rows)
        table.append([name, *(f"{m[k]:.4g}" if k in m else "n/a" for k in TABLE_KEYS), f"{accuracy(final, cfg, test_rows):.2f}"])

    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *table]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    text = "\n".join(lines)
    out = Path("runs") / cfg.name / "summary.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"\n{text}\n\n[demo] table saved to {out}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
