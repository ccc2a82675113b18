"""Scale-out: DDP on CPU (gloo) against one process, global batches, strategies built from config,
and Hydra launchers (joblib, submitit local; SLURM and Ray compose)."""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.conftest import FAST, compose_cfg, interrupt, make_model
from yfpo.train import checkpoints as ck
from yfpo.data.datamodule import GlobalBatchSampler
from yfpo.core.errors import UserError
from yfpo.train.strategies import build_strategy
from yfpo.train.fit import accumulation

# A learning rate at which 4 steps change the loss visibly, so that a mismatch would show. Adam's eps
# is raised so that a weight whose gradient is ~0 (pure rounding noise, which depends on how the
# tokens are split across processes) is not given a full-size step in a random direction.
LR = ["optim.lr=3e-3", "optim.warmup_ratio=0.0", "optim.schedule=constant", "optim.eps=1e-4"]


def _run(cwd, *args, env=None):
    res = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _losses(run):
    with open(run / "logs" / "metrics.csv") as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


def test_global_batches_do_not_depend_on_the_number_of_processes():
    for rows, batch in ((10, 2), (33, 4), (3, 2)):
        one = list(GlobalBatchSampler(rows, 2 * batch, world=1, rank=0, seed=5))
        ranks = [list(GlobalBatchSampler(rows, batch, world=2, rank=r, seed=5)) for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == len(one)
        assert [a + b for a, b in zip(*ranks)] == one  # rank 0 then rank 1 = the 1-process batch
        assert all(len(b) == batch for r in ranks for b in r)  # equal sizes: no DDP hang, exact mean
        assert set(sum(one, [])) == set(range(rows))  # every row every epoch
    s = GlobalBatchSampler(10, 2, seed=5)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first  # reshuffled per epoch


def test_length_grouping_keeps_the_global_batches_and_cuts_padding():
    lengths = [int(x) for x in torch.randint(5, 400, (64,), generator=torch.Generator().manual_seed(0))]
    for world in (1, 2, 4):
        ranks = [list(GlobalBatchSampler(64, 8 // world, world, r, seed=3, lengths=lengths, window=32)) for r in range(world)]
        steps = [sum(parts, []) for parts in zip(*ranks)]
        if world == 1:
            one = steps
        assert steps == one  # the same rows per step, whatever the number of processes
    assert sorted(sum(one, [])) == list(range(64))  # every row once per epoch

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    plain = list(GlobalBatchSampler(64, 8, seed=3))
    assert padding(one) < 0.5 * padding(plain)


def test_loader_reshuffles_every_epoch_and_resumes_mid_epoch():
    from types import SimpleNamespace

    from yfpo.data.datamodule import ResumableLoader

    trainer = SimpleNamespace(current_epoch=0, world_size=1, accumulate_grad_batches=1)
    loader = ResumableLoader(list(range(10)), batch_sampler=GlobalBatchSampler(10, 2, seed=5), trainer=trainer)
    first = [b.tolist() for b in loader]
    trainer.current_epoch = 1
    second = [b.tolist() for b in loader]
    assert sorted(sum(second, [])) == list(range(10)) and second != first  # Lightning never calls set_epoch on it
    loader.load_state_dict({"epoch": 1, "batches": 3, "layout": [1, 1]})  # a checkpoint taken after 3 batches of epoch 1
    assert [b.tolist() for b in loader] == second[3:]
    assert [b.tolist() for b in loader] == second  # and the next pass is whole again


def test_a_resume_point_continues_only_on_the_layout_that_saved_it():
    """The position is per-process batches (and Lightning's loop counts accumulation windows of
    them): another process count or accumulation is refused, naming both layouts."""
    from types import SimpleNamespace

    from yfpo.data.datamodule import EpochPosition, ResumableLoader, ResumeLayoutError

    def loader(world, accumulate):
        trainer = SimpleNamespace(current_epoch=1, world_size=world, accumulate_grad_batches=accumulate)
        position = EpochPosition()
        position.epoch, position.done = 1, 3
        return ResumableLoader(list(range(16)), batch_sampler=GlobalBatchSampler(16, 2, world=world, seed=5), trainer=trainer, position=position)

    state = loader(1, 2).state_dict()
    assert state == {"epoch": 1, "batches": 3, "layout": [1, 2]}
    loader(1, 2).load_state_dict(state)
    for world, accumulate in ((2, 1), (1, 4)):
        with pytest.raises(ResumeLayoutError, match=rf"saved by 1 process\(es\) accumulating 2 .* this start has {world} accumulating {accumulate}"):
            loader(world, accumulate).load_state_dict(state)


def test_gradient_accumulation_from_global_batch_size():
    assert accumulation(16, 2, 1) == 8 and accumulation(16, 2, 8) == 1 and accumulation(256, 4, 16) == 4
    with pytest.raises(ValueError, match="global_batch_size=16 is not a multiple of data.batch_size=3 x 2 processes"):
        accumulation(16, 3, 2)


@pytest.mark.slow  # real processes
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path, cache):
    one, two, acc = tmp_path / "one", tmp_path / "two", tmp_path / "acc"
    _run(tmp_path, "yfpo.train", *FAST, *LR, "data.batch_size=4", f"hydra.run.dir={one}")
    # the 2-process run also precomputes its reference: each rank computes half of the table
    _run(tmp_path, "yfpo.train", *FAST, *LR, "data.batch_size=2", "trainer=ddp", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.precision=32-true", "reference=precompute", f"hydra.run.dir={two}")
    _run(tmp_path, "yfpo.train", *FAST, *LR, "data.batch_size=2", "data.global_batch_size=4", f"hydra.run.dir={acc}")
    # logged once (rank 0), one row per step, same losses
    l1, l2 = _losses(one), _losses(two)
    assert [s for s, _ in l2] == [0, 1, 2, 3]
    assert abs(l1[-1][1] - l1[0][1]) > 1e-3  # training moved the policy off the reference (step 0's loss is ln 2)
    torch.testing.assert_close(torch.tensor([v for _, v in l2]), torch.tensor([v for _, v in l1]), rtol=1e-4, atol=1e-5)
    # one set of checkpoints, full weights, equal to the 1-process run's (and to accumulation's)
    saved = sorted(p.name for p in (two / "checkpoints").iterdir())
    assert saved == ["ckpt-1", "ckpt-2", "last.ckpt"]
    w1, w2, wa = (load_file(r / "checkpoints" / "ckpt-2" / "model.safetensors") for r in (one, two, acc))
    assert w1.keys() == w2.keys() == wa.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(wa[k], w1[k], rtol=1e-4, atol=1e-5)
    assert json.loads((two / "checkpoints" / "ckpt-2" / ck.STATE_FILE).read_text())["step"] == 4


@pytest.mark.slow  # real processes
def test_a_run_interrupted_on_one_process_is_refused_on_two_with_the_reason(tmp_path, cache):
    """Killed on one process (accumulating 2 batches of 2 rows), started again as 2 DDP processes
    (one batch each, the same global batch): refused in one line, the resume point kept; the
    interrupted layout then finishes it."""
    run = tmp_path / "run"
    args = [*FAST, "data.global_batch_size=4", "trainer.max_steps=40", "checkpoints.count=2", "checkpoints.resume_every_n_steps=2"]
    status, _ = interrupt(tmp_path, dict(os.environ), run, signal.SIGKILL, args)
    step = ck.resume_point(run / "checkpoints" / "last.ckpt")[0]
    assert status == -signal.SIGKILL and 0 < step < 40
    args.append(f"hydra.run.dir={run}")
    ddp = subprocess.run([sys.executable, "-m", "yfpo.train", *args, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                          "trainer.precision=32-true"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    lines = [l for l in ddp.stderr.splitlines() if l.startswith("yfpo: error:")]
    assert ddp.returncode != 0 and lines, ddp.stderr[-3000:]
    assert "saved by 1 process(es) accumulating 2 batch(es) per optimizer step; this start has 2 accumulating 1" in lines[0], lines
    assert ck.resume_point(run / "checkpoints" / "last.ckpt")[0] == step  # the resume point is kept
    _run(tmp_path, "yfpo.train", *args)  # the interrupted layout resumes it
    assert (run / "DONE").is_file()


@pytest.mark.slow  # real processes
def test_joblib_lambda_sweep_then_evaluation_on_the_same_launcher(tmp_path, cache):
    _run(tmp_path, "yfpo.neurons", *FAST)
    launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    _run(tmp_path, "yfpo.train", "-m", *FAST, "name=sweep", "method=yfpo", "lambda=0.0,0.5", *launcher)
    sweep = tmp_path / "multirun" / "sweep"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["lambda=0.0,method=yfpo", "lambda=0.5,method=yfpo"]
    for job, lam in zip(jobs, (0.0, 0.5)):
        saved = yaml.safe_load((job / "run_config.yaml").read_text())
        assert saved["lambda"] == lam and saved["method"]["name"] == "yfpo"
        assert (job / "DONE").is_file() and ck.is_complete(job / "checkpoints" / "ckpt-2")
        header = (job / "logs" / "metrics.csv").read_text().splitlines()[0]
        assert {"train/loss", "rewards/margins", "neuron/margin", "neuron/score_chosen", "train/lr"} <= set(header.split(","))
    # two evaluation jobs in parallel: two graders on the synthetic problems (their own eval/<task>/ dirs)
    _run(tmp_path, "yfpo.evaluate", "-m", *FAST, f"run_dir={sweep}", "eval.limit=4", "eval.max_new_tokens=8",
         "eval.batch_size=4", "eval.task=synthetic,gsm8k", *launcher)
    for job in jobs:
        for task in ("synthetic", "gsm8k"):
            assert json.loads((job / "eval" / task / "ckpt-2" / "summary.json").read_text())["n"] == 4


@pytest.mark.slow  # real processes
def test_submitit_local_runs_one_job(tmp_path, cache):
    _run(tmp_path, "yfpo.train", "-m", *FAST, "name=local", "trainer.max_steps=2", "checkpoints.count=1",
         "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    [run] = [p for p in (tmp_path / "multirun" / "local").iterdir() if p.is_dir() and p.name != ".submitit"]
    assert (run / "DONE").is_file() and ck.is_complete(run / "checkpoints" / "ckpt-1")
    assert list((tmp_path / "multirun" / "local" / ".submitit").glob("*/*_result.pkl"))  # it went through submitit


@pytest.mark.parametrize("launcher", ["slurm", "ray", "joblib", "submitit_local"])
def test_launcher_configs_compose(launcher, cache):
    cfg = compose_config_with_hydra("+experiment=yfpo_2k", f"hydra/launcher={launcher}", "trainer=ddp", "trainer.devices=4",
                                    "hydra.launcher.gpus_per_node=4" if launcher == "slurm" else "seed=42")
    launch = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    target = {"slurm": "submitit_launcher.SlurmLauncher", "ray": "ray_launcher.RayLauncher",
              "joblib": "joblib_launcher.JoblibLauncher", "submitit_local": "submitit_launcher.LocalLauncher"}[launcher]
    assert launch["_target_"].endswith(target)
    if launcher == "slurm":  # Lightning needs one SLURM task per GPU
        assert launch["tasks_per_node"] == launch["gpus_per_node"] == 4 and launch["nodes"] == cfg.trainer.num_nodes
    if launcher == "ray":
        assert launch["ray"]["remote"]["num_gpus"] == 1


def compose_config_with_hydra(*overrides):
    from yfpo.core.config import compose_config

    return compose_config(list(overrides), hydra=True)


@pytest.mark.parametrize("trainer", ["ddp", "fsdp", "deepspeed"])
def test_trainer_configs_compose_with_bf16(trainer, cache):
    cfg = compose_cfg(*FAST, f"trainer={trainer}", "data.global_batch_size=16")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"


def test_fsdp_strategy_shards_policy_and_reference_by_decoder_layer(tokenizer):
    from lightning.pytorch.strategies import FSDPStrategy

    model = make_model(tokenizer)
    strategy = build_strategy(compose_cfg("trainer=fsdp").trainer.strategy, model)
    assert isinstance(strategy, FSDPStrategy)
    # one FSDP unit per decoder layer class: the reference is a deep copy, so its layers match too
    assert strategy.kwargs["use_orig_params"] is True and strategy._state_dict_type == "full"
    assert type(model.model.layers[0]) in strategy.kwargs["auto_wrap_policy"]._module_classes
    assert build_strategy("ddp", model) == "ddp"
    with pytest.raises(ValueError, match="stage=3: HF checkpoints need full weights"):
        build_strategy({"name": "deepspeed", "stage": 3}, model)
    if importlib.util.find_spec("deepspeed") is None:  # the optional extra is not installed
        with pytest.raises(UserError, match=r"pip install -c constraints.txt -e '.\[deepspeed\]'"):
            build_strategy({"name": "deepspeed", "stage": 2}, model)
    with pytest.raises(ValueError, match="trainer.strategy.name='zero'"):
        build_strategy({"name": "zero"}, model)
