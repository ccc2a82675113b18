"""The curves of a table (the paper's Figure 2): reward and neuron margins over steps, from the runs'
CSV logs, and accuracy per checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from yfpo.pipelines.paper_table import spec_tasks
from yfpo.pipelines.results import Row, read_run, row_label, row_runs
from yfpo.train.checkpoints import ckpt_index
from yfpo.core.errors import MissingError


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
        label = row_label(row).split(" ", 1)[1]
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
