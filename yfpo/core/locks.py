"""File locks: a shared artefact prepared once by parallel jobs (:func:`file_lock`), and a
directory written by one process at a time (:func:`exclusive`)."""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from yfpo.core.errors import UserError


@contextmanager
def file_lock(path: Path):
    """Hold an exclusive ``flock`` on ``path`` (created, with its parents, when missing), waiting for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def exclusive(path: Path, what: str):
    """Hold ``path`` for this process alone, or refuse at once, naming the holder (pid and host).

    The lock is an ``flock``, which the system drops when its process dies: a lock left by a killed
    run is simply taken over, never mistaken for a live one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{what} is in use by {holder} (lock file {path}): wait for that process to finish, "
                        "or give this one another directory") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
