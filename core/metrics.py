"""Dice and IoU from hard predictions: pure functions, shared by training, evaluation, export checks and the
benchmark.

Scores are accumulated over a whole data set (true/false positives and false negatives summed over every
valid pixel, then divided once), per class. The mean over classes counts only the classes that occur in the
truth: a class the truth lacks has no score to earn, so neither an empty-for-empty 1.0 nor a 0 for a few
stray pixels of it may move the mean (those pixels still count, as misses of the class they belong to).
Binary models score their one foreground class, where empty truth and empty prediction agree perfectly (1.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ClassScores:
    """Per-class Dice and IoU (None for a class the truth lacks) and their means over the present classes."""

    dice: list[float | None]
    iou: list[float | None]
    absent: list[int]  # classes with no pixel in the truth (multi-class only)
    stray_pixels: list[int]  # per class: pixels predicted as a class the truth lacks (0 for present classes)

    @property
    def present(self) -> list[int]:
        return [i for i, d in enumerate(self.dice) if d is not None]

    @property
    def mean_dice(self) -> float:
        return _mean(self.dice)

    @property
    def mean_iou(self) -> float:
        return _mean(self.iou)


def _mean(values: list[float | None]) -> float:
    """Mean of the scored entries; NaN when there are none (a truth of ignored pixels only)."""
    scored = [v for v in values if v is not None]
    return sum(scored) / len(scored) if scored else math.nan


def class_scores(counts: torch.Tensor, n_classes: int) -> ClassScores:
    """Dice/IoU per class from (K, 3) counts; for multi-class, classes absent from the truth get None and
    are left out of the means. Binary keeps its single score (1.0 when truth and prediction are empty)."""
    dice, iou = dice_from_counts(counts), iou_from_counts(counts)
    if n_classes == 1:
        return ClassScores(list(dice), list(iou), [], [0] * len(dice))
    in_truth = (counts[:, 0] + counts[:, 2] > 0).tolist()
    stray = [0 if here else int(fp) for here, fp in zip(in_truth, counts[:, 1].tolist(), strict=True)]
    return ClassScores(
        [d if here else None for d, here in zip(dice, in_truth, strict=True)],
        [v if here else None for v, here in zip(iou, in_truth, strict=True)],
        [i for i, here in enumerate(in_truth) if not here],
        stray,
    )


#: The mask agreement with PyTorch FP32 that an engine of lower precision must reach: export's gates on its
#: files, and what `unet-infer --engine fastest` asks of each candidate.
FP16_MIN_DICE = 0.999
INT8_MIN_DICE = 0.99


def agreement_gate(precision: str) -> float:
    """The least mask agreement with PyTorch FP32 an engine computing in `precision` may show."""
    return INT8_MIN_DICE if precision == "int8" else FP16_MIN_DICE


def agreement_counts(labels: torch.Tensor, reference: torch.Tensor, n_classes: int) -> list[int]:
    """[tp, fp, fn] of `labels` against the reference labels: of the foreground for a binary model, summed
    over the classes for a multi-class one (so their Dice is the share of pixels whose class agrees, and a
    class covering a few pixels cannot decide it alone)."""
    counts = confusion_counts(labels, reference, n_classes, ignore_index=-1)
    return [int(v) for v in counts.sum(dim=0)]


def mask_agreement(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, n_classes: int) -> float:
    """How far two engines' label maps agree, `b` the reference: the Dice of `agreement_counts` (the figure
    export's verification gates on and the benchmark reports)."""
    counts = torch.tensor([agreement_counts(torch.as_tensor(a), torch.as_tensor(b), n_classes)])
    return dice_from_counts(counts)[0]
