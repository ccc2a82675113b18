"""The papers' recipes: every experiment holds the papers' values, and `make reproduce-tables
DRY_RUN=1` lists the whole pipeline, every job's config composed."""

import subprocess

import pytest

from tests.conftest import ROOT
from yfpo.core.config import compose_config
from yfpo.pipelines.reproduce import plan, sweep_jobs

YFPO = ["dpo_10k", "yfpo_10k", "dpo_2k", "yfpo_2k", "yfpo_2k_random", "yfpo_fdt_2k"]
FDT = ["fdt_dpo", "fdt_dpo_fdt", "fdt_step_dpo", "fdt_step_dpo_fdt"]
FDT_MODELS = {"qwen2.5-3b-instruct": "Qwen/Qwen2.5-3B-Instruct", "llama-3.2-3b-instruct": "meta-llama/Llama-3.2-3B-Instruct"}


def jobs(experiment):
    return sweep_jobs("config", [f"+experiment={experiment}"])


@pytest.mark.parametrize("name,hub_id", [("qwen2-0.5b", "Qwen/Qwen2-0.5B"), *FDT_MODELS.items()])
def test_real_model_configs(name, hub_id, cache):
    m = compose_config([f"model={name}"]).model
    assert m.path == hub_id and m.name == name and m.trust_remote_code is False
    assert m.attn_implementation == "auto" and m.gradient_checkpointing is True and m.neuron_top_k == 1024
    assert m.template == ("alpaca" if name == "qwen2-0.5b" else "chat")


@pytest.mark.parametrize("experiment", YFPO)
def test_yfpo_paper_experiments(experiment, cache):
    runs = jobs(experiment)
    expected = {"dpo_10k": [0.0], "yfpo_10k": [0.05, 1.0], "dpo_2k": [0.0]}.get(experiment, [0.1, 0.2, 0.3, 1.0])
    # every lambda with 3 training seeds
    assert sorted((float(c["lambda"]), c.seed) for c in runs) == [(lam, s) for lam in expected for s in (1, 2, 3)]
    for c in runs:
        assert c.name == experiment and c.model.path == "Qwen/Qwen2-0.5B"
        assert c.data.path == "xinlai/Math-Step-DPO-10K" and c.data.pair_mode == "step"
        assert c.data.subset_size == (2000 if "2k" in experiment else None)
        if "2k" in experiment:
            assert c.data.subset_seed == 42 and c.data.subset_file.endswith("math-step-dpo-2k-seed42-train.jsonl")
        assert c.neurons.top_k == 1024 and c.neurons.selector == ("random" if "random" in experiment else "attnlrp")
        assert c.checkpoints.count == 3 and c.eval.path == "openai/gsm8k"
        # Step-DPO's Qwen2 recipe (the paper gives none)
        assert c.optim.lr == 5e-7 and c.beta == 0.4 and c.optim.schedule == "cosine" and c.optim.warmup_ratio == 0.1
        assert c.data.global_batch_size == 16 and c.trainer.precision == "bf16-mixed"
        assert (c.data.max_length, c.data.max_prompt_length) == (1024, 512)
        assert c.method.loss == ("dpo" if experiment.startswith("dpo") else "yfpo")
        assert c.method.fdt == ("fdt" in experiment)


@pytest.mark.parametrize("experiment", FDT)
def test_fdt_paper_experiments(experiment, cache):
    runs = jobs(experiment)
    assert sorted((c.model.name, c.seed) for c in runs) == [(m, s) for m in sorted(FDT_MODELS) for s in (1, 2, 3)]
    fdt = experiment.endswith("_fdt")
    for c in runs:
        assert c.model.path.endswith(f"sft/{c.model.name}-numinamath-cot")  # starts from the SFT model
        assert f"+experiment=fdt_sft model={c.model.name}" in c.model.made_by
        assert c.data.path == "xinlai/Math-Step-DPO-10K"
        assert c.data.pair_mode == ("step" if "step" in experiment else "full")
        assert (c.optim.lr, c.beta) == ((7e-6, 0.5) if fdt else (5e-6, 0.4))
        assert c.method.fdt == fdt and c.method.loss == "dpo"
        assert c.trainer.max_epochs == 8 and c.optim.schedule == "cosine" and c.optim.warmup_ratio == 0.1


def test_seeds_change_with_one_override(cache):
    assert sorted(c.seed for c in sweep_jobs("config", ["+experiment=dpo_2k", "seed=1,2,3,4,5"])) == [1, 2, 3, 4, 5]
    assert [c.seed for c in sweep_jobs("config", ["+experiment=dpo_2k", "seed=7"])] == [7]
    assert len(sweep_jobs("config", ["+experiment=yfpo_2k", "seed=1,2"])) == 8  # 4 lambdas x 2 seeds


def test_fdt_sft_experiment(cache):
    runs = jobs("fdt_sft")  # the one SFT model every seed of the preference stage starts from
    assert sorted(c.model.path for c in runs) == sorted(FDT_MODELS.values())
    for c in runs:
        assert c.data.path == "AI-MO/NuminaMath-CoT" and (c.data.question_field, c.data.answer_field) == ("problem", "solution")
        assert c.method.loss == "sft" and c.optim.lr == 5e-6 and c.data.global_batch_size == 256
        assert c.optim.warmup_ratio == 0.03 and c.optim.schedule == "linear"
        assert c.export_to.endswith(f"sft/{c.model.name}-numinamath-cot")


def test_eval_sets(cache):
    gsm, math = (compose_config([f"eval={e}"]).eval for e in ("gsm8k", "math500"))
    assert (gsm.path, gsm.hub_config, gsm.split) == ("openai/gsm8k", "main", "test")
    assert (math.path, math.split, math.id_field) == ("HuggingFaceH4/MATH-500", "test", "unique_id")


def test_reproduce_plan_order_and_neurons(cache):
    specs = [ROOT / "experiments" / f for f in ("yfpo_table1.yaml", "yfpo_table2.yaml", "fdt_table.yaml")]
    commands = plan(specs, ["hydra/launcher=slurm"], ["eval.backend=vllm"])
    stages = [m for m, _ in commands]
    order = ["yfpo.neurons", "yfpo.train", "yfpo.evaluate", "yfpo.tables"]
    assert stages == sorted(stages, key=order.index)  # neurons -> training -> evaluation -> tables
    # one neuron file per selector for Qwen2-0.5B (AttnLRP for all YFPO runs, random for the control)
    assert [a for m, a in commands if m == "yfpo.neurons"] == [["+experiment=dpo_10k"], ["+experiment=yfpo_2k_random"]]
    trained = [a[1] for m, a in commands if m == "yfpo.train"]
    assert trained.index("+experiment=fdt_sft") < trained.index("+experiment=fdt_dpo")  # SFT model first
    assert all(a[-1] == "hydra/launcher=slurm" for m, a in commands if m == "yfpo.train")
    assert ["-m", "run_dir=multirun/yfpo_2k", "eval=gsm8k,gsm8k_dev,math500", "eval.backend=vllm"] in [a for m, a in commands]


def test_the_plans_neuron_commands_make_the_files_its_training_jobs_read(cache):
    """With --train-args that change the model, each neuron command carries them, so the file it
    makes is the one the training jobs look for (and not the default model's); no launcher settings."""
    from yfpo.core.schema import role

    specs = [ROOT / "experiments" / "yfpo_table1.yaml"]
    commands = plan(specs, ["model=smollm2-135m", "hydra/launcher=slurm"], [])
    made = [a for m, a in commands if m == "yfpo.neurons"]
    assert made and all("model=smollm2-135m" in a and not any(o.startswith("hydra") for o in a) for a in made), made
    made_paths = {sweep_jobs("config", a)[0].neurons.path for a in made}
    read = {job.neurons.path for m, a in commands if m == "yfpo.train" for job in sweep_jobs("config", a[1:])
            if role(job.method) == "rewarded"}
    assert read and read <= made_paths and all("smollm2" in p for p in read), (read, made_paths)


def test_per_experiment_train_args_reach_only_the_experiments_they_name(cache, tmp_path):
    """--train-args-file: the shipped multi-GPU file shards the FDT recipe's 3B runs and leaves the
    Qwen2-0.5B ones alone; a name no spec trains, or a value that is not a list of overrides, is one error."""
    from yfpo.core.errors import ConfigError
    from yfpo.pipelines.reproduce import read_train_args_file

    specs = [ROOT / "experiments" / f for f in ("yfpo_table2.yaml", "fdt_table.yaml")]
    per = read_train_args_file(ROOT / "experiments" / "train_args" / "multi_gpu.yaml")
    commands = plan(specs, ["hydra/launcher=slurm"], [], per_experiment=per)
    trained = {a[1].removeprefix("+experiment="): a[2:] for m, a in commands if m == "yfpo.train"}
    assert trained["fdt_sft"] == ["hydra/launcher=slurm", "trainer=fsdp", "trainer.devices=2"]
    assert trained["fdt_step_dpo_fdt"][-2:] == ["trainer=fsdp", "trainer.devices=2"]
    assert trained["yfpo_2k"] == ["hydra/launcher=slurm"]
    jobs = sweep_jobs("config", ["+experiment=fdt_dpo", *trained["fdt_dpo"]])
    assert {(j.trainer.strategy.name, j.trainer.devices) for j in jobs} == {("fsdp", 2)}
    with pytest.raises(ConfigError, match=r"names \['fdt_sfft'\], which no table spec trains"):
        plan(specs, [], [], per_experiment={"fdt_sfft": ["trainer=fsdp"]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("fdt_sft: {trainer: fsdp}\n")
    with pytest.raises(ConfigError, match="`fdt_sft` must list overrides as strings"):
        read_train_args_file(bad)
    one_string = tmp_path / "one.yaml"
    one_string.write_text("fdt_sft: trainer=fsdp trainer.devices=2\n")
    assert read_train_args_file(one_string) == {"fdt_sft": ["trainer=fsdp", "trainer.devices=2"]}


@pytest.mark.slow  # make in a subprocess, composes all 74 jobs three times (~150 s)
def test_make_reproduce_tables_dry_run_lists_composed_commands():
    out = subprocess.run(["make", "-s", "reproduce-tables", "DRY_RUN=1", "TRAIN_ARGS=trainer=ddp"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = [l for l in out.stdout.splitlines() if l.startswith("python -m")]
    assert "# 25 commands (109 jobs, every config composed)" in out.stdout and len(lines) == 25  # 74 + 33 + 2
    assert lines[0] == "python -m yfpo.neurons +experiment=dpo_10k trainer=ddp"  # the overrides its file is made with
    assert "python -m yfpo.train -m +experiment=yfpo_2k trainer=ddp" in lines
    assert "# yfpo_2k: 12 jobs, training seeds 1, 2, 3" in out.stdout  # 4 lambdas x 3 seeds
    assert "# fdt_sft: 2 jobs, training seeds 42" in out.stdout  # the start model is trained once
    assert lines[-1].startswith("python -m yfpo.tables experiments/yfpo_table1.yaml")
    five = subprocess.run(["make", "-s", "reproduce-tables", "DRY_RUN=1", "SEEDS=1,2,3,4,5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert five.returncode == 0, five.stderr[-2000:]
    assert "# yfpo_2k: 20 jobs, training seeds 1, 2, 3, 4, 5" in five.stdout and "python -m yfpo.train -m +experiment=yfpo_2k seed=1,2,3,4,5" in five.stdout
    assert "# fdt_sft: 2 jobs, training seeds 42" in five.stdout and "+experiment=fdt_sft seed" not in five.stdout
    # a typo in the arguments fails before anything runs
    bad = subprocess.run(["make", "-s", "reproduce-tables", "DRY_RUN=1", "TRAIN_ARGS=trainer.max_step=5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "max_step" in bad.stderr



@pytest.mark.parametrize("train_args,eval_args,message", [  # a bad training value composes every job (~20 s)
    pytest.param(["optim.schedule=cosin"], [], r"optim.schedule=cosin: Invalid value 'cosin', expected one of", marks=pytest.mark.slow),
    ([], ["eval.backend=vlm"], r"eval.backend=vlm: Invalid value 'vlm', expected one of \[hf, vllm\]"),
    pytest.param(["lambda=-1"], [], "lambda=-1: give a strength >= 0", marks=pytest.mark.slow),
])
def test_reproduce_dry_run_checks_values_not_only_keys(train_args, eval_args, message, cache):
    """`make reproduce-tables DRY_RUN=1` checks every job's values as the stage itself will (reproduce.check)."""
    from hydra import initialize_config_dir

    from yfpo.core.config import CONF_DIR
    from yfpo.pipelines.reproduce import check

    specs = [ROOT / "experiments" / f for f in ("yfpo_table1.yaml", "yfpo_table2.yaml", "fdt_table.yaml")]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        with pytest.raises(ValueError, match=message):
            check(plan(specs, train_args, eval_args))


def test_attention_auto_prefers_flash_attention_only_for_half_precision(monkeypatch):
    import importlib.util

    import torch

    from yfpo.core.models import attention

    assert attention("eager", True) == "eager"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "flash_attn" else real_find_spec(name))
    assert attention("auto", True) == "sdpa"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else real_find_spec(name))
    assert attention("auto", True) == "flash_attention_2"
    # fp32 weights without autocast (neuron selection, ablation, hf evaluation): flash-attn would refuse them
    assert attention("auto", False) == "sdpa"


def test_sweeps_are_expanded_by_hydras_parser_list_values_included():
    """``a=[x,y]`` is one value, ``choice``/``range`` are sweeps (reproduce used to split on commas)."""
    jobs = sweep_jobs("config", ["+experiment=smoke", "seed=range(1,3)", "lambda=choice(0.1,0.2)", "method=yfpo",
                                 "eval.stop=[Question:,Problem:]"])
    assert sorted((j.seed, j["lambda"]) for j in jobs) == [(1, 0.1), (1, 0.2), (2, 0.1), (2, 0.2)]
    assert all(list(j.eval.stop) == ["Question:", "Problem:"] for j in jobs)


def test_only_a_training_load_turns_on_training_settings(cache):
    """model.gradient_checkpointing and use_cache=False are for training; evaluation, pair sampling
    and neuron selection load the model as it is."""
    from tests.conftest import FAST, compose_cfg, model_dir
    from yfpo.core.models import load_model

    cfg = compose_cfg(*FAST, "model.gradient_checkpointing=true")
    trained, served = load_model(cfg.model, model_dir(cfg), training=True), load_model(cfg.model, model_dir(cfg))
    assert trained.is_gradient_checkpointing and trained.config.use_cache is False
    assert not served.is_gradient_checkpointing and served.config.use_cache is not False
