"""Losses on logits, in their numerically stable forms, with ignored pixels excluded.

Binary models output one logit channel (N, 1, H, W); multi-class models output one per class. Targets are
int64 (N, H, W) label maps where IGNORE_INDEX marks pixels that count for nothing (padding, rotation
borders, Cityscapes' void classes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from unetkit.core.labels import IGNORE_INDEX

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BINARY_LOSSES = ("bce", "dice", "bce+dice")
MULTICLASS_LOSSES = ("ce", "dice", "ce+dice")
SMOOTH = 1.0


def bce_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean binary cross-entropy with logits over valid pixels (log-sum-exp form, no sigmoid overflow)."""
    valid = target != ignore_index
    per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0].float(), (target == 1).float(), reduction="none")
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


def binary_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """1 - soft Dice of sigmoid probabilities over the whole batch; empty prediction and target give 0."""
    valid = (target != ignore_index).float()
    prob = torch.sigmoid(logits[:, 0].float()) * valid
    truth = (target == 1).float() * valid
    inter = (prob * truth).sum()
    return 1.0 - (2.0 * inter + SMOOTH) / (prob.sum() + truth.sum() + SMOOTH)


def ce_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy (log-softmax inside) averaged over valid pixels; 0 when none is valid."""
    valid = (target != ignore_index).sum()
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / valid.clamp(min=1)


def multiclass_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """1 - mean over classes of the soft Dice of softmax probabilities, over valid pixels."""
    n_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).float()
    prob = torch.softmax(logits.float(), dim=1) * valid
    onehot = F.one_hot(target.clamp(max=n_classes - 1), n_classes).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    dice = (2.0 * inter + SMOOTH) / (prob.sum(dims) + onehot.sum(dims) + SMOOTH)
    return 1.0 - dice.mean()


def make_loss(name: str, n_classes: int) -> LossFn:
    """The named loss for a binary (n_classes == 1) or multi-class model; combinations weigh 0.5/0.5."""
    binary = n_classes == 1
    choices = BINARY_LOSSES if binary else MULTICLASS_LOSSES
    if name not in choices:
        kind = "binary" if binary else "multi-class"
        raise ValueError(f"loss '{name}' is not available for a {kind} model; choose one of: {', '.join(choices)}")
    pixel = bce_loss if binary else ce_loss
    dice = binary_dice_loss if binary else multiclass_dice_loss
    if name == "dice":
        return dice
    if "+" not in name:
        return pixel
    return lambda logits, target: 0.5 * pixel(logits, target) + 0.5 * dice(logits, target)
