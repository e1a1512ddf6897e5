"""The commands' entry points (pyproject's [project.scripts]).

A command's modules (torch, ONNX Runtime, TensorRT) take seconds to load. Ctrl-C in that time would raise
KeyboardInterrupt inside some library's import, where a bare `except:` may swallow it (the command then
runs on) or turn it into another error's traceback. So while the command's module loads, Ctrl-C ends the
process at once with one line and exit 130: nothing has been written yet, so nothing needs cleaning up. From
then on `core.cli.run_cli` handles it. This module and the package above it load nothing heavy.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from types import FrameType

from .errors import EXIT_INTERRUPTED


def launch(prog: str, module: str) -> int:
    """Import `module` (a command's CLI) and run its main(); Ctrl-C during the import is one line, exit 130."""

    def interrupted(signum: int, frame: FrameType | None) -> None:
        sys.stderr.write(f"{prog}: interrupted while starting\n")
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)  # no exception into the library code that is loading

    ours = (
        threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    )
    previous = signal.signal(signal.SIGINT, interrupted) if ours else None
    try:
        main = importlib.import_module(module).main
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)
    return int(main())


def train() -> int:
    return launch("unet-train", "unetkit.train.cli")


def data() -> int:
    return launch("unet-data", "unetkit.train.data.cli")


def export() -> int:
    return launch("unet-export", "unetkit.export.cli")


def infer() -> int:
    return launch("unet-infer", "unetkit.infer.cli")


def bench() -> int:
    return launch("unet-bench", "unetkit.bench.cli")
