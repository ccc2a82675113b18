"""The whole embedded pipeline, as `make demo` runs it (slow: it SFT-trains the tiny model)."""

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("YFPO_CACHE", str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-m", "yfpo.demo"], cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    table = (tmp_path / "runs" / "demo" / "summary.md").read_text()
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]] for line in table.splitlines()[2:]}
    assert set(rows) == {"SFT model (start)", "method=dpo", "method=yfpo lambda=0.1", "method=fdt"}
    sft_accuracy = float(rows["SFT model (start)"][-1])
    assert 0.15 <= sft_accuracy <= 0.85, "the embedded model must be neither trivial nor saturated"
    assert all(re.fullmatch(r"-?[\d.e-]+", rows[r][0]) for r in rows if r.startswith("method"))
