"""What every unetkit command shares: logging to the terminal, one-line errors, exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from .errors import UnetkitError

EXIT_OK, EXIT_FAILURES, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body: user errors become `prog: error: ...` and exit 2; Ctrl-C exits 130."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    for noisy in ("torch.onnx", "onnxscript", "torch._dynamo", "torch.export", "torch.fx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return body()
    except UnetkitError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished outputs are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
