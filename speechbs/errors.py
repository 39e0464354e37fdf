"""Error types for mistakes a user can fix.

The CLI prints the message of a :class:`SpeechbsError` and exits with status 2,
without a traceback. Internal invariants use ``assert``; everything a user can
get wrong (a recipe key, a file, a batch plan) raises one of these with a
message that names the setting or file and says what to change.
"""

from __future__ import annotations

import errno


class SpeechbsError(ValueError):
    """A problem with the user's input: config, data or command line."""


class ConfigError(SpeechbsError):
    """An unknown key, a wrong type or an impossible value in a recipe or ``--set``.

    ``key`` is the dotted setting the message is about (empty when it is about no one key);
    the config loader reads it to say which ``[[table]]`` item a check failed in.
    """

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("key: message")`` unless ``condition``: the check-and-explain helper of every schema.

    ``key`` names the setting as a user writes it (``batch.seconds``); ``message`` says what is
    wrong and what to give instead (``must be > 0``).
    """
    if not condition:
        raise ConfigError(f"{key}: {message}", key=key)


class DataError(SpeechbsError):
    """A manifest, label file or audio file that cannot be used as it is."""


class PlanError(SpeechbsError):
    """A batch plan that cannot work (found before any compute)."""


class StorageError(SpeechbsError):
    """A file that cannot be written: no space left on the device, no permission, a read-only file system.

    Raised after the partial file was removed, so nothing earlier is lost
    (:mod:`speechbs.atomic`); the fix is the user's (free space, another path).
    """


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def user_message(exc: BaseException) -> str | None:
    """The message to print for an exception the user can fix, or None for a bug in speechbs.

    This is the one place that decides what a user sees instead of a traceback:

    - a :class:`SpeechbsError`, also when a DataLoader worker raised it (torch
      then puts the worker's traceback into the message; only the message is kept);
    - an ``OSError`` about a named file (permission, a directory in the way, a
      read-only file system) or a full disk, which the user fixes outside speechbs.
    """
    if isinstance(exc, SpeechbsError):
        return _unwrap_worker_message(exc)
    if isinstance(exc, OSError):
        if exc.errno in _DISK_FULL:
            where = f" writing {exc.filename}" if exc.filename else ""
            return (f"no space left on device{where}; free space on the file system of the output (the run "
                    f"directory, --out) and run the same command again: finished files and checkpoints are kept")
        if exc.filename:
            other = f" -> {exc.filename2}" if exc.filename2 else ""
            return f"{exc.filename}{other}: {exc.strerror or type(exc).__name__}"
    return None


def _unwrap_worker_message(exc: SpeechbsError) -> str:
    text = str(exc)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return text
    marker = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    start = text.rfind("\n" + marker)
    return text[start + 1 + len(marker):].rstrip("\n") if start >= 0 else text.splitlines()[-1]
