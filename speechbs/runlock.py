"""One run per directory: an advisory lock on ``<run dir>/run.lock``, held while the run lives.

Two trainings in one run directory would write the same checkpoints and append to one
metrics.jsonl (two rows per step, temporary files renamed under each other). The main
process takes ``fcntl.flock`` on the lock file before it writes anything; a second run
finds it taken and stops with one line naming the holder. The kernel drops the lock when
the holder exits or is killed (even with SIGKILL), so a lock file left behind blocks
nothing; it is never deleted, because deleting a lock file lets two runs lock two
different files of one name. The file holds the holder's pid, host and start time,
for the message only. Under torchrun rank 0 holds the lock and tells the other ranks
whether it got it.

flock works across machines on NFSv4, GPFS and Lustre mounted with ``-o flock``; where the
file system refuses locks, the run warns and goes on unlocked.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from speechbs.errors import SpeechbsError

LOCK_NAME = "run.lock"

_held: dict[Path, int] = {}
"""Run directories this process holds (resolved path -> file descriptor). A process that trains
twice in one directory (a test, an in-process sweep) takes its own lock again."""


class RunDirLockedError(SpeechbsError):
    """Another live process trains in this run directory."""


def lock_run_dir(run_dir: Path, *, is_main: bool = True,
                 broadcast: Callable[[Any], Any] | None = None) -> None:
    """Hold ``run_dir``'s lock for the rest of this process, or raise :class:`RunDirLockedError`.

    Only ``is_main`` locks. With ``broadcast`` (rank 0's object on every rank, e.g.
    ``DistContext.broadcast_object``) every rank calls this at the same point and learns rank
    0's outcome, so when rank 0 fails the other ranks raise the same error instead of going on.
    """
    error = None
    if is_main:
        try:
            acquire(run_dir)
        except RunDirLockedError as exc:
            error = str(exc)
    if broadcast is not None:
        error = broadcast(error)
    if error is not None:
        raise RunDirLockedError(error)


def acquire(run_dir: Path) -> None:
    """Take ``run_dir/run.lock`` without waiting (creating the directory); raise if a live process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _held:
        return
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirLockedError(_held_message(run_dir, path)) from None
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        print(f"warning: the file system of {run_dir} refuses locks ({exc.strerror}); nothing stops a "
              f"second run from writing into this directory at the same time", file=sys.stderr, flush=True)
        return
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    _held[key] = fd


def _held_message(run_dir: Path, path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        who = f"pid {holder['pid']} on {holder['host']} (since {holder['since']})"
        stop = f"`kill {holder['pid']}` on {holder['host']} saves a checkpoint and stops it"
    except (OSError, ValueError, KeyError, TypeError):  # it is being written right now
        who, stop = "another process", "stopping it with SIGTERM saves a checkpoint"
    return (f"run directory {run_dir} is in use by {who}: two runs in one directory would overwrite each "
            f"other's checkpoints and metrics. Wait for it to finish or stop it ({stop}; then run this "
            f"command again to resume), or choose another --set run.name=...")


def _close_in_child() -> None:
    """A forked child (a DataLoader worker) drops its copy of the lock descriptors: the lock is the
    parent's, and a worker that outlived a killed parent for a few seconds would keep it held."""
    for fd in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)
