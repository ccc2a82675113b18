"""Every training path under bf16 autocast on CPU, through the CLI: at step 0 the policy equals the
reference, so every pairwise method must log a margin of exactly 0 and a loss of exactly ln 2."""

import csv
import math

import numpy as np

from tests.conftest import FAST
from tests.test_scale import _run

LN2 = float(np.float32(math.log(2)))  # -log sigmoid(0) in fp32


def _first_row(run):
    with open(run / "logs" / "metrics.csv") as f:
        return next(r for r in csv.DictReader(f) if r.get("train/loss"))


def test_step0_is_exactly_dpo_at_initialisation_under_bf16_mixed(tmp_path, cache):
    _run(tmp_path, "yfpo.neurons", *FAST)  # random neurons: YFPO runs and DPO/FDT track them
    bf16 = ["trainer.precision=bf16-mixed", "trainer.max_steps=1", "checkpoints.count=1"]
    _run(tmp_path, "yfpo.train", "-m", *FAST, "name=bf16", "method=dpo,yfpo,fdt,yfpo_fdt", "lambda=0.0", *bf16)
    _run(tmp_path, "yfpo.train", *FAST, "method=sft", "data=synthetic_sft", *bf16, f"hydra.run.dir={tmp_path / 'sft'}")
    runs = {p.name.split("method=")[1].split(",")[0]: p for p in (tmp_path / "multirun" / "bf16").iterdir() if p.is_dir()}
    assert sorted(runs) == ["dpo", "fdt", "yfpo", "yfpo_fdt"]
    for method in ("dpo", "yfpo", "fdt", "yfpo_fdt"):
        row = _first_row(runs[method])
        assert float(row["rewards/margins"]) == 0.0, (method, row)
        assert float(row["rewards/chosen"]) == float(row["rewards/rejected"]) == 0.0, (method, row)
        assert float(row["train/loss"]) == LN2, (method, row)
        assert float(row["neuron/margin"]) != 0.0  # the neuron term is computed (tracked or with weight 0)
    sft = float(_first_row(tmp_path / "sft")["train/loss"])
    assert math.isfinite(sft) and sft > 0
