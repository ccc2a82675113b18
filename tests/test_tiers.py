"""Every test belongs to a tier, and the complete tier runs all of them: no file that pytest does not
collect, no tier command that filters tests out, no skip that passes unnoticed in the complete tier."""

import ast
import os
import re
import subprocess
import sys

from tests.conftest import ROOT


def _recipe(target: str) -> str:
    """The commands of a Makefile target."""
    text = (ROOT / "Makefile").read_text()
    block = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.M)
    assert block, f"Makefile has no target {target!r}"
    return block.group(1)


def test_every_file_with_tests_is_collected():
    """A test function in a file pytest does not collect (wrong name, wrong folder) is in no tier."""
    lost = []
    for path in ROOT.rglob("*.py"):
        if any(part in {".venv", ".git", "multirun", ".cache"} for part in path.relative_to(ROOT).parts):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        has_tests = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_")
                        for n in ast.walk(tree))
        collected = path.parent == ROOT / "tests" and path.name.startswith("test_")
        if has_tests and not collected and path.name != "tiers.py":
            lost.append(str(path.relative_to(ROOT)))
    assert not lost, f"test functions outside tests/test_*.py, in no tier: {lost}"


def test_the_tiers_split_on_one_marker_and_the_complete_tier_runs_everything():
    fast, complete = _recipe("test"), _recipe("test-all")
    assert '-m "not slow"' in fast
    options = complete.split("pytest", 1)[1]
    assert not any(f in options.split() for f in ("-m", "-k", "--deselect", "--ignore")), complete
    assert "YFPO_TEST_TIER=complete" in complete
    assert "make test-all" in (ROOT / ".ci" / "run").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib needs Python 3.11; yfpo supports 3.10)
    markers = set(re.findall(r'"(\w+): ', re.search(r"^markers = \[(.*)\]$", pyproject, re.M).group(1)))
    assert markers == {"slow"}, f"one marker decides the tier; found {markers}"
    assert re.search(r'^addopts = ".*--strict-markers', pyproject, re.M)  # a misspelt marker is an error, not a test in neither tier


def test_a_skip_fails_in_the_complete_tier_unless_it_names_a_gpu(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_needs_weights():\n    pytest.skip('weights not installed')\n"
        "def test_needs_gpu():\n    pytest.skip('needs a CUDA GPU')\n")
    def run(tier):
        env = {**os.environ, "YFPO_TEST_TIER": tier, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.tiers", "-p", "no:cacheprovider", str(tmp_path)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120).stdout
    assert "2 skipped" in run("fast")
    complete = run("complete")
    assert "1 failed, 1 skipped" in complete and "where every check must run: " in complete, complete


def test_the_complete_tier_starts_the_longest_files_first(tmp_path):
    """With the complete tier's scheduling options, the two longest files are the first work each of
    the two workers gets, although they hold the fewest tests (xdist's default queues those last),
    and the third longest comes before the other files."""
    from tests.tiers import LONGEST_FIRST

    assert all((ROOT / "tests" / name).is_file() for name in LONGEST_FIRST), LONGEST_FIRST
    log = tmp_path / "started.log"
    body = f"import os\ndef test_{{}}():\n    open({str(log)!r}, 'a').write(os.environ['PYTEST_XDIST_WORKER'] + ' ' + __name__ + '\\n')\n"
    for name in ("test_a", "test_b", "test_c", "test_d", *(n[:-3] for n in LONGEST_FIRST)):
        many = 1 if name + ".py" in LONGEST_FIRST else 4
        (tmp_path / f"{name}.py").write_text("".join(body.format(i) for i in range(many)))
    options = _recipe("test-all").split(" -q ", 1)[1].split()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.tiers", "-p", "no:cacheprovider", *options, str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:]
    first, order = {}, []
    for line in log.read_text().splitlines():
        worker, module = line.split()
        first.setdefault(worker, module)
        order += [module] if module not in order else []
    assert sorted(first.values()) == sorted(n[:-3] for n in LONGEST_FIRST[:2]), f"each worker's first test came from {first}"
    assert order.index(LONGEST_FIRST[2][:-3]) < min(order.index(m) for m in ("test_c", "test_d")), order
