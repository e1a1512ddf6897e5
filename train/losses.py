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


def bce_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX, pos_weight: float = 1.0
) -> torch.Tensor:
    """Mean binary cross-entropy with logits over valid pixels (log-sum-exp form, no sigmoid overflow);
    `pos_weight` weighs the foreground pixels' term (> 1: missing small objects costs more)."""
    valid = target != ignore_index
    weight = torch.tensor([pos_weight], device=logits.device) if pos_weight != 1.0 else None
    per_pixel = F.binary_cross_entropy_with_logits(
        logits[:, 0].float(), (target == 1).float(), reduction="none", pos_weight=weight
    )
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


def binary_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """1 - soft Dice of sigmoid probabilities over the whole batch; empty prediction and target give 0."""
    valid = (target != ignore_index).float()
    prob = torch.sigmoid(logits[:, 0].float()) * valid
    truth = (target == 1).float() * valid
    inter = (prob * truth).sum()
    return 1.0 - (2.0 * inter + SMOOTH) / (prob.sum() + truth.sum() + SMOOTH)


def ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    class_weights: tuple[float, ...] = (),
) -> torch.Tensor:
    """Cross-entropy (log-softmax inside) averaged over valid pixels; 0 when none is valid. With
    `class_weights` each pixel's term is weighted by its class and the mean is over the weights (PyTorch's
    weighted mean), so rare classes can count for more."""
    valid = target != ignore_index
    if not class_weights:
        total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
        return total / valid.sum().clamp(min=1)
    weight = torch.tensor(class_weights, dtype=torch.float32, device=logits.device)
    total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="sum")
    return total / weight[target[valid]].sum().clamp(min=1e-12)


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


def deep_supervision_weights(levels: int) -> list[float]:
    """nnU-Net's weights for the main logits then each coarser level: halved per level, summing to 1."""
    raw = [0.5**i for i in range(levels)]
    return [w / sum(raw) for w in raw]


def level_target(target: torch.Tensor, factor: int) -> torch.Tensor:
    """The label map at 1/`factor` resolution by nearest sampling (a label is never averaged into another), at
    ceil(H / factor) x ceil(W / factor) as the model's levels are: the centre pixel of each factor x factor
    block (pixel factor // 2, as nearest-exact resizing takes it; a top-left pixel would shift the labels by
    (factor - 1) / 2 pixels against the level's features), clamped into a last, partial block."""
    h, w = target.shape[-2:]
    rows = (torch.arange(-(-h // factor), device=target.device) * factor + factor // 2).clamp_(max=h - 1)
    cols = (torch.arange(-(-w // factor), device=target.device) * factor + factor // 2).clamp_(max=w - 1)
    return target.index_select(-2, rows).index_select(-1, cols)


def deep_supervision_loss(loss_fn: LossFn, outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """`loss_fn` of the main logits and of each coarser level's (UNet.forward(x, deep=True)) against the
    label map sampled to its size, weighted by deep_supervision_weights."""
    weights = deep_supervision_weights(len(outputs))
    return sum(
        (w * loss_fn(out, level_target(target, 2**i)) for i, (w, out) in enumerate(zip(weights, outputs, strict=True))),
        torch.zeros((), device=target.device),
    )


def default_loss(n_classes: int) -> str:
    """The loss a run uses without --loss: the seed's BCE+Dice, or its multi-class counterpart."""
    return "bce+dice" if n_classes == 1 else "ce+dice"


def make_loss(name: str, n_classes: int, pos_weight: float = 1.0, class_weights: tuple[float, ...] = ()) -> LossFn:
    """The named loss for a binary (n_classes == 1) or multi-class model; combinations weigh 0.5/0.5.
    `pos_weight` (binary) and `class_weights` (multi-class, one per class) weigh the cross-entropy term only:
    the Dice term already weighs each class by its own size."""
    binary = n_classes == 1
    choices = BINARY_LOSSES if binary else MULTICLASS_LOSSES
    if name not in choices:
        kind = "binary" if binary else "multi-class"
        raise ValueError(f"--loss: loss '{name}' is not available for a {kind} model; choose one of: "
                         f"{', '.join(choices)}")  # fmt: skip
    if pos_weight != 1.0 and not binary:
        raise ValueError("--pos-weight is for binary models; a multi-class one takes --class-weights")
    if class_weights and binary:
        raise ValueError("--class-weights is for multi-class models; a binary one takes --pos-weight")
    if class_weights and len(class_weights) != n_classes:
        raise ValueError(f"--class-weights has {len(class_weights)} value(s) for {n_classes} classes")
    if (pos_weight != 1.0 or class_weights) and name == "dice":
        raise ValueError("--pos-weight and --class-weights weigh the cross-entropy term, which --loss dice has not")

    def pixel(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if binary:
            return bce_loss(logits, target, pos_weight=pos_weight)
        return ce_loss(logits, target, class_weights=class_weights)

    dice = binary_dice_loss if binary else multiclass_dice_loss
    if name == "dice":
        return dice
    if "+" not in name:
        return pixel
    return lambda logits, target: 0.5 * pixel(logits, target) + 0.5 * dice(logits, target)
