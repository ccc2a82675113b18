"""``python -m yfpo.dashboard ENTITY/PROJECT``: save a W&B workspace of the margin curves.

Its panels, side by side on the ``trainer/global_step`` axis (the step axis of the training curves
and of the evaluation's scores, see :func:`yfpo.train.loggers.log_evaluation`):

- margins and accuracy: ``rewards/margins``, ``neuron/margin``, and the evaluation accuracy per
  checkpoint (``eval/<evaluation>/accuracy``, every evaluation the runs have);
- scores, log-probs and losses: ``neuron/score_chosen`` with ``neuron/score_rejected``,
  ``logps/chosen``, ``logps/rejected``, ``train/nll``, ``train/loss``.

Runs are grouped by experiment (the W&B group, ``name`` in the config), then by arm (the config
key ``arm`` that ``logger=wandb`` records: a run's overrides without seed and lambda, e.g.
``variant=dpo``, or its method), then by ``lambda``: each line is the mean over seeds, with its
standard error; ``--per-seed`` adds ``seed`` as the last grouping, one line per run.

Saving needs a W&B account: ``WANDB_API_KEY`` set, or ``wandb login`` once. ``--dry-run`` prints the
panels as JSON and saves nothing (no account, no network).
"""

from __future__ import annotations

import argparse
import json

from yfpo.core.errors import UserError, run_cli
from yfpo.train.loggers import has_credentials
from yfpo.core.log import log

X_AXIS = "trainer/global_step"  # Lightning's step metric of every training curve; eval/* is defined on it too
EVAL_ACCURACY = r"^eval/[^/]+/accuracy$"  # yfpo.evaluate.summary.wandb_scores: eval/<evaluation>/accuracy
SECTIONS = {  # section name -> panels (title, y metrics)
    "yfpo: margins and accuracy": [
        ("rewards/margins", ["rewards/margins"]),
        ("neuron/margin", ["neuron/margin"]),
        ("accuracy per checkpoint", None),  # None: the metrics matching EVAL_ACCURACY
    ],
    "yfpo: scores, log-probs and losses": [
        ("neuron scores", ["neuron/score_chosen", "neuron/score_rejected"]),
        ("logps/chosen", ["logps/chosen"]),
        ("logps/rejected", ["logps/rejected"]),
        ("train/nll", ["train/nll"]),
        ("train/loss", ["train/loss"]),
    ],
}
GROUPING = ["Group", "arm", "lambda"]  # W&B group (= the experiment's `name`), then config keys
PER_SEED = "seed"
MAX_RUNS = 200  # runs the workspace plots (W&B's default is 10: fewer than one demo sweep)


def spec(entity: str, project: str, name: str = "yfpo margins", per_seed: bool = False) -> dict:
    """The workspace as plain data: what :func:`workspace` builds and ``--dry-run`` prints."""
    sections = [{"name": section, "panels": [
        {"title": title, "x": X_AXIS, **({"y": y} if y else {"metric_regex": EVAL_ACCURACY})}
        for title, y in panels]} for section, panels in SECTIONS.items()]
    return {"entity": entity, "project": project, "name": name, "x_axis": X_AXIS,
            "grouping": [*GROUPING, *([PER_SEED] if per_seed else [])], "sections": sections}


def workspace(s: dict):
    """The ``wandb_workspaces`` Workspace of a :func:`spec`; offline (nothing is sent until it is saved)."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as e:
        raise UserError(f"{e}: the dashboard needs the package wandb-workspaces, a dependency of yfpo: "
                        "pip install -e .") from None
    group = [ws.Metric(s["grouping"][0]), *(ws.Config(k) for k in s["grouping"][1:])]
    sections = []
    for sec in s["sections"]:
        panels = [wr.LinePlot(title=p["title"], x=p["x"], y=p.get("y", []), metric_regex=p.get("metric_regex"),
                              groupby_aggfunc="mean", groupby_rangefunc="stderr") for p in sec["panels"]]
        sections.append(ws.Section(name=sec["name"], panels=panels, is_open=True,
                                   layout_settings=ws.SectionLayoutSettings(columns=3, rows=(len(panels) + 2) // 3),
                                   panel_settings=ws.SectionPanelSettings(x_axis=s["x_axis"])))
    return ws.Workspace(entity=s["entity"], project=s["project"], name=s["name"], sections=sections,
                        settings=ws.WorkspaceSettings(x_axis=s["x_axis"], max_runs=MAX_RUNS),
                        runset_settings=ws.RunsetSettings(groupby=group))


def build(entity: str, project: str, name: str = "yfpo margins", per_seed: bool = False):
    """The workspace of ``entity/project``, built offline."""
    return workspace(spec(entity, project, name, per_seed))


LOGIN = ("set WANDB_API_KEY to your W&B API key or run `wandb login` once; "
         "--dry-run prints the panels without saving")


def save(s: dict) -> str:
    """Save the workspace of a :func:`spec` to W&B; its URL. No key, or no answer from W&B: a :class:`UserError`."""
    where = f"{s['entity']}/{s['project']}"
    if not has_credentials():
        raise UserError(f"saving the workspace to W&B ({where}) needs a W&B account: {LOGIN}")
    w = workspace(s)
    import requests
    import wandb

    try:
        return w.save().url
    except (wandb.errors.Error, requests.exceptions.RequestException, OSError) as e:
        reason = " ".join(str(e).split()).rstrip(".") or type(e).__name__
        raise UserError(f"could not save the workspace to W&B ({where}): {reason}. Check the network, that "
                        f"{where} is yours, and the key: {LOGIN}") from None


def entity_project(value: str) -> tuple[str, str]:
    entity, sep, project = value.partition("/")
    if not (sep and entity and project) or "/" in project:
        raise argparse.ArgumentTypeError(f"{value!r}: give ENTITY/PROJECT, e.g. my-team/yfpo (the W&B "
                                         "project is logger.project, yfpo by default)")
    return entity, project


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m yfpo.dashboard", description=__doc__.split("\n\n")[0],
                                     epilog="Saving needs a W&B account: " + LOGIN + ".")
    parser.add_argument("where", type=entity_project, metavar="ENTITY/PROJECT",
                        help="the W&B entity (user or team) and project of the runs (logger.project: yfpo)")
    parser.add_argument("--name", default="yfpo margins", help="the workspace's name (default: %(default)s)")
    parser.add_argument("--per-seed", action="store_true",
                        help="group by seed too: one line per run instead of the mean over seeds")
    parser.add_argument("--dry-run", action="store_true", help="print the panels as JSON; save nothing")
    args = parser.parse_args(argv)
    s = spec(*args.where, name=args.name, per_seed=args.per_seed)
    if args.dry_run:
        run_cli(workspace, s)  # built, so that a spec the library refuses fails here too
        print(json.dumps(s, indent=2))
        return
    log.info(f"workspace {s['name']!r} saved: {run_cli(save, s)}")
