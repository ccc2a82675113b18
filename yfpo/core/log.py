"""yfpo's messages: one ``yfpo`` logger. Lines read ``[yfpo] ...`` (``[yfpo] warning: ...`` from
WARNING up) on stdout, or on stderr for a record logged with ``extra=STDERR``; ``YFPO_LOG_LEVEL``
(``WARNING``, ``DEBUG``, ...) sets the level, INFO by default. Under DDP only rank 0 speaks, so a
message is printed once, not once per process. User errors are not logged here: they end the
process as one ``yfpo: error:`` line (:func:`yfpo.core.errors.run_cli`)."""

from __future__ import annotations

import logging
import os
import sys

from lightning.pytorch.utilities import rank_zero_only

STDERR = {"stream": "stderr"}


class _Lines(logging.Handler):
    """Writes to the current ``sys.stdout``/``sys.stderr`` at each record (a handler bound to the
    streams at import would miss a redirection made later, such as pytest's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if getattr(record, "stream", None) == "stderr" else sys.stdout
            print(self.format(record), file=stream, flush=True)
        except Exception:  # noqa: BLE001 (logging's own contract: a failing handler reports, never raises)
            self.handleError(record)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        lead = "[yfpo] warning: " if record.levelno >= logging.WARNING else "[yfpo] "
        return lead + record.getMessage()


def _rank_zero(record: logging.LogRecord) -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def get_logger() -> logging.Logger:
    """The ``yfpo`` logger, set up once."""
    log = logging.getLogger("yfpo")
    if not log.handlers:
        handler = _Lines()
        handler.setFormatter(_Format())
        handler.addFilter(_rank_zero)
        log.addHandler(handler)
        log.setLevel(os.environ.get("YFPO_LOG_LEVEL", "INFO").upper())
        log.propagate = False  # its own lines, not also the root logger's
    return log


log = get_logger()
