"""User errors (a bad file, row, config value, or a missing model or dataset) and how the CLIs report them.

A :class:`UserError` is something the user fixes; its message names the file, row or config key
and the fix. The entry points run through :func:`run_cli`, which prints that message alone and
exits with status 2. Anything else is a bug and keeps its full traceback, and so does a user
error when ``HYDRA_FULL_ERROR=1`` is set. A run stopped by SIGTERM (:class:`Stopped`) prints one
line saying how to resume and exits with status 143, as a process killed by SIGTERM would.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")
EXIT_USER_ERROR = 2
EXIT_STOPPED = 143  # 128 + SIGTERM: what a scheduler's requeue logic expects of a pre-empted job


class UserError(Exception):
    """An error in what the user gave: the message says what is wrong, where, and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value that cannot be used; the message names the key and the accepted values."""


class MissingError(UserError, FileNotFoundError):
    """A file or directory the user named, or a stage's output, that is not there; the message says
    which command makes it."""


class Stopped(Exception):
    """The process was asked to stop (SIGTERM: a pre-emption) and did; the message says where the
    run can resume from."""


def run_cli(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)``; a :class:`UserError` ends the process with its message and status 2,
    :class:`Stopped` with its message and status 143."""
    try:
        return fn(*args, **kwargs)
    except Stopped as e:
        print(f"yfpo: stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_STOPPED)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"yfpo: error: {e}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
