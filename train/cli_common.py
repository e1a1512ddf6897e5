"""What every unetkit command shares: logging to the terminal, one-line errors, exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from .errors import UnetkitError

EXIT_OK, EXIT_FAILURES, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body: user errors become `prog: error: ...` and exit 2; Ctrl-C exits 130."""
    # unetkit's own INFO lines are the commands' output; other libraries only get a word in for warnings,
    # and the exporters' warnings (missing torchvision ops, deprecations) are not for our users.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout, force=True)
    logging.getLogger("unetkit").setLevel(logging.INFO)
    for noisy in ("torch.onnx", "onnxscript", "onnx_ir", "torch._dynamo", "torch.export", "torch.fx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return body()
    except UnetkitError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # a file the command had to read or write (permissions, disk full)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished outputs are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
