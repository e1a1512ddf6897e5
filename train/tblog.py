"""TensorBoard logging of a training run: the epoch's scalars and an (input, truth, prediction) triplet."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from unetkit.core.labels import palette

log = logging.getLogger(__name__)


def colorize(labels: torch.Tensor, n_classes: int, mask_kind: str = "binary") -> torch.Tensor:
    """(H, W) label map -> uint8 (3, H, W) picture in the layout's palette; ignored pixels are grey."""
    lut = torch.from_numpy(palette(n_classes, mask_kind))
    return lut[labels.long().clamp(0, 255).cpu()].permute(2, 0, 1).contiguous()


class TensorBoardLog:
    """Writes event files under `log_dir` that TensorBoard itself opens.

    A failed write (disk full) is an OSError naming `log_dir`, raised in the training thread; TensorBoard's
    writer thread, which hits it first, does not print a traceback of its own.
    """

    def __init__(self, log_dir: str | os.PathLike, class_names: Sequence[str], mask_kind: str = "binary") -> None:
        _quiet_writer_threads()
        self.log_dir = Path(log_dir)
        self.failed = False
        with self._writing():
            self.writer = SummaryWriter(log_dir=str(log_dir))
        self.class_names = list(class_names)
        self.mask_kind = mask_kind

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self.failed = True
            raise OSError(exc.errno, exc.strerror or str(exc), exc.filename or str(self.log_dir)) from None

    def scalars(
        self, epoch: int, values: dict[str, float], dice: Sequence[float | None], iou: Sequence[float | None]
    ) -> None:
        """The epoch's scalars and, for multi-class, per-class scores (classes the truth lacks are skipped)."""
        with self._writing():
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, epoch)
            if len(self.class_names) > 1:
                for name, d, i in zip(self.class_names, dice, iou, strict=True):
                    if d is not None and i is not None:
                        self.writer.add_scalar(f"Dice/{name}", d, epoch)
                        self.writer.add_scalar(f"IoU/{name}", i, epoch)
            self.writer.flush()

    def triplet(self, epoch: int, image: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor, n_classes: int) -> None:
        """Log the seed's three pictures: input (uint8 (3, H, W)), ground truth and prediction (H, W)."""
        with self._writing():
            self.writer.add_image("Input", image.cpu(), epoch)
            self.writer.add_image("Ground Truth", colorize(truth, n_classes, self.mask_kind), epoch)
            self.writer.add_image("Prediction", colorize(pred, n_classes, self.mask_kind), epoch)
            self.writer.flush()

    def close(self) -> None:
        """Flush and close; a write error already reported is not raised again."""
        try:
            self.writer.close()
        except OSError as exc:
            if not self.failed:
                log.warning("warning: %s: TensorBoard events not fully written (%s)", self.log_dir, exc.strerror or exc)


def _quiet_writer_threads() -> None:
    """Let TensorBoard's writer threads die without a traceback: the writer re-raises their exception in the
    thread that logs (tensorboard's _AsyncWriter._check_worker_status), where it is reported once."""
    previous = threading.excepthook
    if getattr(previous, "unetkit_quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)

    hook.unetkit_quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook
