"""Output paths checked before any work, and which write errors will happen again.

Every command checks the paths it will write (folders and files) before it loads a model or reads an image,
so a typo, a file where a folder should be or a read-only disk costs a second instead of a run.
`write_error_repeats` says whether a failed write will fail again for the next file (disk full, quota
exceeded, read-only file system): a run stops at the first one instead of failing every later image.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputError

#: errno values that the next write to the same disk will hit too.
REPEATING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
FOLDER, FILE = "folder", "file"


def write_error_repeats(exc: BaseException) -> bool:
    """True for a write error that every later write will also hit (ENOSPC, EDQUOT, EROFS)."""
    return isinstance(exc, OSError) and exc.errno in REPEATING_ERRNOS


def output_problem(path: Path, kind: str) -> str | None:
    """Why `path` cannot be written as a `kind` (FOLDER or FILE), or None. Looks, creates nothing.

    A folder may exist (as a folder) or be creatable; a file may exist (not as a folder) or be creatable; what
    is created lies under the nearest existing ancestor, which must be a writable folder.
    """
    if path.is_dir():
        return "is a folder; name a file" if kind == FILE else _unwritable(path, "")
    if path.exists() and kind == FOLDER:
        return "is a file, not a folder"
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder"
    return _unwritable(ancestor, f"{ancestor} ")


def _unwritable(folder: Path, name: str) -> str | None:
    """None when files can be created in `folder`, else why not (`name` prefixes the reason)."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return name + ("is on a read-only file system" if read_only else "is not writable (permission denied)")


def check_outputs(outputs: Iterable[tuple[str, str | os.PathLike | None, str]]) -> None:
    """Raise OutputError for the first unusable output among (flag, path, kind) triples; None paths are skipped.

    Two flags naming the same file are an error too (one would overwrite the other).
    """
    seen: dict[Path, str] = {}
    for flag, raw, kind in outputs:
        if raw is None:
            continue
        path = Path(raw)
        problem = output_problem(path, kind)
        if problem:
            raise OutputError(f"{flag} {path}: {problem}")
        if kind == FILE:
            key = path.resolve()
            if key in seen:
                raise OutputError(f"{flag} {path}: the same file as {seen[key]}")
            seen[key] = flag
