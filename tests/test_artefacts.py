"""One keying mechanism for every cached artefact: reuse on the same key, refusal (listing what
changed) on another, remaking when the key is missing (a torn artefact)."""

import json

import pytest

from tests.conftest import FAST, compose_cfg, model_dir
from yfpo.core import artefacts
from yfpo.data.rows import DataError, load_rows
from yfpo.assets.prepare import synthetic_files


def test_check_commit_and_every_changed_field_listed(tmp_path):
    f = tmp_path / "a.jsonl"
    assert not artefacts.check(f, {"x": 1}, "thing", "fix it")  # absent
    f.write_text("rows\n")
    assert not artefacts.check(f, {"x": 1}, "thing", "fix it")  # present but unkeyed: torn, made again
    artefacts.commit(f, {"x": 1, "y": [1, 2]})
    assert artefacts.check(f, {"x": 1, "y": [1, 2]}, "thing", "fix it")
    with pytest.raises(artefacts.StaleArtefactError,
                       match=r"thing was made from other inputs \(x: made with '1', now '2'; y: made with '\[1, 2\]', now None\)\. fix it"):
        artefacts.check(f, {"x": 2}, "thing", "fix it")


def test_fingerprints_follow_content_not_names(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("1\n")
    b.write_text("1\n")
    first = artefacts.file_fingerprint(a)
    assert first == artefacts.file_fingerprint(a)
    a.write_text("2\n")  # same size: the memo is keyed on mtime as well
    assert artefacts.file_fingerprint(a) != first
    assert artefacts.rows_fingerprint([{"q": 1, "a": 2}]) == artefacts.rows_fingerprint([{"a": 2, "q": 1}])
    assert artefacts.source_fingerprint("org/name") == "hub:org/name"
    (tmp_path / "mirror" / "org" / "name").mkdir(parents=True)
    (tmp_path / "mirror" / "org" / "name" / "d.parquet").write_text("x")
    assert artefacts.source_fingerprint("org/name", tmp_path / "mirror").startswith("mirror:")


def test_models_sharing_a_name_get_their_own_file_names(tmp_path):
    smoke, base = compose_cfg(*FAST), compose_cfg("model=tiny_base")
    assert smoke.model.name == base.model.name == "tiny_base"
    assert smoke.model_tag != base.model_tag and smoke.model_tag.startswith("tiny_base-")
    for key in ("neurons.path", "pairs.out"):
        assert smoke.model_tag in str(compose_cfg(*FAST).get(key.split(".")[0])[key.split(".")[1]])
    moved = compose_cfg(*FAST, f"cache_dir={tmp_path}")  # a moved cache keeps its names
    assert moved.model_tag == smoke.model_tag


def test_synthetic_data_made_with_other_settings_is_refused_and_the_fix_works(cache):
    synthetic_files(compose_cfg(*FAST).synthetic)
    with pytest.raises(artefacts.StaleArtefactError, match=r"synthetic data .* \(slip_rate: made with '0.0', now '0.5'\).*synthetic.dir="):
        synthetic_files(compose_cfg(*FAST, "synthetic.slip_rate=0.5").synthetic)
    paths = synthetic_files(compose_cfg(*FAST, "synthetic.slip_rate=0.5", f"synthetic.dir={cache}/smoke/synthetic-slips").synthetic)
    assert paths["sft"].is_file()


def test_the_tiny_model_is_keyed_on_its_architecture_and_a_torn_one_is_rebuilt(cache):
    path = model_dir(compose_cfg(*FAST))
    saved = artefacts.saved_key(path)
    assert json.loads(saved["arch"])["hidden_size"] == 32 and saved["init_seed"] == "42"
    with pytest.raises(artefacts.StaleArtefactError, match=r"model.path=.*arch: made with .*Delete .* or give this model its own model.path"):
        model_dir(compose_cfg(*FAST, "model.arch.hidden_size=16"))
    model_dir(compose_cfg(*FAST, "seed=7"))  # the training seed is not the model's: reused
    artefacts.key_path(path).unlink()  # as if a build had been killed before its key was written
    assert model_dir(compose_cfg(*FAST)) == path and artefacts.saved_key(path) == saved


def test_a_data_directory_without_data_files_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data.path=.*empty: the directory holds no .jsonl/.json/.parquet data files \(found: nothing\)"):
        load_rows(str(tmp_path / "empty"))
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "rows.csv").write_text("question,answer\n1,2\n")
    with pytest.raises(DataError, match=r"found: \.csv"):
        load_rows(str(tmp_path / "csv"))
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "train.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    assert load_rows(str(tmp_path / "jsonl")) == [{"question": "q", "answer": "a"}]


@pytest.mark.slow  # real processes: the printed command runs as pasted
def test_a_stage_that_reads_no_synthetic_file_writes_none(tmp_path, cache, monkeypatch):
    """evaluate on a local file with a checkpoint made elsewhere: nothing appears in synthetic.dir."""
    import subprocess
    import sys

    from yfpo.assets.prepare import ensure_synthetic

    cfg = compose_cfg(*FAST)
    ensure_synthetic(cfg.synthetic, "openai/gsm8k", tmp_path / "elsewhere.jsonl", None)
    assert not cache.exists()
    model = model_dir(cfg)  # the smoke model is built from the synthetic corpus: this cache has it
    monkeypatch.setenv("YFPO_CACHE", str(tmp_path / "other-cache"))
    done = subprocess.run([sys.executable, "-m", "yfpo.evaluate", *FAST, f"run_dir={model}", "eval=gsm8k",
                           "eval.path=tests/fixtures/eval/gsm8k_mini.jsonl", "eval.limit=2", "eval.max_new_tokens=4"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "other-cache" / "smoke" / "synthetic").exists()
    ensure_synthetic(cfg.synthetic, f"{cfg.synthetic.dir}/test.jsonl")  # a read under synthetic.dir makes them
    assert (cache / "smoke" / "synthetic" / "test.jsonl").is_file()


@pytest.mark.slow  # real processes: the printed command runs as pasted
def test_a_model_made_by_training_is_a_named_step_and_its_hint_works(tmp_path, cache):
    """model.prepare=train:<experiment> is never trained behind a stage's back: the stage stops with
    the `python -m yfpo.prepare` command, which (run as printed) makes it; then the stage runs."""
    import os
    import shlex
    import subprocess
    import sys

    env = {**os.environ, "YFPO_CACHE": str(cache)}
    train = [sys.executable, "-m", "yfpo.train", *FAST, "model.path=${cache_dir}/smoke/sft", "model.prepare=train:smoke_sft",
             f"hydra.run.dir={tmp_path / 'run'}"]
    first = subprocess.run(train, capture_output=True, text=True, env=env)
    errors = [l for l in first.stderr.splitlines() if l.startswith("yfpo: error:")]
    assert first.returncode == 2 and len(errors) == 1, first.stderr[-2000:]
    assert not (cache / "smoke" / "sft").exists() and not (cache / "smoke" / "sft-run").exists()
    command = errors[0].split("`")[1]
    assert command.startswith("python -m yfpo.prepare ") and "model.prepare=train:smoke_sft" in command
    argv = shlex.split(command)
    made = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr[-2000:]
    assert made.stdout.strip().splitlines()[-1] == str(cache / "smoke" / "sft")
    again = subprocess.run(train, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "run" / "DONE").is_file()


@pytest.mark.slow  # real processes: the printed command runs as pasted
def test_the_prepare_step_trains_on_the_callers_draw_of_the_synthetic_data(tmp_path, cache):
    """`python -m yfpo.prepare synthetic.seed=7 ...`: the training run that makes the model reads the
    seed-7 files, not the default draw, and a stage given the same settings then accepts the model."""
    import os
    import subprocess
    import sys

    from omegaconf import OmegaConf

    env = {**os.environ, "YFPO_CACHE": str(cache)}
    args = [*FAST, "model.path=${cache_dir}/smoke/sft", "model.prepare=train:smoke_sft", "synthetic.seed=7",
            "synthetic.dir=${cache_dir}/smoke/synthetic-s7"]
    made = subprocess.run([sys.executable, "-m", "yfpo.prepare", *args], capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr[-2000:]
    assert "synthetic.seed=7" in made.stdout, "the preparing command names the draw it trains on"
    ran = OmegaConf.load(cache / "smoke" / "sft-run" / "run_config.yaml")
    assert ran.synthetic.seed == 7 and ran.data.path == str(cache / "smoke" / "synthetic-s7" / "sft.jsonl")
    assert not (cache / "smoke" / "synthetic").exists(), "the default draw was never made"
    train = subprocess.run([sys.executable, "-m", "yfpo.train", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                           capture_output=True, text=True, env=env)
    assert train.returncode == 0, train.stderr[-2000:]
    other = subprocess.run([sys.executable, "-m", "yfpo.train", *args[:-2], f"hydra.run.dir={tmp_path / 'other'}"],
                           capture_output=True, text=True, env=env)
    assert other.returncode == 2 and "synthetic.seed: made with '7', now '0'" in other.stderr, other.stderr[-2000:]
