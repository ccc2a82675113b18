"""The two test tiers. ``make test`` runs the fast tier (``-m "not slow"``); ``make test-all`` runs
every test with ``YFPO_TEST_TIER=complete``. That tier installs everything its tests need, so a skip
there means a check silently did not run: this plugin fails it instead. Only a skip whose reason
names a GPU (which a CPU machine cannot provide, or whose presence changes what can run) passes."""

from __future__ import annotations

import os

import pytest


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
