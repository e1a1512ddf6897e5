"""What every unetkit command shares: its common flags, 'AxB' sizes, logging to the terminal, one-line
errors and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping

from PIL import Image

from .errors import EXIT_ERROR, EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, UnetkitError

__all__ = ["EXIT_ERROR", "EXIT_FAILURES", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED"]  # re-exported
#: Worker threads or processes for decoding and encoding: one default for every command.
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


def add_device_argument(parser: argparse.ArgumentParser, what: str = "", default: str | None = "auto") -> None:
    """--device; `default=None` lets a command tell a flag given from one left out (unet-train --resume)."""
    parser.add_argument("--device", default=default, help=f"auto, cpu, cuda or cuda:N{what} (default auto)")


def add_workers_argument(parser: argparse.ArgumentParser, what: str, default: int | None = DEFAULT_WORKERS) -> None:
    parser.add_argument("--workers", type=int, default=default, help=f"{what} (default {DEFAULT_WORKERS})")


def add_progress_argument(parser: argparse.ArgumentParser, default: bool | None = True) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=default,
                        help="no progress bars")  # fmt: skip


def parse_pair(text: str) -> tuple[int, int]:
    """'1280x1918' -> (1280, 1918); ValueError unless it is two positive integers joined by 'x'.

    One rule for every command's size arguments; which of the two is the height is the caller's to say.
    """
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"'{text}' is not two whole numbers joined by x") from None
    if a < 1 or b < 1:
        raise ValueError(f"'{text}': sizes must be positive")
    return a, b


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop, `kill`), raised where Ctrl-C would be so that the same clean-up runs:
    temporary files removed, finished outputs kept."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises Terminated in the main thread for the length of a command. Under a distributed launcher
    (torchrun, srun, a PyTorchJob: RANK/WORLD_SIZE set) the launcher owns the workers' signals, and a rank
    blocked in a collective could not run the handler anyway, so they are left as they are."""
    launched = any(key in os.environ for key in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"))
    if threading.current_thread() is not threading.main_thread() or launched:
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


#: What PyTorch's Gloo and NCCL backends say when a collective's peer process is gone or never came: words
#: naming the collective layer, with words naming the loss.
_COLLECTIVE = ("gloo", "nccl", "c10d", "process group", "watchdog", "collective")
_PEER_GONE = ("closed by peer", "reset by peer", "broken pipe", "timed out", "timeout", "abort")
_DIST_ERRORS = ("DistBackendError", "DistNetworkError", "DistStoreError")


def worker_message(exc: BaseException) -> str:
    """The message of `exc`, without the traceback PyTorch's DataLoader wraps around an error raised in a
    worker process ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): the bad file's
    one line, as without workers."""
    text = str(exc)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    name = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    at = text.rfind("\n" + name)
    return text[at + 1 + len(name) :].strip() if at >= 0 else text


def peer_stopped(exc: BaseException, environ: Mapping[str, str]) -> bool:
    """True for the error a rank of a distributed launch gets when another rank stopped first (its own error
    already said why): the collective it waited in failed. Such a rank says so in one line, not a traceback;
    any other RuntimeError (a CUDA fault, a DataLoader timeout) keeps its traceback."""
    if not ("RANK" in environ and "WORLD_SIZE" in environ) or not isinstance(exc, RuntimeError):
        return False
    if type(exc).__name__ in _DIST_ERRORS:
        return True
    text = str(exc).lower()
    return any(w in text for w in _COLLECTIVE) and any(w in text for w in _PEER_GONE)


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body: user errors become `prog: error: ...` and exit 2; Ctrl-C exits 130, SIGTERM 143."""
    # unetkit's own INFO lines are the commands' output; other libraries only get a word in for warnings,
    # and the exporters' warnings (missing torchvision ops, deprecations) are not for our users.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout, force=True)
    logging.getLogger("unetkit").setLevel(logging.INFO)
    for noisy in ("torch.onnx", "onnxscript", "onnx_ir", "torch._dynamo", "torch.export", "torch.fx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Image reading says it in one line naming the file (core/imageio.py), not in Pillow's multi-line warning.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        with _sigterm_as_interrupt():
            return body()
    except Terminated:
        print(f"{prog}: terminated; finished outputs are kept", file=sys.stderr)
        return EXIT_TERMINATED
    except UnetkitError as exc:
        print(f"{prog}: error: {worker_message(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # a file the command had to read or write (permissions, disk full)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished outputs are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as exc:
        if not peer_stopped(exc, os.environ):
            raise
        said = " ".join(str(exc).split())[:200]
        why = "one stopped, its error above, or did not answer within --dist-timeout"
        print(f"{prog}: error: rank {os.environ['RANK']} stopped waiting for the run's other processes ({why}): "
              f"{said}", file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
