"""User errors (a bad file, row, config value, or a missing model or dataset) and how the CLIs report them.

A :class:`UserError` is something the user fixes; its message names the file, row or config key
and the fix. The entry points run through :func:`run_cli`, which prints that message alone and
exits with status 2. Anything else is a bug and keeps its full traceback, and so does a user
error when ``HYDRA_FULL_ERROR=1`` is set.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")
EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error in what the user gave: the message says what is wrong, where, and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value that cannot be used; the message names the key and the accepted values."""


class MissingError(UserError, FileNotFoundError):
    """A file or directory the user named, or a stage's output, that is not there; the message says
    which command makes it."""


def run_cli(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)``; a :class:`UserError` ends the process with its message and status 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"yfpo: error: {e}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
