"""Every class of user error, through the CLI: one clear message (file, row or key, and the fix),
a non-zero exit status, no traceback; HYDRA_FULL_ERROR=1 brings the traceback back."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import FAST, compose_cfg


def _cli(tmp_path, module, *args, env=None):
    hydra_app = module != "yfpo.tables"
    res = subprocess.run([sys.executable, "-m", module, *args, *([f"hydra.run.dir={tmp_path / 'run'}"] * hydra_app)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    return res.returncode, res.stderr


def _pairs(n=4):
    row = {"prompt": "What is 2 + 3?", "initial_reason_steps": "", "chosen": "2 + 3 = 5.", "rejected": "2 + 3 = 6.",
           "full_chosen": "2 + 3 = 5.\n#### 5", "full_rejected": "2 + 3 = 6.\n#### 6", "answer": "5", "dataset": "toy"}
    return [dict(row) for _ in range(n)]


def _write_jsonl(path, rows, bad_line=None):
    lines = [json.dumps(r) for r in rows]
    if bad_line is not None:
        lines[bad_line - 1] = '{"prompt": "x", "chosen": }'  # what a hand edit or a torn write leaves
    path.write_text("\n".join(lines) + "\n")
    return path


def case_invalid_json_line(tmp_path):
    f = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(), bad_line=3)
    return ["yfpo.train", *FAST, f"data.path={f}"], [r"pairs.jsonl: line 3 is not valid JSON", "fix or delete that line"]


def case_malformed_row(tmp_path):
    rows = _pairs()
    del rows[1]["rejected"]
    f = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    return ["yfpo.train", *FAST, f"data.path={f}"], [r"pairs.jsonl: row 1 field 'rejected' must be a string, got missing"]


def case_missing_dataset(tmp_path):
    return ["yfpo.train", *FAST, f"data.path={tmp_path / 'nope.jsonl'}"], [r"data.path=.*nope.jsonl: file does not exist"]


def case_corrupt_neuron_file(tmp_path):
    bad = tmp_path / "neurons.safetensors"
    bad.write_bytes(b"\xff" * 64)
    return ["yfpo.train", *FAST, "method=yfpo", f"neurons.path={bad}"], [r"neuron file .*neurons.safetensors cannot be read",
                                                                        r"move it aside \(mv ", "python -m yfpo.neurons"]


def case_bad_config_value(tmp_path):
    return ["yfpo.pairs", *FAST, "pairs.mode=stepwise"], [r"pairs.mode=stepwise: Invalid value 'stepwise', expected one of \[step, full\] \(key pairs.mode\)"]


def case_missing_model(tmp_path):
    return ["yfpo.train", *FAST, "model.prepare=null", f"model.path={tmp_path / 'no-model'}"], [r"model.path=.*no-model: no HF model directory"]


def case_bad_neuron_selector(tmp_path):
    return ["yfpo.neurons", *FAST, "neurons.selector=lrp"], [r"neurons.selector=lrp: Invalid value 'lrp', expected one of \[attnlrp, activation, random\]"]


def case_evaluate_without_checkpoints(tmp_path):
    (tmp_path / "empty").mkdir()
    return ["yfpo.evaluate", *FAST, f"run_dir={tmp_path / 'empty'}"], [r"no HF checkpoints \(config.json\) under .*empty"]


def case_chosen_identical_to_rejected(tmp_path):
    rows = _pairs(6)
    for i in (2, 4):
        rows[i]["full_rejected"] = rows[i]["full_chosen"]
    f = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    return ["yfpo.train", *FAST, f"data.path={f}", "data.pair_mode=full"], [
        r"pairs.jsonl: 2 row\(s\) with 'full_chosen' identical to 'full_rejected': rows 2, 4; remove them"]


def case_empty_response(tmp_path):
    rows = _pairs(5)
    rows[3]["full_chosen"] = ""
    f = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    return ["yfpo.train", *FAST, f"data.path={f}", "data.pair_mode=full"], [r"1 row\(s\) with an empty 'full_chosen' or 'full_rejected': rows 3"]


def case_lambda_on_a_method_that_ignores_it(tmp_path):
    return ["yfpo.train", *FAST, "method=dpo", "lambda=0.5"], [r"lambda=0.5 is read only by method=yfpo or yfpo_fdt; method=dpo"]


def case_jsonl_not_utf8(tmp_path):
    f = _write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    f.write_bytes(f.read_bytes().replace(b"What", b"Wh\xe9t", 1))  # a Latin-1 byte on line 1
    return ["yfpo.train", *FAST, f"data.path={f}"], [r"pairs.jsonl: line 1 is not UTF-8 \(byte 15\): re-save the file as UTF-8"]


def case_eval_batch_size_zero(tmp_path):
    (tmp_path / "empty").mkdir()
    return ["yfpo.evaluate", *FAST, f"run_dir={tmp_path / 'empty'}", "eval.batch_size=0"], [r"eval.batch_size=0: give an integer >= 1"]


def case_table_spec_without_task(tmp_path):
    (tmp_path / "t.yaml").write_text("name: t\nbaseline: DPO\nrows: []\n")
    return ["yfpo.tables", str(tmp_path / "t.yaml")], [r"t.yaml: the table spec needs the keys \['task'\]"]


def case_table_spec_missing(tmp_path):
    return ["yfpo.tables", str(tmp_path / "nope.yaml")], [r"nope.yaml: no such table spec"]


def case_pairs_from_a_model_that_yields_none(tmp_path):
    # the smoke model is random: every sample of these 4 questions is wrong, so no pair can be formed
    return ["yfpo.pairs", *FAST, "pairs.num_questions=4", "pairs.samples=2", f"pairs.out={tmp_path / 'p.jsonl'}"], [
        r"p.jsonl: no pairs from 4 questions x 2 samples .*pairs.temperature"]


CASES = [case_invalid_json_line, case_malformed_row, case_missing_dataset, case_corrupt_neuron_file, case_bad_config_value,
         case_missing_model, case_bad_neuron_selector, case_evaluate_without_checkpoints, case_lambda_on_a_method_that_ignores_it,
         case_chosen_identical_to_rejected, case_empty_response, case_jsonl_not_utf8, case_eval_batch_size_zero,
         case_table_spec_without_task, case_table_spec_missing, case_pairs_from_a_model_that_yields_none]


# One case runs in the fast tier (the CLI's error path); the others start a process each (~12 s).
@pytest.mark.parametrize("case", [pytest.param(c, id=c.__name__[5:], marks=() if c is case_bad_config_value else pytest.mark.slow)
                                  for c in CASES])
def test_user_errors_end_with_one_clear_message(tmp_path, cache, case):
    args, patterns = case(tmp_path)
    code, err = _cli(tmp_path, *args)
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    message = [l for l in err.splitlines() if l.startswith("yfpo: error:")]
    assert len(message) == 1, err[-2000:]
    for p in patterns:
        assert __import__("re").search(p, message[0]), (p, message[0])


@pytest.mark.slow  # real processes
def test_full_error_brings_the_traceback_back(tmp_path, cache):
    args, _ = case_missing_dataset(tmp_path)
    code, err = _cli(tmp_path, *args, env={"HYDRA_FULL_ERROR": "1"})
    assert code != 0 and "Traceback" in err and "DataError" in err


@pytest.mark.slow  # real processes
def test_the_method_schema_carries_the_defaults_and_refuses_a_wrong_type_by_name(tmp_path):
    """conf/method/*.yaml keep only what differs from yfpo/core/schema.py's MethodConfig."""
    sft = compose_cfg("method=sft")
    assert (sft.method.form, sft.method.neuron_score, sft.method.nll_weight, sft.method.fdt) == ("margin", "raw", 0.0, False)
    assert compose_cfg("method=yfpo_fdt").method.fdt is True
    done = subprocess.run([sys.executable, "-m", "yfpo.train", *FAST, "method.nll_weight=abc",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "method.nll_weight" in done.stderr and "could not be converted to Float" in done.stderr
    choice = subprocess.run([sys.executable, "-m", "yfpo.train", *FAST, "optim.schedule=cosin",
                             f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True)
    assert choice.returncode != 0 and "Traceback" not in choice.stderr, choice.stderr
    assert "optim.schedule" in choice.stderr and "expected one of [cosine, linear, constant]" in choice.stderr
    typo = subprocess.run([sys.executable, "-m", "yfpo.train", *FAST, "method.nll_wieght=0.1",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True)
    assert typo.returncode != 0 and "nll_wieght" in typo.stderr and "Traceback" not in typo.stderr


@pytest.mark.parametrize("override, key, words", [
    ("data.batch_size=abc", "data.batch_size", "could not be converted to Integer"),
    ("model.trust_remote_code=maybe", "model.trust_remote_code", "not a valid bool"),
    ("neurons.num_samples=many", "neurons.num_samples", "could not be converted to Integer"),
    ("reference.cache_dir=[1,2]", "reference.cache_dir", "Cannot convert"),
    ("eval.stop=3", "eval.stop", "ListConfig"),
    ("data.subset_sise=10", "data.subset_sise", "not in 'DataConfig'"),
])
def test_every_group_schema_refuses_a_wrong_type_or_a_misspelt_key_by_name(override, key, words):
    """model, data, neurons, reference and eval have typed schemas (yfpo/core/schema.py) too; a refusal
    is one ConfigError naming the key."""
    from yfpo.core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        compose_cfg(override)
    text = str(e.value)
    assert f"(key {key})" in text and words in text and "\n" not in text, text


def test_group_yamls_keep_only_what_differs_from_their_schema():
    """A default lives in the schema once: the YAMLs that leave a key out get it from there."""
    from yfpo.core.schema import DataConfig, EvalConfig, NeuronsConfig

    cfg = compose_cfg("neurons=random", "eval=math500")
    assert cfg.neurons.num_samples == NeuronsConfig.num_samples and "num_samples" not in open("conf/neurons/random.yaml").read()
    assert cfg.eval.warn_rate == EvalConfig.warn_rate and "warn_rate" not in open("conf/eval/math500.yaml").read()
    assert cfg.data.num_workers == DataConfig.num_workers and "num_workers" not in open("conf/data/synthetic.yaml").read()


@pytest.mark.parametrize("overrides, match", [
    (["+data.batchsize=4"], r"\+data.batchsize=4: yfpo reads no key 'data.batchsize' \(did you mean data.batch_size=\.\.\.\?"),
    (["+methd=dpo"], r"\+methd=dpo: yfpo reads no key 'methd' \(did you mean method=\.\.\.\?"),
    (["+eval.limt=5"], r"did you mean eval.limit="),
])
def test_a_plus_key_that_nothing_reads_is_refused_by_name(overrides, match):
    from yfpo.core.config import compose_config
    from yfpo.core.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        compose_config([*FAST, *overrides])
    compose_config([*FAST, "+trainer.profiler=simple", "+variant=dpo"])  # passed on to Lightning; a config group


def test_a_plus_on_a_key_yfpo_reads_names_the_override_without_it():
    """A schema key the group's YAML leaves out (``data.group_by_length``) is set with ``key=value``;
    the error's advice, followed, composes."""
    import re

    from yfpo.core.config import compose_config
    from yfpo.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.group_by_length is a key yfpo reads already; set it without") as e:
        compose_config([*FAST, "+data.group_by_length=64"])
    advice = re.search(r"\(([^()]+)\)$", str(e.value)).group(1)
    assert advice == "data.group_by_length=64"
    assert compose_config([*FAST, advice]).data.group_by_length == 64


@pytest.mark.slow  # real processes: Hydra's own advice, followed
def test_hydras_suggested_plus_override_is_refused_in_one_line_and_leaves_no_run_directory(tmp_path):
    run = tmp_path / "run"
    first = subprocess.run([sys.executable, "-m", "yfpo.train", *FAST, "data.batchsize=4", f"hydra.run.dir={run}"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    suggested = __import__("re").search(r"To append to your config use (\S+)", first.stderr)
    assert first.returncode != 0 and suggested and suggested[1] == "+data.batchsize=4", first.stderr[-2000:]
    code, err = _cli(tmp_path, "yfpo.train", *FAST, suggested[1])
    lines = [l for l in err.splitlines() if l.startswith("yfpo: error:")]
    assert code == 2 and len(lines) == 1 and "did you mean data.batch_size" in lines[0] and "Traceback" not in err, err[-2000:]
    assert not run.exists(), sorted(p.name for p in run.rglob("*"))  # the refused start left nothing behind
