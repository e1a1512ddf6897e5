"""User-facing errors: one line that names the file and the problem; and the exit codes commands end with.

CLIs catch `UnetkitError` and print its message without a traceback; anything else is a bug.
"""

#: 0 done; 1 done, but some inputs failed or a check missed; 2 a user error, before or during the work; 130
#: Ctrl-C; 143 SIGTERM (128 + the signal, as shells report them).
EXIT_OK, EXIT_FAILURES, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class UnetkitError(Exception):
    """An error caused by the user's input (a file, a flag, a data set), not by unetkit."""


class CheckpointError(UnetkitError):
    """A checkpoint is missing, truncated, foreign or unsafe."""


class DataError(UnetkitError):
    """A data set or an image is missing, unreadable, corrupt or inconsistent."""


class OutputError(UnetkitError):
    """An output cannot be written: its path is unusable, or the disk is full, over quota or read-only."""
