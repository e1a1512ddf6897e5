"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output behind.

Everything unetkit writes (checkpoints, ONNX files, engines, masks, reports) goes to a temporary file in
the destination's directory and is renamed over the destination only once it is complete and synced.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def _host_tag() -> str:
    """8 hex digits naming this host and its process-ID namespace (containers on one node share a hostname
    prefix but not their PIDs): temporary files are only ever judged by a process that sees their writer."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return hashlib.sha256(f"{socket.gethostname()}/{namespace}".encode()).hexdigest()[:8]


#: The tag in this process's temporary names (see `_host_tag`).
TEMP_HOST = _host_tag()
_TEMP_NAME = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-\d+\.tmp$")
#: A temporary file is only removed once it is this old: a live writer on a host it cannot see stays safe.
STALE_AFTER_S = 600


def temp_path(path: Path) -> Path:
    """The temporary name a write of `path` uses, beside it: hidden, tagged with host, process and thread."""
    return path.with_name(f".{path.name}.{TEMP_HOST}-{os.getpid()}-{threading.get_ident()}.tmp")


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> int:
    """Remove the temporary files that writers killed outright (SIGKILL, the OOM killer, a power cut) left in
    `folder`: written on this host by a process that no longer runs, at least STALE_AFTER_S ago. Returns how
    many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed, now = 0, time.time()
    for tmp in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        match = _TEMP_NAME.match(tmp.name)
        if not match or match["host"] != TEMP_HOST or _running(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            if now - tmp.stat().st_mtime >= STALE_AFTER_S:
                tmp.unlink()
                removed += 1
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any failure it is removed.

    A write error names `path`, not the temporary file the user never asked for.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno is None or exc.filename not in (None, tmp, str(tmp)):
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
