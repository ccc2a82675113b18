"""The table builder on hand-made predictions: Avg, Best, deltas, seeds, p-values, layouts."""

import csv
import json

import pytest
import yaml

from yfpo import tables


def make_run(root, name, task, ckpt_correct, metrics=True):
    """A run directory whose checkpoint k got ``ckpt_correct[k-1]`` (a list of 0/1 per problem)."""
    run = root / name
    for k, correct in enumerate(ckpt_correct, start=1):
        d = run / "eval" / task / f"ckpt-{k}"
        d.mkdir(parents=True)
        (d / "predictions.jsonl").write_text("".join(json.dumps({"id": i, "correct": bool(c)}) + "\n" for i, c in enumerate(correct)))
        (d / "summary.json").write_text(json.dumps({"accuracy": sum(correct) / len(correct)}))
    if metrics:
        (run / "logs").mkdir(parents=True)
        with open(run / "logs" / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "rewards/margins", "neuron/margin"])
            w.writerows([[s, 0.1 * s, 0.01 * s] for s in range(1, 4)])
    return name


def correct(n_right, n=10):
    return [1] * n_right + [0] * (n - n_right)


@pytest.fixture
def spec(tmp_path):
    rows = [
        {"data": "2K", "method": "DPO", "lambda": None, "runs": [make_run(tmp_path, "dpo", "gsm8k", [correct(5), correct(6), correct(7)])]},
        {"data": "2K", "method": "YFPO", "lambda": 0.1, "runs": [make_run(tmp_path, "y1", "gsm8k", [correct(6), correct(8), correct(7)])]},
        {"data": "2K", "method": "YFPO", "lambda": 0.2, "runs": [  # two seeds
            make_run(tmp_path, "y2a", "gsm8k", [correct(4), correct(6), correct(8)]),
            make_run(tmp_path, "y2b", "gsm8k", [correct(6), correct(6), correct(6)])]},
    ]
    s = {"name": "t", "title": "T", "task": "gsm8k", "layout": "checkpoints", "baseline": "DPO", "rows": rows}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(s))
    return tmp_path / "t.yaml"


def test_checkpoint_layout_by_hand(spec, tmp_path):
    header, rows = tables.build(yaml.safe_load(spec.read_text()), tmp_path)
    col = {h: i for i, h in enumerate(header)}
    dpo, y1, y2 = rows
    assert [dpo[col[f"Ckpt-{k}"]] for k in (1, 2, 3)] == ["0.5000", "0.6000", "0.7000"]
    assert dpo[col["Avg"]] == "0.6000" and dpo[col["Best"]] == "0.7000" and dpo[col["dAvg"]] == ""
    assert y1[col["Avg"]] == "0.7000" and y1[col["Best"]] == "0.8000"
    assert y1[col["dAvg"]] == "+0.1000" and y1[col["dBest"]] == "+0.1000"
    # two seeds: per-checkpoint means (0.5, 0.6, 0.7), so Avg 0.6 and Best 0.7, identical to DPO
    assert y2[col["seeds"]] == "2" and [y2[col[f"Ckpt-{k}"]] for k in (1, 2, 3)] == ["0.5000", "0.6000", "0.7000"]
    assert y2[col["dAvg"]] == "+0.0000"


def test_paired_bootstrap_p_values():
    base = {i: 0.0 for i in range(20)}
    assert tables.paired_bootstrap_p(base, base) == 1.0
    assert tables.paired_bootstrap_p({i: 1.0 for i in range(20)}, base) == 0.0  # every resample favours the row
    mixed = {i: float(i % 2) for i in range(20)}
    assert 0.0 < tables.paired_bootstrap_p(mixed, {i: 1 - float(i % 2) for i in range(20)}) <= 1.0
    with pytest.raises(ValueError, match="share no problems"):
        tables.paired_bootstrap_p({0: 1.0}, {1: 1.0})


def test_outputs_and_tasks_layout(spec, tmp_path):
    md = tables.make_tables(spec, base_dir=tmp_path)
    assert "| 2K | YFPO | 0.1 | 1 | 0.6000 | 0.8000 | 0.7000 | 0.7000 |" in md
    assert (tmp_path / "t.csv").is_file() and (tmp_path / "t_curves.png").is_file()
    make_run(tmp_path, "dpo_m", "math500", [correct(2), correct(3)], metrics=False)
    fdt = {"name": "f", "layout": "tasks", "tasks": ["gsm8k", "math500"], "baseline": "DPO",
           "rows": [{"data": "x", "method": "DPO", "runs": ["dpo"]}]}
    with pytest.raises(FileNotFoundError, match="python -m yfpo.evaluate run_dir=.*eval=math500"):
        tables.build(fdt, tmp_path)
    fdt["rows"][0]["runs"] = ["dpo"]
    (tmp_path / "dpo" / "eval" / "math500").symlink_to(tmp_path / "dpo_m" / "eval" / "math500")
    header, rows = tables.build(fdt, tmp_path)
    assert header[-2:] == ["gsm8k (best)", "math500 (best)"] and rows[0][-2:] == ["0.7000", "0.3000"]


def test_paper_columns_and_one_table_per_task(spec, tmp_path):
    s = yaml.safe_load(spec.read_text())
    for row in s["rows"]:
        make_run(tmp_path, row["runs"][0] + "_m", "math500", [correct(1), correct(2), correct(3)], metrics=False)
        for run in row["runs"]:
            (tmp_path / run / "eval" / "math500").symlink_to(tmp_path / (row["runs"][0] + "_m") / "eval" / "math500")
    s["task"], s["paper_task"] = ["gsm8k", "math500"], "gsm8k"
    s["rows"][0]["paper"] = {"Avg": 0.3649, "Best": 0.3662}
    header, rows = tables.build(s, tmp_path, "gsm8k")
    assert header[-2:] == ["paper Avg", "paper Best"] and rows[0][-2:] == ["0.3649", "0.3662"] and rows[1][-2:] == ["", ""]
    header, _ = tables.build(s, tmp_path, "math500")
    assert "paper Avg" not in header  # the published numbers are GSM8K's
    (tmp_path / "t2.yaml").write_text(yaml.safe_dump({**s, "name": "t2"}))
    md = tables.make_tables(tmp_path / "t2.yaml", base_dir=tmp_path)
    assert "[gsm8k]" in md and "[math500]" in md
    assert (tmp_path / "t2_gsm8k.csv").is_file() and (tmp_path / "t2_math500.csv").is_file()


def test_scoring_table_reports_conventions_rates_and_warnings(tmp_path, capsys):
    def run_with_scoring(name, flags):
        """Checkpoints whose problems i get (correct, strict, flexible, truncated, extracted) = flags(k, i)."""
        for k in (1, 2):
            d = tmp_path / name / "eval" / "gsm8k" / f"ckpt-{k}"
            d.mkdir(parents=True)
            rows = [dict(zip(("correct", "correct_strict", "correct_flexible", "truncated", "extracted"), flags(k, i)), id=i)
                    for i in range(10)]
            (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (d / "summary.json").write_text("{}")
        return name

    healthy = run_with_scoring("dpo", lambda k, i: (i < 6, i < 5, i < 7, False, True))
    # ckpt-2 has 2 of 10 truncated (20 %) and 1 without a marked answer (10 %)
    sick = run_with_scoring("yfpo", lambda k, i: (i < 4, i < 4, i < 4, k == 2 and i < 2, not (k == 2 and i == 9)))
    spec = {"name": "s", "task": "gsm8k", "baseline": "DPO", "rows": [
        {"data": "2K", "method": "DPO", "runs": [healthy]}, {"data": "2K", "method": "YFPO", "lambda": 0.1, "runs": [sick]}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    md = tables.make_tables(tmp_path / "s.yaml", base_dir=tmp_path)
    assert "| 2K | DPO |  | gsm8k | 0.6000 | 0.5000 | 0.7000 | 0.0000 | 1.0000 |  |" in md
    assert "| 2K | YFPO | 0.1 | gsm8k | 0.4000 | 0.4000 | 0.4000 | 0.1000 | 0.9500 | truncated > 5%, no answer > 5% |" in md
    assert "use the headline score" in md and (tmp_path / "s_scoring.csv").is_file()
    assert "YFPO λ=0.1 [gsm8k]: truncated above 5%" in capsys.readouterr().err
    spec["warn_rate"] = 0.25  # the spec's own threshold
    header, table, warnings = tables.scoring_table(spec, tmp_path, ["gsm8k"])
    assert warnings == [] and table[1][-1] == ""


def test_scoring_table_is_blank_for_older_evaluations(spec, tmp_path):
    header, table, warnings = tables.scoring_table(yaml.safe_load(spec.read_text()), tmp_path, ["gsm8k"])
    assert header[4:9] == ["Avg", "Avg strict", "Avg flexible", "truncated", "extracted"]
    assert table[0][4] == "0.6000" and table[0][5:9] == ["", "", "", ""] and warnings == []


def test_a_start_row_reads_ckpt_0_and_can_be_the_baseline(tmp_path):
    """The demo's SFT row: the runs' starting model (ckpt-0), every other row compared with it."""
    run = make_run(tmp_path, "dpo", "synthetic", [correct(7, 40)])
    start = tmp_path / run / "eval" / "synthetic" / "ckpt-0"
    start.mkdir(parents=True)
    (start / "predictions.jsonl").write_text("".join(json.dumps({"id": i, "correct": i < 20}) + "\n" for i in range(40)))
    (start / "summary.json").write_text(json.dumps({"accuracy": 0.5}))
    spec = {"name": "d", "task": "synthetic", "baseline": "SFT", "rows": [
        {"data": "s", "method": "SFT", "start": True, "runs": [run]},
        {"data": "s", "method": "DPO", "runs": [run]}]}
    header, (sft, dpo) = tables.build(spec, tmp_path)
    col = {h: i for i, h in enumerate(header)}
    assert sft[col["Avg"]] == "0.5000" and sft[col["Ckpt-1"]] == "" and sft[col["dAvg"]] == ""
    assert dpo[col["Avg"]] == "0.1750" and dpo[col["dAvg"]] == "-0.3250"
    assert dpo[col["p (vs baseline)"]] == "<0.0001"  # 13 problems lost, none gained: no resample reaches 0


def test_smooth_is_a_trailing_mean():
    assert tables.smooth([0.0, 2.0, 4.0, 6.0], 2) == [0.0, 1.0, 3.0, 5.0]
