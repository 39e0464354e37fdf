"""Error types for mistakes a user can fix.

The CLI prints the message of a :class:`SpeechbsError` and exits with status 2,
without a traceback. Internal invariants use ``assert``; everything a user can
get wrong (a recipe key, a file, a batch plan) raises one of these with a
message that names the setting or file and says what to change.
"""

from __future__ import annotations


class SpeechbsError(ValueError):
    """A problem with the user's input: config, data or command line."""


class ConfigError(SpeechbsError):
    """An unknown key, a wrong type or an impossible value in a recipe or ``--set``."""


class DataError(SpeechbsError):
    """A manifest, label file or audio file that cannot be used as it is."""


class PlanError(SpeechbsError):
    """A batch plan that cannot work (found before any compute)."""
