"""yfpo's messages (yfpo/core/log.py): the `[yfpo]` lines users read, once per job under DDP."""

import logging

from lightning.pytorch.utilities import rank_zero_only

from yfpo.core.log import STDERR, log


def test_lines_levels_streams_and_rank_zero(capsys, monkeypatch):
    log.info("resuming run-a from step 4")
    log.warning("fewer rows than one step")
    log.warning("unfinished runs: a", extra=STDERR)
    log.debug("not shown at the default level")
    out, err = capsys.readouterr()
    assert out == "[yfpo] resuming run-a from step 4\n[yfpo] warning: fewer rows than one step\n"
    assert err == "[yfpo] warning: unfinished runs: a\n"
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)  # another DDP process: silent
    log.warning("once, from rank 0")
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(rank_zero_only, "rank", 0, raising=False)
    level = log.level
    log.setLevel(logging.WARNING)  # as YFPO_LOG_LEVEL=WARNING sets it
    try:
        log.info("quiet")
        log.warning("still said")
    finally:
        log.setLevel(level)
    assert capsys.readouterr().out == "[yfpo] warning: still said\n"
