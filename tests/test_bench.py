"""The benchmark harness (``make bench``, benchmarks/bench.py) works end to end; nothing here is timed.

``--quick`` runs the parity worker and one variant pair (TRL DPO, yfpo DPO) on a tiny vocabulary,
each in its own subprocess, and the printed table and the JSON must parse.
"""

import json
import subprocess
import sys

import pytest

from benchmarks import bench
from tests.conftest import ROOT

pytest.importorskip("trl", reason="trl is in the dev extra (make install adds it)")


def test_pairs_are_unequal_and_the_word_tokenizer_gives_back_the_ids():
    shapes = bench.pair_shapes(256)
    assert max(p + max(c, r) for p, c, r in shapes) == 256
    assert all(c != r for _, c, r in shapes) and len({p for p, _, _ in shapes}) == 2
    vocab = bench.QUICK_ARCH["vocab_size"]
    tokenizer = bench.word_tokenizer(vocab)
    assert len(tokenizer) == vocab and tokenizer.eos_token_id == bench.eos_id(vocab)
    for prompt, chosen, rejected in bench.make_pairs(64, vocab):
        assert chosen[-1] == rejected[-1] == tokenizer.eos_token_id
        for ids in (prompt, prompt + chosen):
            assert tokenizer(bench.to_text(ids, vocab), add_special_tokens=False)["input_ids"] == ids


@pytest.mark.slow  # a whole benchmark run (~25 s)
def test_quick_run_prints_a_table_and_saves_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    result = json.loads(out.read_text())
    parity = result["parity"]
    assert parity["live_abs_diff"] <= 1e-4 and parity["pre_abs_diff"] <= 1e-4
    assert parity["yfpo_live"] != pytest.approx(0.6931471805599453)  # the reference differs from the policy
    variants = result["variants"]
    assert set(variants) == {"trl_live", "yfpo_dpo"}
    assert variants["trl_live"]["tokens"] == variants["yfpo_dpo"]["tokens"]  # the same ids on both sides
    for v in variants.values():
        assert v["step_s"] > 0 and v["peak_growth_bytes"] >= 0 and v["threads"] == result["machine"]["threads"]
        assert v["loss_first"] == pytest.approx(0.6931471805599453, abs=1e-6)  # step 0: policy == reference
    statuses = {t["target"]: t["status"] for t in result["targets"]}
    assert statuses["YFPO <= 1.05x DPO step time"] == "n/a"  # not measured by --quick
    assert {statuses["DPO peak memory <= 0.5x TRL's"], statuses["DPO step time <= 1.0x TRL's"]} <= {"PASS", "MISS"}

    # The printed main table: a header, a rule, then one row per variant with numbers in every column.
    lines = [l for l in proc.stdout.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in l.strip("|").split("|")] for l in lines[2:])}
    assert set(rows) == {"TRL DPO (live ref)", "yfpo DPO (live ref)"}
    for row in rows.values():
        assert float(row["step time"].removesuffix(" s")) > 0
        assert float(row["peak mem growth"].removesuffix(" GB")) >= 0
        assert float(row["time vs TRL live"].removesuffix("x")) > 0
    assert "OK (<= 1e-4)" in proc.stdout
    assert sum(l.lstrip().startswith(("[PASS]", "[MISS]", "[n/a]")) for l in proc.stdout.splitlines()) == 6


def test_the_memory_floor_by_hand():
    """Qwen2-0.5B's published 494,032,768 parameters; the floor is 4 + 4 + 8 bytes a parameter for the
    policy (fp32 weights, gradients, AdamW's two moments) plus 4 for a live fp32 reference."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from benchmarks import memory, paper_models

    assert paper_models.count_parameters(paper_models.QWEN2_0_5B) == 494_032_768
    small = Qwen2ForCausalLM(Qwen2Config(**paper_models.QUICK, tie_word_embeddings=True))
    assert paper_models.count_parameters(paper_models.QUICK) == sum(p.numel() for p in small.parameters())
    f = memory.floor_bytes(494_032_768)
    assert (f["weights"], f["gradients"], f["adamw"], f["reference"]) == (1_976_131_072, 1_976_131_072, 3_952_262_144, 1_976_131_072)
    assert f["total"] == 9_880_655_360  # 9.88 GB
    assert memory.floor_bytes(10, reference=None)["total"] == 160 and memory.floor_bytes(10, reference="bfloat16")["total"] == 180
    assert memory.checkpoint_bytes(494_032_768) == 5_928_393_216  # last.ckpt: weights and AdamW, 5.9 GB


def test_the_gpu_script_runs_its_plumbing_on_a_cpu(tmp_path):
    """`make bench-gpu ARGS=--dry-run`: every variant steps at tiny size; MFU's arithmetic by hand."""
    from benchmarks import gpu, paper_models

    gpu.main(["--dry-run", "--out", str(tmp_path / "gpu.json")])
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert [r["variant"] for r in report["training"]] == ["TRL DPO", "yfpo DPO", "yfpo YFPO", "yfpo FDT"]
    for r in report["training"]:
        assert r["tokens_per_s"] > 0 and abs(r["loss"] - 0.6931) < 0.01, r  # step 0: policy = reference, loss ln 2
    assert "not started in --dry-run" in report["vllm"]
    n = paper_models.count_parameters(paper_models.QWEN2_0_5B) - 896 * 49  # without the 49 RMSNorm weight vectors
    assert gpu.matmul_params(paper_models.QWEN2_0_5B) == n
    assert gpu.mfu(10_000, paper_models.QWEN2_0_5B, 989.0) == 8 * n * 10_000 / 989e12


def test_the_memory_sweep_is_drawn_from_a_saved_result(tmp_path):
    """`python -m benchmarks.bench --plot RESULT.json` draws the memory-vs-length sweep beside the file
    (the picture in docs/benchmarks.md comes from the saved 2026-11-22 result this way)."""
    import shutil

    saved = tmp_path / "result.json"
    shutil.copy(ROOT / "benchmarks" / "results" / "2026-11-22.json", saved)
    assert set(json.loads(saved.read_text())["sweep"]["trl"]) == {"256", "512", "1024"}  # 2048 was skipped
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--plot", str(saved)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    png = saved.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
