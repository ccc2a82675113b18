"""The whole embedded pipeline, as `make demo` runs it (slow: 7.5 to 8 min alone on 2 threads, about twice that on
one thread beside another worker)."""

import subprocess
import sys

import pytest
import yaml

from yfpo.pipelines.demo import find_runs
from yfpo.core.errors import MissingError


def check_demo_outputs(out):
    """The demo's table (SFT once, every arm with 3 seeds and a p-value against SFT), curves and mechanisms."""
    table = (out / "demo.md").read_text().split("\n\n")[1]  # the paper-style table, before the scoring table
    rows = {cells[1]: cells for cells in ([c.strip() for c in l.strip("|").split("|")] for l in table.splitlines()[2:])}
    assert set(rows) == {"SFT", "DPO", "DPO+NLL", "YFPO (AttnLRP)", "YFPO (random)", "FDT"}
    assert rows["SFT"][3] == "start" and all(rows[m][3] == "3" for m in rows if m != "SFT"), "SFT once, every arm 3 seeds"
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    p_values = [float(rows[m][header.index("p (Avg)")].lstrip("<")) for m in rows if m != "SFT"]
    assert all(0.0 < p <= 1.0 for p in p_values), "a p-value against SFT for every arm"
    verdicts = {m: rows[m][header.index("vs baseline")] for m in rows if m != "SFT"}
    assert "higher" in verdicts.values(), f"the demo's claim: an arm resolved above its start model ({verdicts})"
    assert (out / "demo_curves.png").stat().st_size > 0
    mech = (out / "mechanisms.md").read_text()
    check_headroom(mech)
    check_by_style(mech)
    assert all(f"| {arm} |" in mech for arm in ("DPO", "DPO+NLL", "YFPO (AttnLRP)", "YFPO (random)", "FDT"))
    versus = mech.split("Arms against each other")[1]
    assert "| YFPO (AttnLRP) |" in versus, "the arms tested against each other"
    assert all(l.rstrip(" |").rsplit("|", 1)[1].strip() in ("higher", "lower", "unresolved")
               for l in versus.splitlines() if l.startswith("| ") and "verdict" not in l)


def check_headroom(mech: str):
    """The start model's own report, in the band its runs reach (greedy 0.5 and worked solutions on about half
    the test on four runs, docs/demo.md): it states the answer alone on one topic half and is mostly wrong
    that way, while its worked solutions are mostly right; pass@k well above greedy; most chosen responses
    are worked solutions, and answers alone are rejected far more often than chosen."""
    lines = mech.split("What the start model leaves to learn:")[1].split("How each arm answers")[0].strip().splitlines()
    cells = {l.split("|")[1].strip().split(",")[0]: [c.strip() for c in l.strip(" |").split("|")[1:]] for l in lines[2:]}
    number = lambda cell, after: float(cell.split(after)[1].split()[0].rstrip(","))  # noqa: E731
    greedy, sampled, pairs = cells["SFT greedy"], cells[next(k for k in cells if k.startswith("SFT pass@"))], cells["pairs"]
    accuracy = number(greedy[0], "accuracy ")
    assert 0.4 <= accuracy <= 0.8, f"SFT greedy accuracy {accuracy}: outside the band"
    assert 0.3 <= float(greedy[1].split()[0]) <= 0.7, f"worked solutions on {greedy[1]}"
    assert number(greedy[1], "accuracy ") >= number(greedy[2], "accuracy ") + 0.4, f"worked {greedy[1]} vs alone {greedy[2]}"
    assert float(sampled[0].split()[0]) >= accuracy + 0.2, f"pass@k {sampled[0]} vs greedy {accuracy}"
    assert number(pairs[1], "chosen ") > 0.6 * int(pairs[0]), f"chosen worked solutions: {pairs}"
    assert number(pairs[2], "rejected ") > 2 * number(pairs[2], "chosen "), f"answers alone, rejected vs chosen: {pairs}"


def check_by_style(mech: str):
    """Every arm's share of worked solutions and the accuracy each way, each seed's too, beside the start
    model's, whose worked share is the headroom table's."""
    table = mech.split("How each arm answers")[1].split("What training did")[0].splitlines()
    rows = {l.split("|")[1].strip(): [c.strip() for c in l.strip(" |").split("|")[1:]]
            for l in table if l.startswith("| ") and not l.startswith("| arm ")}
    assert set(rows) == {"SFT (the start model)", "DPO", "DPO+NLL", "YFPO (AttnLRP)", "YFPO (random)", "FDT"}, rows
    head = mech.split("| SFT greedy, test |")[1].splitlines()[0].split("|")
    assert float(rows["SFT (the start model)"][0]) == float(head[1].split()[0])
    assert all(cells[0].count(" / ") == 2 for arm, cells in rows.items() if arm != "SFT (the start model)")


def fake_run(sweep, name, overrides, done=True):
    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if done:
        (run / "DONE").touch()


def test_demo_finds_its_runs_whatever_overrides_the_user_added(tmp_path):
    """`make demo ARGS="optim.lr=3e-5"`: Hydra names the run directories after every override and
    rewrites values (3e-05), so the runs are matched on what each job recorded, not on a guessed name."""
    base = ["+experiment=demo", "optim.lr=3e-5"]
    for v in ("dpo", "fdt"):
        for s in (1, 2):
            fake_run(tmp_path, f"+variant={v},optim.lr=3e-05,seed={s}", ["+experiment=demo", "optim.lr=3e-05", f"+variant={v}", f"seed={s}"])
    fake_run(tmp_path, "+variant=dpo,seed=1", ["+experiment=demo", "+variant=dpo", "seed=1"])  # an earlier sweep's run
    runs = find_runs(tmp_path, base, ["dpo", "fdt"], [1, 2])
    assert runs["dpo"] == [str(tmp_path / f"+variant=dpo,optim.lr=3e-05,seed={s}") for s in (1, 2)]
    assert find_runs(tmp_path, ["+experiment=demo"], ["dpo"], [1])["dpo"] == [str(tmp_path / "+variant=dpo,seed=1")]
    fake_run(tmp_path, "+variant=dpo,seed=2", ["+experiment=demo", "+variant=dpo", "seed=2"], done=False)  # crashed
    with pytest.raises(MissingError, match=r"\+variant=dpo seed=2"):
        find_runs(tmp_path, ["+experiment=demo"], ["dpo"], [1, 2])


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("YFPO_CACHE", str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-m", "yfpo.demo"], cwd=tmp_path, capture_output=True, text=True, timeout=3000)
    assert res.returncode == 0, res.stderr[-3000:]
    check_demo_outputs(tmp_path / "multirun" / "demo")
