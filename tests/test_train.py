"""Configs compose; real (tiny) training runs: sweeps, checkpoints, resuming, clear errors."""

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from tests.conftest import CONF, FAST, compose_cfg, job_of
from yfpo.train import checkpoints as ck
from yfpo.core.config import run_dirname
from yfpo.neurons import NeuronFileError, io
from yfpo.neurons.selectors import random_neurons
from yfpo.neurons.selection import SelectionJob, select
from yfpo.core.errors import UserError
from yfpo.train.fit import fit

GROUPS = ["model", "data", "method", "neurons", "trainer", "logger"]


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in GROUPS for p in sorted(Path(CONF, g).glob("*.yaml"))])
def test_every_group_option_composes(group, option, cache):
    cfg = compose_cfg(f"{group}={option}")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("experiment", [p.stem for p in sorted(Path(CONF, "experiment").glob("*.yaml"))])
def test_every_experiment_composes(experiment, cache):
    OmegaConf.to_container(compose_cfg(f"+experiment={experiment}"), resolve=True)


def test_checkpoint_steps_are_evenly_spaced():
    assert ck.checkpoint_steps(100, 3) == [33, 67, 100]
    with pytest.raises(ValueError, match="checkpoints.count=3 exceeds"):
        ck.checkpoint_steps(2, 3)


def test_checkpoint_reloads_with_same_logits_and_run_is_skipped_when_done(tmp_path, cache):
    cfg = compose_cfg(*FAST, "method=dpo")
    ckpt_dir = fit(cfg, tmp_path / "run")
    hf = AutoModelForCausalLM.from_pretrained(ckpt_dir / "ckpt-2")
    state = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    policy = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    again = AutoModelForCausalLM.from_pretrained(ckpt_dir / "ckpt-2")
    again.load_state_dict(policy)
    ids = torch.randint(0, hf.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, again(ids).logits)
    assert not any(k.startswith("reference.") for k in state)
    mtime = (ckpt_dir / "ckpt-2" / ck.STATE_FILE).stat().st_mtime
    fit(cfg, tmp_path / "run")  # complete: skipped
    assert (ckpt_dir / "ckpt-2" / ck.STATE_FILE).stat().st_mtime == mtime


def test_crashed_run_resumes_from_last_ckpt(tmp_path, cache, monkeypatch):
    cfg = compose_cfg(*FAST, "method=dpo")
    starts = []
    original_start, original_end = ck.HFCheckpoints.on_train_start, ck.HFCheckpoints.on_train_batch_end

    def start(self, trainer, module):
        starts.append(trainer.global_step)
        original_start(self, trainer, module)

    def crash(self, trainer, module, *args):
        original_end(self, trainer, module, *args)
        if trainer.global_step == 3:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(ck.HFCheckpoints, "on_train_start", start)
    monkeypatch.setattr(ck.HFCheckpoints, "on_train_batch_end", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "DONE").exists()
    monkeypatch.setattr(ck.HFCheckpoints, "on_train_batch_end", original_end)
    fit(cfg, tmp_path / "run")
    assert starts == [0, 2]  # the second start continued from last.ckpt at step 2
    assert (tmp_path / "run" / "DONE").is_file() and ck.is_complete(tmp_path / "run" / "checkpoints" / "ckpt-2")


def test_a_finished_run_may_drop_its_resume_point(tmp_path, cache):
    """checkpoints.keep_resume_point=false deletes last.ckpt once the run is DONE, at the end of
    training or on the next command over a run finished before; the HF checkpoints stay."""
    args = (*FAST, "method=dpo", "trainer.max_steps=2", "checkpoints.count=1", "checkpoints.resume_every_n_steps=1")
    fit(compose_cfg(*args), tmp_path / "kept")
    assert (tmp_path / "kept" / "checkpoints" / "last.ckpt").is_file()
    fit(compose_cfg(*args, "checkpoints.keep_resume_point=false"), tmp_path / "kept")  # finished: only the deletion
    fit(compose_cfg(*args, "checkpoints.keep_resume_point=false"), tmp_path / "dropped")
    for run in ("kept", "dropped"):
        ckpts = tmp_path / run / "checkpoints"
        assert not (ckpts / "last.ckpt").exists() and ck.is_complete(ckpts / "ckpt-1") and (tmp_path / run / "DONE").is_file()


def test_resuming_with_another_config_is_refused(tmp_path, cache):
    fit(compose_cfg(*FAST, "method=dpo", "trainer.max_steps=2", "checkpoints.count=1"), tmp_path / "run")
    (tmp_path / "run" / "DONE").unlink()
    with pytest.raises(UserError, match=r"beta: 0.1 -> 0.3"):
        fit(compose_cfg(*FAST, "method=dpo", "trainer.max_steps=2", "checkpoints.count=1", "beta=0.3"), tmp_path / "run")


def test_what_resume_may_ignore_is_what_training_does_not_read():
    """The run identity is the view of the config training reads (yfpo/core/inputs.py), no kept list."""
    from yfpo.core.inputs import run_identity, training_inputs

    base = run_identity(compose_cfg("+experiment=yfpo_2k"))
    for other_stage in ("eval=math500", "pairs.samples=8", "ablate.num_samples=5", "vllm.dtype=float32", "name=elsewhere",
                        "logger=wandb", "hub.timeout_s=1", "trainer.devices=4", "synthetic.num_sft=10", "export_to=/x",
                        "checkpoints.keep_resume_point=false"):
        assert run_identity(compose_cfg("+experiment=yfpo_2k", other_stage)) == base, other_stage
    for read in ("optim.lr=1e-7", "lambda=0.3", "neurons.top_k=8", "data.max_length=64", "trainer.precision=32-true"):
        assert run_identity(compose_cfg("+experiment=yfpo_2k", read)) != base, read
    # neurons are read only by a method that rewards or tracks them, synthetic data only by a run on it
    assert "neurons" not in training_inputs(compose_cfg("method=sft")) and "neurons" in training_inputs(compose_cfg("method=yfpo"))
    assert "synthetic" not in training_inputs(compose_cfg("+experiment=yfpo_2k")) and "synthetic" in training_inputs(compose_cfg())
    untracked = ("+experiment=fdt_paper", "method=dpo", "method.track_neurons=false")
    assert run_identity(compose_cfg(*untracked, "neurons=attnlrp")) == run_identity(compose_cfg(*untracked))


def test_a_finished_run_of_another_config_is_refused_not_reported_done(tmp_path, cache, monkeypatch):
    """A finished run directory is kept only for the config that made it: after a default or the cached
    model changes (here model.path), the old result must not pass for the new one. A moved cache is fine."""
    fit(compose_cfg(*FAST, "method=dpo", "trainer.max_steps=2", "checkpoints.count=1"), tmp_path / "run")
    with pytest.raises(UserError, match=r"holds a finished run with another config \(model.path: .*Delete .*run to train it again"):
        fit(compose_cfg(*FAST, "method=dpo", "trainer.max_steps=2", "checkpoints.count=1", "model.path=${cache_dir}/other"),
            tmp_path / "run")
    monkeypatch.setenv("YFPO_CACHE", str(tmp_path / "moved-cache"))
    fit(compose_cfg(*FAST, "method=dpo", "trainer.max_steps=2", "checkpoints.count=1"), tmp_path / "run")  # still done


def test_yfpo_without_neuron_file_names_the_command(tmp_path, cache):
    with pytest.raises(NeuronFileError, match=r"does not exist\. method=yfpo needs it; create it with: python -m yfpo.neurons <the overrides of this run>$"):
        fit(compose_cfg(*FAST, "method=yfpo"), tmp_path / "run")


def test_neuron_file_from_another_model_is_refused_by_training(tmp_path, cache):
    cfg = compose_cfg(*FAST, "method=yfpo")
    wrong = random_neurons(2, 64, cfg.neurons)
    io.save(cfg.neurons.path, wrong, model=cfg.model.name, num_layers=2, intermediate_size=64)
    with pytest.raises(NeuronFileError, match=r"intermediate_size: made with '64', now '48'.*neurons.overwrite=true"):
        fit(cfg, tmp_path / "run")


def test_wandb_logger_runs_offline_without_a_key(tmp_path, cache, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no key anywhere
    cfg = compose_cfg(*FAST, "method=dpo", "trainer.max_steps=2", "checkpoints.count=1", "logger=wandb", "name=wb")
    fit(cfg, tmp_path / "run")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert (tmp_path / "run" / "logs" / "metrics.csv").is_file()  # CSV is always written too
    run_id = (tmp_path / "run" / "logs" / "wandb_id").read_text().strip()
    assert runs[0].name.endswith(f"-{run_id}")
    (tmp_path / "run" / "DONE").unlink()  # started again: it resumes from last.ckpt, into the same W&B run
    fit(cfg, tmp_path / "run")
    again = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    # wandb names a run's directory by its start second and id; a second start within the same second
    # gets "-1" appended (seen with wandb 0.31), not another id
    assert again and all(re.search(rf"-{run_id}(-\d+)?$", r.name) for r in again), again


def test_run_dirnames_stay_short_unique_and_flat():
    assert run_dirname("lambda=0.1,method=yfpo") == "lambda=0.1,method=yfpo"
    assert run_dirname("") == "defaults"
    assert "/" not in run_dirname("data.path=/data/x.jsonl")
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(run_dirname(long_a)) <= 96 and run_dirname(long_a) != run_dirname(long_b)


def test_a_long_run_dirname_starts_with_the_swept_keys():
    """`+experiment=yfpo_2k data.path=<long> -m lambda=0.1,0.2 seed=1,2`: the swept values stay readable."""
    from yfpo.core.config import swept_keys

    assert swept_keys(["-m", "+experiment=demo", "+variant=dpo,fdt", "seed=range(1,4)", "data.x=[1,2]", "lambda=0.1"]) == ["variant", "seed"]
    long = ("+experiment=yfpo_2k,data.path=.cache/pairs/qwen2-0.5b-abcdef-full-q1600-k4-T1.0-s0-hf.jsonl,"
            "data.subset_file=/scratch/a/long/path.jsonl,lambda=0.2,seed=3")
    name = run_dirname(long, swept=["lambda", "seed"])
    assert name.startswith("lambda=0.2,seed=3,+experiment=yfpo_2k,data.path=") and len(name) <= 96
    assert name != run_dirname(long.replace("seed=3", "seed=4"), swept=["lambda", "seed"])  # still unique
    assert run_dirname(long, swept=[]).startswith("+experiment=yfpo_2k,")  # Hydra's order when nothing is swept


def test_the_run_directory_reads_the_swept_keys_the_entry_point_recorded(monkeypatch):
    """`python -m yfpo.train` records its command's swept keys in YFPO_SWEPT (the launchers' jobs inherit it);
    the config hands them to the resolver, which reads no command line of its own."""
    from omegaconf import OmegaConf

    from yfpo.core.config import record_swept_keys

    monkeypatch.delenv("YFPO_SWEPT", raising=False)
    record_swept_keys(["-m", "+experiment=yfpo_2k", "lambda=0.1,0.2", "seed=1,2,3", "data.path=x"])
    assert __import__("os").environ["YFPO_SWEPT"] == "lambda,seed"
    long = ("+experiment=yfpo_2k,data.path=.cache/pairs/qwen2-0.5b-abcdef-full-q1600-k4-T1.0-s0-hf.jsonl,"
            "data.subset_file=/scratch/a/long/path.jsonl,lambda=0.2,seed=3")
    hydra_dir = __import__("yaml").safe_load(open("conf/config.yaml"))["hydra"]["sweep"]["subdir"].replace("hydra:job.override_dirname", "o")
    assert OmegaConf.create({"o": long, "d": hydra_dir}).d.startswith("lambda=0.2,seed=3,")


@pytest.mark.parametrize("overrides,match", [
    (["method=dpo", "lambda=0.5"], "lambda=0.5 is read only by method=yfpo or yfpo_fdt; method=dpo ignores it"),
    (["method=yfpo", "lambda=-1"], r"lambda=-1: give a strength >= 0"),
    (["method=yfpo", "lambda=abc"], r"lambda=abc: Value 'abc' of type 'str' could not be converted to Float \(key lambda\)"),
    (["beta=abc"], r"beta=abc: Value 'abc' .* could not be converted to Float \(key beta\)"),
    (["beta=0"], r"beta=0: give a temperature > 0"),
    (["seed=abc"], r"seed=abc: .* could not be converted to Integer \(key seed\)"),
    (["optim.schedule=cosin"], r"Invalid value 'cosin', expected one of \[cosine, linear, constant\] \(key optim.schedule\)"),
    (["optim.lr=-1"], r"optim.lr=-1: give a learning rate > 0"),
    (["trainer.max_steps=0"], r"trainer.max_steps=0: give a number of optimizer steps >= 1, or -1"),
    (["trainer.max_steps=abc"], r"trainer.max_steps='abc'"),
    (["checkpoints.count=0"], r"checkpoints.count=0: give a number of checkpoints >= 1"),
    (["data.global_batch_size=8", "trainer.accumulate_grad_batches=2"],
     r"trainer.accumulate_grad_batches=2 conflicts with data.global_batch_size=8, .*drop one of the two"),
])
def test_inert_or_impossible_settings_are_refused_before_anything_loads(tmp_path, overrides, match):
    with pytest.raises(UserError, match=match):
        fit(compose_cfg(*FAST, *overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_fewer_rows_than_one_optimizer_step_is_one_warning(tmp_path, cache, capsys):
    """Allowed (a quick look at a handful of rows), but said: each step repeats rows to fill its batch."""
    fit(compose_cfg(*FAST, "method=dpo", "data.batch_size=40", "trainer.max_steps=1", "checkpoints.count=1"), tmp_path / "run")
    out = capsys.readouterr().out
    assert "[yfpo] warning: 32 training rows are fewer than one optimizer step's 40" in out, out[-2000:]
    fit(compose_cfg(*FAST, "method=dpo", "trainer.max_steps=1", "checkpoints.count=1"), tmp_path / "other")
    assert "fewer than one optimizer step" not in capsys.readouterr().out


def test_yfpo_with_lambda_0_says_it_is_dpo(capsys):
    from yfpo.train.fit import check_training_config

    check_training_config(compose_cfg(*FAST, "method=yfpo_fdt", "lambda=0"))
    assert "method=yfpo_fdt with lambda=0 trains exactly DPO with FDT" in capsys.readouterr().out
    check_training_config(compose_cfg(*FAST, "method=yfpo", "lambda=0.2"))
    assert "warning" not in capsys.readouterr().out


def test_a_start_that_failed_before_its_first_checkpoint_does_not_block_the_corrected_command(tmp_path, cache):
    run = tmp_path / "run"
    with pytest.raises(UserError):  # fails after its config was saved: a data file that is not there
        fit(compose_cfg(*FAST, "method=dpo", f"data.path={tmp_path / 'missing.jsonl'}"), run)
    assert (run / "run_config.yaml").is_file()
    fit(compose_cfg(*FAST, "method=dpo", "trainer.max_steps=2", "checkpoints.count=1"), run)  # the corrected command
    assert (run / "DONE").is_file()


def test_the_readme_pipeline_trains_on_the_attnlrp_file_it_made(tmp_path, cache, capsys):
    """README: `python -m yfpo.neurons neurons=attnlrp`, then training on that file (not the default random set)."""
    import re
    import shlex

    readme = (Path(CONF).parent / "README.md").read_text()
    lines = [l.split("#")[0] for l in readme.splitlines() if l.startswith("python -m yfpo.")]
    made = next(l for l in lines if l.startswith("python -m yfpo.neurons neurons=attnlrp"))
    trained = next(l for l in lines if re.match(r"python -m yfpo.train method=yfpo", l))
    made_cfg = compose_cfg(*shlex.split(made)[3:])
    train_cfg = compose_cfg(*shlex.split(trained)[3:])
    assert train_cfg.neurons.path == made_cfg.neurons.path and train_cfg.neurons.selector == "attnlrp"
    cfg = compose_cfg(*FAST, "method=yfpo", "lambda=0.1", "trainer.max_steps=1", "checkpoints.count=1")
    select(job_of(SelectionJob, cfg))
    fit(cfg, tmp_path / "run")
    assert f"[yfpo] neurons (rewarded): {cfg.neurons.path} (selector random" in capsys.readouterr().out
