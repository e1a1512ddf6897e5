"""Building an artifact so that it exists only once it is verified: into a temporary file, checked, then
renamed into place; an artifact that misses its criterion is removed and reported."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unetkit.core.atomic import atomic_path
from unetkit.core.errors import UnetkitError

from .verify import Verification


@dataclass
class Artifact:
    path: Path
    precision: str
    build_seconds: float = 0.0
    verify_seconds: float = 0.0
    verification: Verification | None = None
    kept: bool = False
    note: str = ""

    def line(self) -> str:
        head = f"{self.path.name:<22} {self.precision.upper():<5}"
        if self.note:
            return f"{head} {self.note}"
        size = f"{self.path.stat().st_size / 1e6:7.1f} MB" if self.kept else "   NOT KEPT"
        timing = f"built {self.build_seconds:5.1f}s"
        if self.verification is None:
            return f"{head} {size}  {timing}  not verified (--no-verify)"
        hint = f"\n  {self.verification.hint}" if self.verification.hint else ""
        return f"{head} {size}  {timing}  verified {self.verify_seconds:5.1f}s  {self.verification.summary()}{hint}"


class _Rejected(Exception):
    """Verification failed: the temporary file is removed and the artifact is not kept."""


def produce(
    path: Path, precision: str, build: Callable[[Path], None], check: Callable[[Path], Verification] | None
) -> Artifact:
    """Build into a temporary file, verify it, and rename it into place only if it passes."""
    result = Artifact(path, precision)
    try:
        with atomic_path(path) as tmp:
            start = time.perf_counter()
            try:
                build(tmp)
            except UnetkitError as exc:  # a builder names the file it writes: the user's name, not the temporary one
                raise type(exc)(str(exc).replace(tmp.name, path.name)) from None
            result.build_seconds = time.perf_counter() - start
            if check is not None:
                result.verification = check(tmp)
                result.verify_seconds = time.perf_counter() - start - result.build_seconds
                if not result.verification.passed:
                    raise _Rejected
    except _Rejected:
        return result
    result.kept = True
    return result
