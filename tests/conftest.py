"""Shared fixtures: a tiny random Qwen2 model with an offline tokenizer, and config composition."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from yfpo.data import synthetic
from yfpo.assets import tiny
from yfpo.core.config import compose_config
from yfpo.data.prompts import format_prompt

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")
SMALL_ARCH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=48, max_position_embeddings=256)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(out, num_sft=200, num_preference=64, num_test=20, seed=0)
    return out


@pytest.fixture(scope="session")
def tokenizer(synth_dir):
    rows = [json.loads(l) for l in (synth_dir / "sft.jsonl").read_text().splitlines()]
    return tiny.build_tokenizer([format_prompt("alpaca", r["question"], None) + r["answer"] for r in rows], 300)


def make_model(tokenizer, tied: bool = True, seed: int = 0):
    model = tiny.build_model(tokenizer, seed=seed, **SMALL_ARCH)
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return model


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty yfpo cache for this test (YFPO_CACHE)."""
    monkeypatch.setenv("YFPO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def compose_cfg(*overrides: str):
    return compose_config(list(overrides))


def job_of(cls, cfg):
    """The job ``cls`` of a stage (``SelectionJob``, ``AblationJob``, ``PairsJob``) from a composed config,
    each field the ``cfg`` key of its name, as the stage's ``main`` builds it."""
    return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls)})


def model_dir(cfg, **kw) -> Path:
    """The model directory of a composed config, as the stages ask :func:`ensure_model` for it."""
    from yfpo.assets.prepare import ensure_model

    return ensure_model(cfg.model, cache_dir=cfg.cache_dir, hub_cfg=cfg.hub, syn=cfg.synthetic, **kw)


def neurons_for(cfg, model_config, weights: str, user: str, overrides):
    """The neuron file of a composed config, checked as training checks it."""
    from yfpo.neurons import io

    key = io.neuron_key(cfg.neurons, cfg.model_tag, weights, model_config, cfg.data.template, cfg.hub.mirror)
    return io.load_for(cfg.neurons, key, user, overrides)


pytest_plugins = ["tests.tiers"]


def interrupt(cwd, env, run, sig, args, delay=0.0):
    """Starts ``python -m yfpo.train *args`` in ``run`` and sends ``sig`` ``delay`` s after its first
    HF checkpoint is written; its exit status and standard error."""
    cmd = [sys.executable, "-m", "yfpo.train", *args, f"hydra.run.dir={run}"]
    err = Path(cwd) / f"{run.name}.stderr"
    with open(err, "w") as stderr:  # a file, not a pipe that nobody reads while the run fills it
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        marker = run / "checkpoints" / "ckpt-1" / "yfpo_state.json"
        deadline = time.time() + 300
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(proc.pid, sig)
        proc.wait(timeout=300)
    assert not (run / "DONE").exists(), "the run ended before the signal"
    return proc.returncode, err.read_text()

# A real training run in seconds on 2 CPU cores (conf/experiment/smoke.yaml).
FAST = ["+experiment=smoke"]

