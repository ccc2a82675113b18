"""Reading evaluated runs for the tables: per run and task the per-problem correctness of each
checkpoint, per spec row its seeds, and the row as one array ``c[seed, checkpoint, problem]``."""

from __future__ import annotations

import glob
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yfpo.pipelines import stats
from yfpo.train.checkpoints import ckpt_index, ckpt_name
from yfpo.core.config import CONF_DIR
from yfpo.core.errors import ConfigError, MissingError

# Per-checkpoint means read from predictions.jsonl for the scoring table (None: not recorded).
SCORING_KEYS = {"strict": "correct_strict", "flexible": "correct_flexible", "truncated": "truncated",
                "extracted": "extracted"}


@dataclass
class RunResults:
    """Per-problem correctness of one run, ``{checkpoint: {problem id: 0/1}}`` for one task, and per
    checkpoint the means of :data:`SCORING_KEYS` (``{checkpoint: {name: float or None}}``)."""

    run: Path
    by_ckpt: dict[str, dict] = field(default_factory=dict)
    scoring: dict[str, dict] = field(default_factory=dict)


def mean_of(rows: list[dict], key: str) -> float | None:
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
        res.scoring[ckpt.name] = {name: mean_of(rows, key) for name, key in SCORING_KEYS.items()}
    if not res.by_ckpt:
        raise MissingError(f"no finished evaluations under {root}: run `{evaluate_hint(run, task)}` first")
    return res


def row_label(row: dict) -> str:
    """A spec row's name in the tables and their messages: data, method and λ."""
    return f"{row['data']} {row['method']}" + (f" λ={row['lambda']}" if row.get("lambda") is not None else "")


def row_runs(row: dict, base_dir: Path) -> list[Path]:
    """The run directories of a spec row, one per seed: its ``runs`` entries, glob patterns expanded
    (an entry that names an existing directory is taken as it is, ``[`` in a swept list value included)."""
    out = []
    for entry in row["runs"]:
        if glob.has_magic(entry) and not (base_dir / entry).is_dir():
            matches = sorted(Path(p) for p in glob.glob(str(base_dir / entry)))
            if not matches:
                raise MissingError(f"row {row_label(row)}: no run directory matches {base_dir / entry}: "
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
        ckpts, ids = common(runs, row_label(row), task)
        out = cls(row_label(row), ckpts, ids, matrix(runs, ckpts, ids), bool(row.get("start")))
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
