"""The table builder on hand-made predictions: Avg, Best, deltas, seeds, p-values, layouts."""

import csv
import json

import pytest
import yaml

from yfpo.pipelines import cells, curves, paper_table, results, tables


def make_run(root, name, task, ckpt_correct, metrics=True, done=True):
    """A (finished) run directory whose checkpoint k got ``ckpt_correct[k-1]`` (a list of 0/1 per problem)."""
    run = root / name
    for k, correct in enumerate(ckpt_correct, start=1):
        d = run / "eval" / task / f"ckpt-{k}"
        d.mkdir(parents=True)
        (d / "predictions.jsonl").write_text("".join(json.dumps({"id": i, "correct": bool(c)}) + "\n" for i, c in enumerate(correct)))
        (d / "summary.json").write_text(json.dumps({"accuracy": sum(correct) / len(correct)}))
    if done:
        (run / "DONE").write_text(f"{len(ckpt_correct)}\n")
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
    header, rows = paper_table.build(yaml.safe_load(spec.read_text()), tmp_path)
    col = {h: i for i, h in enumerate(header)}
    dpo, y1, y2 = rows
    assert [dpo[col[f"Ckpt-{k}"]] for k in (1, 2, 3)] == ["0.5000", "0.6000", "0.7000"]
    assert dpo[col["Avg"]] == "0.6000" and dpo[col["Best (test-sel.)"]] == "0.7000" and dpo[col["dAvg"]] == ""
    assert y1[col["Avg"]] == "0.7000" and y1[col["Best (test-sel.)"]] == "0.8000"
    assert y1[col["dAvg"]] == "+0.1000" and y1[col["dBest (test-sel.)"]] == "+0.1000"
    # one seed each: the between-run variance is unknown, so no interval, p-value or verdict
    assert dpo[col["Avg 95% CI"]] == cells.UNKNOWN and y1[col["p (Avg)"]] == cells.UNKNOWN
    assert y1[col["vs baseline"]] == cells.UNKNOWN and y1[col["Avg per seed"]] == "0.700"
    # two seeds: per-checkpoint means (0.5, 0.6, 0.7), so Avg 0.6 and Best 0.7, identical to DPO
    assert y2[col["seeds"]] == "2" and [y2[col[f"Ckpt-{k}"]] for k in (1, 2, 3)] == ["0.5000", "0.6000", "0.7000"]
    assert y2[col["dAvg"]] == "+0.0000" and y2[col["Avg per seed"]] == "0.600 / 0.600"
    assert y2[col["Avg 95% CI"]].startswith("[")  # two seeds: estimable


def test_one_seed_table_says_the_between_run_variance_is_unknown(spec, tmp_path):
    md = tables.make_tables(spec, base_dir=tmp_path)
    assert f"`{cells.UNKNOWN}`: between-run variance unknown with one training run" in md
    assert "selected on the test set itself" in md  # what Best is


def test_outputs_and_tasks_layout(spec, tmp_path):
    md = tables.make_tables(spec, base_dir=tmp_path)
    assert "| 2K | YFPO | 0.1 | 1 | 0.6000 | 0.8000 | 0.7000 | 0.7000 | unknown (1 seed) | 0.700 | 0.8000 |" in md
    assert (tmp_path / "t.csv").is_file() and (tmp_path / "t_curves.png").is_file()
    make_run(tmp_path, "dpo_m", "math500", [correct(2), correct(3)], metrics=False)
    fdt = {"name": "f", "layout": "tasks", "tasks": ["gsm8k", "math500"], "baseline": "DPO",
           "rows": [{"data": "x", "method": "DPO", "runs": ["dpo"]}]}
    with pytest.raises(FileNotFoundError, match="python -m yfpo.evaluate run_dir=.* eval=math500"):
        paper_table.build(fdt, tmp_path)
    fdt["rows"][0]["runs"] = ["dpo"]
    (tmp_path / "dpo" / "eval" / "math500").symlink_to(tmp_path / "dpo_m" / "eval" / "math500")
    header, rows = paper_table.build(fdt, tmp_path)
    assert header[4:6] == ["gsm8k Avg", "gsm8k Best (test-sel.)"] and rows[0][4:6] == ["0.6000", "0.7000"]
    assert header[9:11] == ["math500 Avg", "math500 Best (test-sel.)"] and rows[0][9:11] == ["0.2500", "0.3000"]


def test_paper_columns_and_one_table_per_task(spec, tmp_path):
    s = yaml.safe_load(spec.read_text())
    for row in s["rows"]:
        make_run(tmp_path, row["runs"][0] + "_m", "math500", [correct(1), correct(2), correct(3)], metrics=False)
        for run in row["runs"]:
            (tmp_path / run / "eval" / "math500").symlink_to(tmp_path / (row["runs"][0] + "_m") / "eval" / "math500")
    s["task"], s["paper_task"] = ["gsm8k", "math500"], "gsm8k"
    s["rows"][0]["paper"] = {"Avg": 0.3649, "Best": 0.3662}
    header, rows = paper_table.build(s, tmp_path, "gsm8k")
    assert header[-2:] == ["paper Avg", "paper Best"] and rows[0][-2:] == ["0.3649", "0.3662"] and rows[1][-2:] == ["", ""]
    header, _ = paper_table.build(s, tmp_path, "math500")
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
    header, (sft, dpo) = paper_table.build(spec, tmp_path)
    col = {h: i for i, h in enumerate(header)}
    assert sft[col["Avg"]] == "0.5000" and sft[col["Ckpt-1"]] == "" and sft[col["dAvg"]] == ""
    assert sft[col["seeds"]] == "start" and sft[col["Avg 95% CI"]].startswith("[")  # one fixed model: problems only
    assert dpo[col["Avg"]] == "0.1750" and dpo[col["dAvg"]] == "-0.3250"
    assert dpo[col["p (Avg)"]] == cells.UNKNOWN  # the trained row has one seed
    spec["rows"][1]["runs"].append(make_run(tmp_path, "dpo2", "synthetic", [correct(9, 40)]))  # a second seed
    header, (sft, dpo) = paper_table.build(spec, tmp_path)
    assert dpo[col["Avg per seed"]] == "0.175 / 0.225" and dpo[col["vs baseline"]] == "lower"
    assert float(dpo[col["p (Avg)"]].lstrip("<")) < 0.05


def test_smooth_is_a_trailing_mean():
    assert curves.smooth([0.0, 2.0, 4.0, 6.0], 2) == [0.0, 1.0, 3.0, 5.0]


def test_dev_selection_picks_the_dev_argmax_and_reports_its_test_score(tmp_path):
    """Each seed's checkpoint is chosen on dev (ckpt-1 for seed 1, ckpt-2 for seed 2), while Best takes
    the test maximum (ckpt-3); Dev-sel. is the test score of the dev choices."""
    for seed, dev_best in ((1, 1), (2, 2)):
        for arm, test in (("dpo", [correct(4), correct(5), correct(6)]), ("yfpo", [correct(5), correct(7), correct(9)])):
            make_run(tmp_path, f"{arm}/seed={seed}", "gsm8k", test, metrics=False)
            make_run(tmp_path / f"{arm}/seed={seed}", "", "gsm8k_dev",
                     [correct(8 if k == dev_best else 3) for k in (1, 2, 3)], metrics=False)
    spec = {"name": "d", "task": "gsm8k", "baseline": "DPO", "dev": {"gsm8k": "gsm8k_dev"}, "rows": [
        {"data": "2K", "method": "DPO", "runs": ["dpo/seed=*"]},
        {"data": "2K", "method": "YFPO", "lambda": 0.1, "runs": ["yfpo/seed=*"]}]}
    header, (dpo, yfpo) = paper_table.build(spec, tmp_path)
    col = {h: i for i, h in enumerate(header)}
    rows = [results.Row.read(r, tmp_path, "gsm8k", "gsm8k_dev") for r in spec["rows"]]
    assert rows[1].dev_choice == ["ckpt-1", "ckpt-2"]
    assert yfpo[col["Best (test-sel.)"]] == "0.9000" and yfpo[col["Dev-sel."]] == "0.6000"  # mean of 0.5 and 0.7
    assert dpo[col["Dev-sel."]] == "0.4500" and yfpo[col["dDev-sel."]] == "+0.1500"
    assert yfpo[col["p (Dev-sel.)"]] != "" and yfpo[col["seeds"]] == "2"
    header, (_, yfpo) = paper_table.build({**spec, "layout": "tasks", "tasks": ["gsm8k"]}, tmp_path)  # the FDT layout
    assert yfpo[header.index("gsm8k Dev-sel.")] == "0.6000" and yfpo[header.index("gsm8k Best (test-sel.)")] == "0.9000"


def test_rows_that_would_mix_different_evaluations_are_refused(tmp_path):
    make_run(tmp_path, "a/seed=1", "gsm8k", [correct(5), correct(6)], metrics=False)
    make_run(tmp_path, "a/seed=2", "gsm8k", [correct(5)], metrics=False)  # only ckpt-1 evaluated
    spec = {"name": "m", "task": "gsm8k", "baseline": "DPO", "rows": [{"data": "2K", "method": "DPO", "runs": ["a/seed=*"]}]}
    with pytest.raises(ValueError, match=r"checkpoints \['ckpt-1'\].*evaluate the missing ones"):
        paper_table.build(spec, tmp_path)
    make_run(tmp_path, "b/seed=1", "gsm8k", [correct(5)], metrics=False)
    make_run(tmp_path, "b/seed=2", "gsm8k", [correct(5, 20)], metrics=False)  # eval.limit differs
    spec["rows"][0]["runs"] = ["b/seed=*"]
    with pytest.raises(ValueError, match="on 20 problems.*eval.limit or eval.path differ"):
        paper_table.build(spec, tmp_path)
    spec["rows"][0]["runs"] = ["c/seed=*"]
    with pytest.raises(FileNotFoundError, match="no run directory matches"):
        paper_table.build(spec, tmp_path)
    spec["rows"] = [{"data": "2K", "method": "DPO", "runs": ["a/seed=1"]}, {"data": "2K", "method": "YFPO", "runs": ["b/seed=1"]}]
    with pytest.raises(ValueError, match=r"YFPO has evaluated checkpoints \['ckpt-1'\], its baseline 2K DPO \['ckpt-1', 'ckpt-2'\]"):
        paper_table.build(spec, tmp_path)
    with pytest.raises(ValueError, match=r"baseline='SFT' is not the method of any row: choose one of \['DPO', 'YFPO'\]"):
        paper_table.build({**spec, "baseline": "SFT"}, tmp_path)


def test_seeds_for_answers_how_many_seeds_an_effect_needs(tmp_path, capsys, monkeypatch):
    rng = __import__("numpy").random.default_rng(0)
    for arm, p in (("dpo", 0.6), ("yfpo", 0.65)):
        for seed in (1, 2, 3):
            acc = p + rng.normal(0, 0.03)  # runs that differ by ~3 points
            make_run(tmp_path, f"{arm}/seed={seed}", "gsm8k", [list((rng.random(400) < acc).astype(int))], metrics=False)
    spec = {"name": "pw", "task": "gsm8k", "baseline": "DPO", "rows": [
        {"data": "2K", "method": "DPO", "runs": ["dpo/seed=*"]}, {"data": "2K", "method": "YFPO", "runs": ["yfpo/seed=*"]}]}
    (tmp_path / "pw.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)  # the CLI reads runs relative to the working directory, as users run it
    tables.main(["pw.yaml", "--seeds-for", "0.05", "--problems", "1319"])
    small = capsys.readouterr().out
    tables.main(["pw.yaml", "--seeds-for", "0.0076", "--problems", "1319"])
    tiny = capsys.readouterr().out
    need = lambda md: md.split("| gsm8k | 2K | YFPO |")[1].split("|")[4].strip()  # noqa: E731
    assert "seeds per arm to detect dAvg = +0.05" in small and int(need(small)) < int(need(tiny))
    assert "1319" in small


def test_runs_that_have_not_finished_training_are_named_at_the_top_and_warned_about(tmp_path, capsys):
    rows = [{"data": "2K", "method": "DPO", "runs": [make_run(tmp_path, "a", "gsm8k", [correct(5)]), make_run(tmp_path, "b", "gsm8k", [correct(6)], done=False)]},
            {"data": "2K", "method": "SFT", "start": True, "runs": ["c"]}]
    make_run(tmp_path, "c", "gsm8k", [], done=False)
    (tmp_path / "c" / "eval" / "gsm8k" / "ckpt-0").mkdir(parents=True)
    for f, text in (("predictions.jsonl", "".join(json.dumps({"id": i, "correct": i < 4}) + "\n" for i in range(10))), ("summary.json", '{"accuracy": 0.4}')):
        (tmp_path / "c" / "eval" / "gsm8k" / "ckpt-0" / f).write_text(text)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"name": "t", "task": "gsm8k", "layout": "checkpoints", "baseline": "SFT", "rows": rows}))
    md = tables.make_tables(tmp_path / "t.yaml", tmp_path)
    first = md.splitlines()[0]
    assert first.startswith("**Unfinished runs**") and first.endswith(f": {tmp_path / 'b'}"), first  # not a, nor the start row's c
    assert "[yfpo] warning: t: Unfinished runs (no DONE: " in capsys.readouterr().err
    make_run(tmp_path, "b2", "gsm8k", [correct(6)])
    rows[0]["runs"][1] = "b2"
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"name": "t", "task": "gsm8k", "layout": "checkpoints", "baseline": "SFT", "rows": rows}))
    assert "Unfinished" not in tables.make_tables(tmp_path / "t.yaml", tmp_path)


def test_checkpoints_evaluated_one_by_one_are_found_inside_them(tmp_path):
    """`python -m yfpo.evaluate run_dir=<run>/checkpoints/ckpt-k` writes into the checkpoint; the
    table reads those results too (the run's own evaluation, where there is one, first)."""
    make_run(tmp_path, "whole", "gsm8k", [correct(5), correct(6)])
    run = tmp_path / "single"
    for k, right in ((1, 7), (2, 8)):
        d = run / "checkpoints" / f"ckpt-{k}" / "eval" / "gsm8k" / f"ckpt-{k}"
        d.mkdir(parents=True)
        (d / "predictions.jsonl").write_text("".join(json.dumps({"id": i, "correct": c == 1}) + "\n" for i, c in enumerate(correct(right))))
        (d / "summary.json").write_text(json.dumps({"accuracy": right / 10}))
    (run / "DONE").write_text("2\n")
    assert results.read_run(run, "gsm8k").by_ckpt["ckpt-2"] == {i: float(i < 8) for i in range(10)}
    rows = [{"data": "2K", "method": m, "runs": [m]} for m in ("whole", "single")]
    header, table = paper_table.build({"name": "t", "task": "gsm8k", "layout": "checkpoints", "baseline": "whole", "rows": rows}, tmp_path)
    assert table[1][header.index("Avg")] == "0.7500"
