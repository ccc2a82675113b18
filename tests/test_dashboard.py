"""``python -m yfpo.dashboard``: the W&B workspace is built offline, its panels plot the keys training and
evaluation log, on their step axis, grouped by experiment, arm, lambda (and seed); ``--dry-run`` prints
it; saving without a key or without an answer from W&B ends in one error line and sends nothing."""

from __future__ import annotations

import inspect
import json
import re

import pytest
import torch

from tests.conftest import compose_cfg, make_model
from yfpo.pipelines import dashboard

pytest.importorskip("wandb_workspaces")
import wandb  # noqa: E402
import wandb_workspaces.workspaces as ws  # noqa: E402

# What the brief asks to see side by side, in order.
EXPECTED = ["rewards/margins", "neuron/margin", "neuron/score_chosen", "neuron/score_rejected",
            "logps/chosen", "logps/rejected", "train/nll", "train/loss"]


def plotted(spec: dict) -> list[str]:
    return [y for sec in spec["sections"] for p in sec["panels"] for y in p.get("y", [])]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach W&B fails the test."""
    def refuse(*a, **k):
        raise AssertionError("the test tried to reach W&B")

    monkeypatch.setattr(wandb, "Api", refuse)
    monkeypatch.setattr(ws.Workspace, "save", refuse)


@pytest.fixture
def logged_keys(synth_dir, tokenizer) -> set[str]:
    """The metric names one training step of DPO+YFPO with an NLL term logs (a tiny model, one batch)."""
    from yfpo.data.encode import Encoder, collate
    from yfpo.neurons.io import NeuronSet
    from yfpo.train.module import PolicyModule

    cfg = compose_cfg("method=yfpo", "method.nll_weight=0.5")
    rows = [json.loads(l) for l in (synth_dir / "preference.jsonl").read_text().splitlines()[:2]]
    batch = collate(Encoder(cfg.data, tokenizer).encode_all(rows, "pairs", "pairs"), tokenizer.pad_token_id)
    neurons = NeuronSet(torch.tensor([0, 1]), torch.tensor([3, 7]), torch.ones(2))
    mod = PolicyModule(make_model(tokenizer), cfg.method, cfg.optim, beta=0.1, lam=0.1, neurons=neurons)
    mod.setup("fit")
    try:
        with torch.no_grad():
            _, metrics = mod.compute_loss(batch)
    finally:
        mod.teardown("fit")
    step = inspect.getsource(PolicyModule.training_step)  # adds the loss (and lr, throughput) itself
    return set(metrics) | {k for k in ("train/loss", "train/lr") if f'metrics["{k}"]' in step}


def test_the_panels_plot_what_training_and_evaluation_log(logged_keys):
    from yfpo.evaluate.summary import wandb_scores
    from yfpo.train.loggers import log_evaluation

    s = dashboard.spec("team", "yfpo")
    assert plotted(s) == EXPECTED
    assert set(EXPECTED) <= logged_keys, set(EXPECTED) - logged_keys
    # the accuracy panel: eval/<evaluation>/accuracy of every evaluation, and none of its other scores
    regex = [p["metric_regex"] for sec in s["sections"] for p in sec["panels"] if "metric_regex" in p]
    assert regex == [dashboard.EVAL_ACCURACY]
    scores = {**wandb_scores("gsm8k", {"accuracy": 0.5, "accuracy_strict": 0.4, "truncated_rate": 0.0}),
              **wandb_scores("math500", {"accuracy": 0.2, "extracted_rate": 1.0})}
    assert sorted(k for k in scores if re.search(regex[0], k)) == ["eval/gsm8k/accuracy", "eval/math500/accuracy"]
    # one step axis: Lightning's for the training curves, log_evaluation's for the scores
    assert all(p["x"] == "trainer/global_step" for sec in s["sections"] for p in sec["panels"])
    assert 'step_metric="trainer/global_step"' in inspect.getsource(log_evaluation)
    from lightning.pytorch.loggers import WandbLogger
    assert 'step_metric="trainer/global_step"' in inspect.getsource(WandbLogger)
    # the margins and the accuracy side by side, in the first section
    first = s["sections"][0]["panels"]
    assert [p.get("y", ["accuracy"])[0] for p in first] == ["rewards/margins", "neuron/margin", "accuracy"]


def test_the_workspace_is_built_offline_grouped_by_experiment_arm_lambda_and_seed(no_network):
    w = dashboard.build("team", "yfpo", name="margins")
    assert (w.entity, w.project, w.name) == ("team", "yfpo", "margins")
    assert [[y for p in sec.panels for y in p.y] for sec in w.sections] == [EXPECTED[:2], EXPECTED[2:]]
    assert w.sections[0].panels[2].metric_regex == dashboard.EVAL_ACCURACY
    assert w.settings.x_axis == "trainer/global_step" and w.settings.max_runs >= 15  # a demo sweep: 5 arms x 3 seeds
    view = json.loads(w._to_model().spec.model_dump_json(by_alias=True, exclude_none=True))  # what save() sends
    grouping = view["section"]["runSets"][0]["grouping"]
    assert grouping == [{"section": "run", "name": "group"}, {"section": "config", "name": "arm.value"},
                        {"section": "config", "name": "lambda.value"}]
    assert all(sec["localPanelSettings"]["xAxis"] == "trainer/global_step"
               for sec in view["section"]["panelBankConfig"]["sections"])
    per_seed = json.loads(dashboard.build("team", "yfpo", per_seed=True)._to_model().spec.model_dump_json(by_alias=True))
    assert per_seed["section"]["runSets"][0]["grouping"][-1] == {"section": "config", "name": "seed.value"}


def test_the_runs_carry_what_the_grouping_needs(monkeypatch, tmp_path):
    """W&B group = the experiment's name; the config has lambda, seed and arm (loggers.run_arm)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from yfpo.core.config import CONF_DIR
    from yfpo.train import loggers

    seen = {}
    monkeypatch.setattr(loggers, "WandbLogger", lambda **kw: seen.update(kw))
    cfg = compose_cfg("logger=wandb", "name=exp1", "method=yfpo", "lambda=0.2", "seed=3")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    loggers.make_loggers(cfg.logger, tmp_path, resolved)
    assert seen["group"] == "exp1"
    assert (seen["config"]["lambda"], seen["config"]["seed"], seen["config"]["arm"]) == (0.2, 3, "yfpo")
    # in a sweep, the arm is the run's overrides without seed, lambda and the excluded keys
    overrides = ["+experiment=demo", "+variant=yfpo_random", "seed=2", "logger=wandb", "trainer.max_steps=4"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        hydra_cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        assert loggers.run_arm(resolved) == "trainer.max_steps=4,variant=yfpo_random"
    finally:
        HydraConfig.instance().cfg = None
    assert dashboard.GROUPING == ["Group", "arm", "lambda"] and dashboard.PER_SEED == "seed"


def test_dry_run_prints_the_panels(capsys, no_network):
    dashboard.main(["team/yfpo", "--dry-run", "--name", "mine", "--per-seed"])
    assert json.loads(capsys.readouterr().out) == dashboard.spec("team", "yfpo", name="mine", per_seed=True)


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no such file
    monkeypatch.setenv("HOME", str(tmp_path))


def one_error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as done:
        dashboard.main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.startswith("yfpo: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_saving_without_a_key_says_how_to_log_in(capsys, no_login, no_network):
    line = one_error_line(capsys, ["team/yfpo"])
    assert "needs a W&B account" in line and "WANDB_API_KEY" in line and "wandb login" in line and "--dry-run" in line


def test_saving_without_an_answer_from_wandb_is_one_line(capsys, monkeypatch, no_login):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)

    def unreachable(self):
        raise wandb.errors.AuthenticationError("Failed to verify credentials with https://api.example:\nno route to host")

    monkeypatch.setattr(ws.Workspace, "save", unreachable)
    line = one_error_line(capsys, ["team/yfpo"])
    assert "could not save the workspace to W&B (team/yfpo)" in line and "no route to host" in line and "network" in line


def test_a_saved_workspace_prints_its_url(capsys, monkeypatch, no_login):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    sent = []

    class Saved:
        url = "https://wandb.example/team/yfpo?nw=abc"

    monkeypatch.setattr(ws.Workspace, "save", lambda self: sent.append(self) or Saved())
    dashboard.main(["team/yfpo"])
    assert len(sent) == 1 and Saved.url in capsys.readouterr().out


@pytest.mark.parametrize("where", ["team", "team/", "/yfpo", "a/b/c"])
def test_entity_and_project_are_both_needed(where, capsys):
    with pytest.raises(SystemExit) as done:
        dashboard.main([where, "--dry-run"])
    assert done.value.code == 2 and "ENTITY/PROJECT" in capsys.readouterr().err
