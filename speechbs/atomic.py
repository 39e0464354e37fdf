"""Atomic text files: write beside the target, then rename over it; and what a failed write means.

A reader (or a crash) sees the old file or the new one, never half of one.
Used for manifests, label files, configs, checkpoint indexes and corpus
metadata; checkpoints themselves add an fsync (:mod:`speechbs.checkpoint`).

A write that fails (no space left on the device, no permission) removes its
partial temporary file, leaves the previous file as it was and raises a
:class:`~speechbs.errors.StorageError` naming the path (:func:`write_error`).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from speechbs.errors import ConfigError, StorageError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_TORCH_WRITE_FAILED = ("inline_container", "file write failed", "PytorchStreamWriter")
"""How torch.save words a failed write: it wraps the OSError in a RuntimeError (or loses it)."""


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        error = write_error(exc, path, tmp)
        remove_partial(tmp)
        raise error from None
    return path


def remove_partial(tmp: Path) -> None:
    """Delete the temporary file of a failed write, if there is one (never raises)."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def write_error(exc: BaseException, path: Path, tmp: Path | None = None, kept: str = "") -> StorageError | None:
    """The one-line error for a failed write of ``path``, or None when ``exc`` is not about storage (a bug).

    Call it before removing the partial file ``tmp``: a torch.save that ran out of
    space may only say so through the free space left. ``kept`` says what was kept
    (e.g. the last checkpoint), for the message.
    """
    kept = f"; {kept}" if kept else ""
    if is_disk_full(exc, path):
        return StorageError(f"no space left on device writing {path} ({_free_text(path)}); the partial file was "
                            f"removed and nothing earlier was lost{kept}. Free space there (or point the output "
                            f"elsewhere) and run the same command again")
    os_error = _os_error(exc)
    if os_error is None:
        return None
    if isinstance(os_error, IsADirectoryError) or path.is_dir():
        return StorageError(f"cannot write {path}: it is a directory; give the path of a file to write{kept}")
    reason = os_error.strerror or type(os_error).__name__
    where = f" ({os_error.filename})" if os_error.filename and str(os_error.filename) not in (str(path), str(tmp)) else ""
    return StorageError(f"cannot write {path}: {reason}{where}{kept}. Check that its folder exists, is writable "
                        f"and is not a read-only file system")


def is_disk_full(exc: BaseException, path: Path) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception chain, or torch.save's wrapped write failure on a full disk."""
    os_error = _os_error(exc)
    if os_error is not None and os_error.errno in _FULL:
        return True
    if isinstance(exc, RuntimeError) and any(word in str(exc) for word in _TORCH_WRITE_FAILED):
        free = _free_bytes(path)
        return free is not None and free < 1 << 20
    return False


def _os_error(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _free_bytes(path: Path) -> int | None:
    try:
        stat = os.statvfs(path.parent if not path.is_dir() else path)
    except (OSError, AttributeError):
        return None
    return stat.f_bavail * stat.f_frsize


def _free_text(path: Path) -> str:
    free = _free_bytes(path)
    return "free space unknown" if free is None else f"{free / 2**20:.1f} MiB free on its file system"


def output_dir(path: str | Path, setting: str = "--out", *, create: bool = True) -> Path:
    """Create the output directory ``path`` (and its parents); one clear line if a file is in the way.

    ``create=False`` only checks, so a command can refuse a bad ``--out`` before any work.
    """
    path = Path(path)
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            what = "is a file" if part == path else f"is inside {part}, which is a file"
            raise ConfigError(f"{setting} {path} {what}; give a directory (it is created when missing). "
                              f"Nothing was written and {part} is unchanged")
        if part.exists():
            break
    if not create:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (write_error(exc, path) or exc) from None
    return path
