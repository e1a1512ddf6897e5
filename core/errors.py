"""User-facing errors: one line that names the file and the problem.

CLIs catch `UnetkitError` and print its message without a traceback; anything else is a bug.
"""


class UnetkitError(Exception):
    """An error caused by the user's input (a file, a flag, a data set), not by unetkit."""


class CheckpointError(UnetkitError):
    """A checkpoint is missing, truncated, foreign or unsafe."""


class DataError(UnetkitError):
    """A data set or an image is missing, unreadable, corrupt or inconsistent."""


class OutputError(UnetkitError):
    """An output cannot be written: its path is unusable, or the disk is full, over quota or read-only."""
