"""TensorBoard logging of a training run: the epoch's scalars and an (input, truth, prediction) triplet."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.utils.tensorboard import SummaryWriter

from .layouts import IGNORE_INDEX


def colorize(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(H, W) label map -> uint8 (3, H, W) picture: white on black for binary, a fixed palette otherwise.

    Ignored pixels are drawn mid-grey.
    """
    if n_classes == 1:
        palette = torch.tensor([[0, 0, 0], [255, 255, 255]], dtype=torch.uint8)
    else:
        g = torch.Generator().manual_seed(0)
        palette = torch.randint(40, 256, (n_classes, 3), generator=g, dtype=torch.uint8)
    lut = torch.full((256, 3), 128, dtype=torch.uint8)
    lut[: len(palette)] = palette
    lut[IGNORE_INDEX] = 128
    return lut[labels.long().clamp(0, 255).cpu()].permute(2, 0, 1).contiguous()


class TensorBoardLog:
    """Writes event files under `log_dir` that TensorBoard itself opens."""

    def __init__(self, log_dir: str | os.PathLike, class_names: Sequence[str]) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.class_names = list(class_names)

    def scalars(self, epoch: int, values: dict[str, float], dice: Sequence[float], iou: Sequence[float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, epoch)
        if len(self.class_names) > 1:
            for name, d, i in zip(self.class_names, dice, iou, strict=True):
                self.writer.add_scalar(f"Dice/{name}", d, epoch)
                self.writer.add_scalar(f"IoU/{name}", i, epoch)
        self.writer.flush()

    def triplet(self, epoch: int, image: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor, n_classes: int) -> None:
        """Log the seed's three pictures: input (uint8 (3, H, W)), ground truth and prediction (H, W)."""
        self.writer.add_image("Input", image.cpu(), epoch)
        self.writer.add_image("Ground Truth", colorize(truth, n_classes), epoch)
        self.writer.add_image("Prediction", colorize(pred, n_classes), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
