"""TensorBoard logging of a training run: the epoch's scalars and an (input, truth, prediction) triplet."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.utils.tensorboard import SummaryWriter

from unetkit.core.labels import palette


def colorize(labels: torch.Tensor, n_classes: int, mask_kind: str = "binary") -> torch.Tensor:
    """(H, W) label map -> uint8 (3, H, W) picture in the layout's palette; ignored pixels are grey."""
    lut = torch.from_numpy(palette(n_classes, mask_kind))
    return lut[labels.long().clamp(0, 255).cpu()].permute(2, 0, 1).contiguous()


class TensorBoardLog:
    """Writes event files under `log_dir` that TensorBoard itself opens."""

    def __init__(self, log_dir: str | os.PathLike, class_names: Sequence[str], mask_kind: str = "binary") -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.class_names = list(class_names)
        self.mask_kind = mask_kind

    def scalars(
        self, epoch: int, values: dict[str, float], dice: Sequence[float | None], iou: Sequence[float | None]
    ) -> None:
        """The epoch's scalars and, for multi-class, per-class scores (classes the truth lacks are skipped)."""
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
        self.writer.add_image("Input", image.cpu(), epoch)
        self.writer.add_image("Ground Truth", colorize(truth, n_classes, self.mask_kind), epoch)
        self.writer.add_image("Prediction", colorize(pred, n_classes, self.mask_kind), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
