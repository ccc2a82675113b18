"""Hub datasets through the hub-id code path (a local mirror with the hub's layouts and schemas),
the seeded 2K subset, and the fast, explicit failure offline."""

import os
import subprocess
import sys
import time

import pytest

from tests import hub_fixtures as hf
from tests.conftest import FAST, ROOT, compose_cfg, model_dir
from yfpo.core import hub
from yfpo.core.artefacts import StaleArtefactError
from yfpo.data.rows import read_rows
from yfpo.evaluate.problems import load_problems
from yfpo.train.fit import fit


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    return hf.write_mirror(tmp_path_factory.mktemp("hub-mirror"))


def test_hub_ids_are_told_from_paths(tmp_path):
    assert hub.is_hub_id("xinlai/Math-Step-DPO-10K") and hub.is_hub_id("Qwen/Qwen2.5-3B-Instruct")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    os.chdir(tmp_path)
    try:
        assert not hub.is_hub_id("org/name")  # an existing directory wins
    finally:
        os.chdir(ROOT)
    assert not hub.is_hub_id("/abs/path") and not hub.is_hub_id("a/b/c") and not hub.is_hub_id("x.jsonl")


def test_preference_and_sft_data_by_hub_id(mirror, cache):
    cfg = compose_cfg("data=math_step_dpo_10k", f"hub.mirror={mirror}")
    assert cfg.data.path == hf.STEP_DPO
    rows = read_rows(cfg.data, "pairs", cfg.hub)
    assert rows == hf.step_dpo_rows(40)  # every field, in order

    cfg = compose_cfg("data=numinamath_cot", f"hub.mirror={mirror}")
    rows = read_rows(cfg.data, "sft", cfg.hub)
    assert len(rows) == 40  # both train shards, not the test split
    assert rows[3] == {"question": hf.numina_rows(4)[3]["problem"], "answer": hf.numina_rows(4)[3]["solution"]}


def test_eval_sets_by_hub_id(mirror, cache):
    gsm_cfg, math_cfg = (compose_cfg(f"eval={e}", f"hub.mirror={mirror}") for e in ("gsm8k", "math500"))
    gsm = load_problems(gsm_cfg.eval, gsm_cfg.hub)
    assert len(gsm) == 20  # config "main", split "test"
    assert gsm[0] == {"id": 0, "question": hf.gsm8k_rows(1, offset=1000)[0]["question"], "gold": str(2 * 1000 + 5)}
    math = load_problems(math_cfg.eval, math_cfg.hub)
    assert len(math) == 40 and math[7] == {"id": "test/algebra/7.json", "question": "What is $7^2$?", "gold": "49"}


def test_2k_subset_is_written_once_and_reused(mirror, tmp_path, cache):
    over = ["data=math_step_dpo_2k", "data.subset_size=10", f"hub.mirror={mirror}"]
    cfg = compose_cfg(*over)
    assert cfg.data.subset_file.startswith(str(cache))
    first = read_rows(cfg.data, "pairs", cfg.hub)
    assert len(first) == 10 and all(r in hf.step_dpo_rows(40) for r in first)
    # later runs read the file, not the source: they see the same rows even with the source gone
    cfg_gone = compose_cfg(*over[:-1], f"hub.mirror={tmp_path / 'empty'}", "hub.timeout_s=0.1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        assert read_rows(cfg_gone.data, "pairs", cfg_gone.hub) == first
    finally:
        del os.environ["HF_HUB_OFFLINE"]
    with pytest.raises(StaleArtefactError, match="made from other inputs.*subset_seed"):
        read_rows(compose_cfg(*over, "data.subset_seed=7", f"data.subset_file={cfg.data.subset_file}").data, "pairs", cfg.hub)


def test_training_on_math_step_dpo_by_hub_id(mirror, cache, tmp_path):
    cfg = compose_cfg(*FAST, "data=math_step_dpo_10k", f"hub.mirror={mirror}", "data.max_length=96",
                      "data.max_prompt_length=64", "data.batch_size=2", "trainer.max_steps=2")
    fit(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "DONE").is_file()


OFFLINE_SNIPPET = """
import sys
from yfpo.core.config import compose_config
from yfpo.data.rows import read_rows
from tests.conftest import model_dir
cfg = compose_config(sys.argv[1:])
try:
    if cfg.model.name == "qwen2-0.5b":
        model_dir(cfg)
    else:
        read_rows(cfg.data, "pairs", cfg.hub)
except Exception as err:
    print(type(err).__name__, err)
"""


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable endpoint"])
@pytest.mark.parametrize("what", ["data=math_step_dpo_10k", "model=qwen2-0.5b"])
@pytest.mark.slow  # real processes with an offline hub
def test_offline_without_cache_fails_fast_and_says_what_to_do(how, what, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "YFPO_HUB"))}
    env.update(HF_HOME=str(tmp_path / "empty-hf-home"), YFPO_CACHE=str(tmp_path / "cache"))
    if how == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:  # a port nobody listens on: the probe is refused at once
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", OFFLINE_SNIPPET, what], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert out.stdout.startswith("HubUnavailable"), out.stdout + out.stderr[-2000:]
    repo, key = ("xinlai/Math-Step-DPO-10K --repo-type dataset", "data.path=") if what.startswith("data") else ("Qwen/Qwen2-0.5B --local-dir", "model.path=")
    assert f"hf download {repo}" in out.stdout and key in out.stdout and "hub.mirror=" in out.stdout
    assert elapsed < 60, f"took {elapsed:.0f} s: the libraries' own retries were not bypassed"


def test_model_by_hub_id_from_the_mirror_also_as_ckpt_0(tokenizer, tmp_path, cache):
    from omegaconf import OmegaConf

    from tests.conftest import make_model
    from yfpo.evaluate.discovery import find_checkpoints
    from yfpo.evaluate.run import run_settings
    from yfpo.core.models import load_model

    mirror = tmp_path / "mirror"
    make_model(tokenizer).save_pretrained(mirror / "Qwen" / "Qwen2-0.5B")
    tokenizer.save_pretrained(mirror / "Qwen" / "Qwen2-0.5B")
    cfg = compose_cfg("model=qwen2-0.5b", f"hub.mirror={mirror}", "model.attn_implementation=sdpa")
    path = model_dir(cfg)
    assert path == mirror / "Qwen" / "Qwen2-0.5B" and load_model(cfg.model, path).config.num_hidden_layers == 2
    # a run that started from the hub id: its base model is evaluated as ckpt-0, with the run's own prompt
    run = tmp_path / "runs" / "r"
    make_model(tokenizer).save_pretrained(run / "checkpoints" / "ckpt-1")
    OmegaConf.save(OmegaConf.merge(cfg, {"model": {"template": "chat"}}), run / "run_config.yaml")
    found = find_checkpoints(tmp_path / "runs", cfg.hub)
    assert [(n, p) for n, p, _ in found] == [("ckpt-0", path), ("ckpt-1", run / "checkpoints" / "ckpt-1")]
    here = compose_cfg("eval=gsm8k")  # model=tiny here: alpaca
    assert here.eval.template == "alpaca" and run_settings(here, run).eval.template == "chat"
