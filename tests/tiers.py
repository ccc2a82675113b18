"""The two test tiers. ``make test`` runs the fast tier (``-m "not slow"``); ``make test-all`` runs
every test with ``YFPO_TEST_TIER=complete``. That tier installs everything its tests need, so a skip
there means a check silently did not run: this plugin fails it instead. Only a skip whose reason
names a GPU (which a CPU machine cannot provide, or whose presence changes what can run) passes.

It also starts the longest files first. ``make test-all`` hands whole files to its two workers in
collection order (``--dist loadfile --no-loadscope-reorder``; by default xdist would queue the files
with the fewest tests, the two longest, last), so the two ~20-minute files run side by side from
the start and the shorter files fill in behind them, the longest of those first.

Each xdist worker, and every process its tests start, uses its share of the cores: two workers
whose torch each spreads over both cores oversubscribe them (the fast tier took 256 s that way
and 218 s with one thread a worker, 2026-12-03)."""

from __future__ import annotations

import os

import pytest

# ~20 min each on one core, side by side; then the vLLM file (~6 min, one engine start per test),
# which as the last file in name order kept one worker busy alone at the end
LONGEST_FIRST = ("test_paper_size.py", "test_demo.py", "test_vllm.py")


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the processes tests start inherit it
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: other files keep their order


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("YFPO_TEST_TIER") == "complete" and report.skipped and "GPU" not in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"skipped in the complete tier, where every check must run: {report.longrepr}"


def pytest_terminal_summary(terminalreporter):
    """Measurements a test recorded with ``record_property("stage", ...)`` (they reach this process
    from xdist workers too), so that the complete tier's log holds them."""
    for status in ("passed", "failed"):
        for report in terminalreporter.getreports(status):
            for name, value in getattr(report, "user_properties", ()):
                if name == "stage":
                    terminalreporter.write_line(f"[{report.nodeid.rsplit('::', 1)[-1]}] {value}")
