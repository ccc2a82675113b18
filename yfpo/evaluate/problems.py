"""The problems of an evaluation (the ``eval`` group): which rows, where they come from, and the
directory its results go to."""

from __future__ import annotations

import random
from pathlib import Path

from omegaconf import DictConfig

from yfpo.core.errors import ConfigError
from yfpo.data.rows import DataError, load_rows
from yfpo.evaluate.grading import gold_answer


def load_problems(e: DictConfig, hub: DictConfig) -> list[dict]:
    """``[{id, question, gold}]`` of the ``eval`` group ``e``: the first ``eval.limit`` problems, of which,
    with ``eval.sample``, a seeded random ``sample`` (in row order; ids stay the rows' indices)."""
    return problems_of(e, load_rows(e.path, split=e.split, name=e.get("hub_config"), hub=hub, key="eval.path"))


def problems_of(e: DictConfig, rows: list[dict]) -> list[dict]:
    """:func:`load_problems` from the source's ``rows``."""
    rows = rows[: e.limit] if e.limit else rows
    keep = range(len(rows))
    if e.get("sample"):
        if not isinstance(e.sample, int) or not 0 < e.sample <= len(rows):
            raise ConfigError(f"eval.sample={e.sample!r}: give a number of problems between 1 and the {len(rows)} "
                              f"rows of {e.path} ({e.split}), or null for all")
        keep = sorted(random.Random(e.sample_seed).sample(range(len(rows)), e.sample))
    out = []
    for i in keep:
        r = rows[i]
        if not isinstance(r.get(e.question_field), str) or not isinstance(r.get(e.gold_field), str):
            raise DataError(f"{e.path}: row {i} needs string fields {e.question_field!r} and {e.gold_field!r}")
        gold = gold_answer(e.task, r[e.gold_field]) if e.gold_from_solution else r[e.gold_field]
        out.append({"id": r.get(e.id_field, i) if e.get("id_field") else i, "question": r[e.question_field], "gold": gold})
    return out


def source(e: DictConfig, rows_fingerprint: str) -> dict:
    """Where an evaluation's problems come from, with a fingerprint of all the source's rows."""
    return {"path": e.path, "split": e.split, "hub_config": e.get("hub_config"), "sample": e.get("sample"),
            "sample_seed": e.get("sample_seed") if e.get("sample") else None, "rows": rows_fingerprint}


def dirname(e: DictConfig) -> str:
    """The directory of an evaluation under ``<run>/eval/``: ``eval.name`` (or the task), plus
    ``@<source>`` when ``eval.path`` is not the group's own (``eval.default_path``), so that
    problems from another file never share a directory with the real benchmark's."""
    name = e.name or e.task
    if str(e.path) == str(e.get("default_path", e.path)):
        return name
    return f"{name}@{Path(str(e.path)).stem if Path(str(e.path)).suffix else str(e.path).replace('/', '_')}"
