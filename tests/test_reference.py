"""reference=precompute: the same losses as a live reference, a cache that is reused, and refused when stale."""

import csv

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import FAST, compose_cfg
from yfpo.train import module
from yfpo.train import reference
from yfpo.train.reference import ReferenceCacheError
from yfpo.train.fit import fit

LR = ["optim.lr=3e-3", "optim.warmup_ratio=0.0", "optim.schedule=constant"]


def _metrics(run):
    with open(run / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return {k: torch.tensor([float(r[k]) for r in rows]) for k in ("train/loss", "rewards/margins", "logps/chosen")}


@pytest.fixture
def counted(monkeypatch):
    """Counts the passes of the reference over the training rows."""
    calls = []
    real = reference.compute_table

    def compute_table(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("yfpo.train.module.compute_table", compute_table)
    return calls


def test_precomputed_reference_gives_the_live_losses_and_is_reused(tmp_path, cache, counted, monkeypatch):
    live = fit(compose_cfg(*FAST, *LR, "method=dpo"), tmp_path / "live").parent
    copies = []
    real_copy = module.frozen_copy
    monkeypatch.setattr(module, "frozen_copy", lambda *a: copies.append(1) or real_copy(*a))
    pre = fit(compose_cfg(*FAST, *LR, "method=dpo", "reference=precompute"), tmp_path / "pre").parent
    assert len(counted) == 1
    assert copies == []  # the table comes from the policy before its first step: no second model in memory
    a, b = _metrics(live), _metrics(pre)
    for k in a:  # training moves the policy, so later steps compare the reference too
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=k)
    assert abs(a["train/loss"][-1] - a["train/loss"][0]) > 1e-3  # the policy moved
    [cached] = (cache / "reference").glob("*.safetensors")
    # another run on the same model and data (a lambda/seed sweep job) reads the table, computes nothing
    fit(compose_cfg(*FAST, *LR, "method=fdt", "seed=7", "reference=precompute"), tmp_path / "again")
    assert len(counted) == 1 and list((cache / "reference").glob("*.safetensors")) == [cached]


def test_stale_cache_is_refused_with_the_file_and_the_fix(tmp_path, cache):
    cfg = compose_cfg(*FAST, "method=dpo", "reference=precompute", "trainer.max_steps=2", "checkpoints.count=1")
    fit(cfg, tmp_path / "first")
    # the model at model.path is replaced (retrained, say): same path, other weights
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    model.save_pretrained(cfg.model.path)
    with pytest.raises(ReferenceCacheError, match=r"reference cache .*\.safetensors was made from other inputs.*weights: made with .*Delete it"):
        fit(cfg, tmp_path / "second")


def test_a_foreign_file_is_refused(tmp_path):
    bad = tmp_path / "ref.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ReferenceCacheError, match="cannot be read.*delete it"):
        reference.ReferenceCache(bad, {}).load()
