"""Dice and IoU from hard predictions: pure functions, shared by training, export checks and the benchmark.

Scores are accumulated over a whole data set (true/false positives and false negatives summed over every
valid pixel, then divided once), per class. A class absent from both prediction and truth scores 1.0:
nothing to find, nothing found.
"""

from __future__ import annotations

import numpy as np
import torch

from .labels import IGNORE_INDEX


def confusion_counts(
    pred: torch.Tensor, target: torch.Tensor, n_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per scored class (tp, fp, fn) as an int64 tensor of shape (K, 3).

    Binary (n_classes == 1) scores the foreground class only; multi-class scores every class.
    """
    k = max(n_classes, 2)
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    matrix = torch.bincount(t * k + p, minlength=k * k).view(k, k).cpu()  # rows: truth, columns: prediction
    tp = matrix.diag()
    counts = torch.stack([tp, matrix.sum(0) - tp, matrix.sum(1) - tp], dim=1)
    return counts[1:] if n_classes == 1 else counts


def dice_from_counts(counts: torch.Tensor) -> list[float]:
    """2tp / (2tp + fp + fn) per class, 1.0 where the denominator is 0."""
    tp, fp, fn = counts.double().unbind(dim=1)
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones_like(denom)).tolist()


def iou_from_counts(counts: torch.Tensor) -> list[float]:
    """tp / (tp + fp + fn) per class, 1.0 where the denominator is 0."""
    tp, fp, fn = counts.double().unbind(dim=1)
    denom = tp + fp + fn
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.ones_like(denom)).tolist()


def mask_agreement(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, n_classes: int) -> float:
    """Dice between two predicted label maps (mean over classes for multi-class): how far engines agree."""
    scores = dice_from_counts(confusion_counts(torch.as_tensor(a), torch.as_tensor(b), n_classes, ignore_index=-1))
    return float(sum(scores) / len(scores))
