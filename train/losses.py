"""Losses on logits, in their numerically stable forms, with ignored pixels excluded.

Binary models output one logit channel (N, 1, H, W); multi-class models output one per class. Targets are
int64 (N, H, W) label maps where IGNORE_INDEX marks pixels that count for nothing (padding, rotation
borders, Cityscapes' void classes).

A loss is a pixel term (cross-entropy, or focal: cross-entropy that fades on pixels already right, for
images where easy background swamps the rest), a region term (soft Dice, or Tversky: Dice that charges
misses more than false alarms, for small objects such as polyps), or one of each, weighed 0.5/0.5.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from unetkit.core.labels import IGNORE_INDEX

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
REGION_TERMS = ("dice", "tversky")
BINARY_LOSSES = ("bce", "focal", *REGION_TERMS, *(f"{p}+{r}" for p in ("bce", "focal") for r in REGION_TERMS))
MULTICLASS_LOSSES = ("ce", "focal", *REGION_TERMS, *(f"{p}+{r}" for p in ("ce", "focal") for r in REGION_TERMS))
SMOOTH = 1.0
#: The focal loss's focusing exponent (Lin et al. 2017; segmentation_models_pytorch's default): a pixel
#: predicted right with probability p counts (1 - p)^2 of its cross-entropy.
FOCAL_GAMMA = 2.0
#: Tversky's weights of false positives and false negatives (Salehi et al. 2017): misses cost more than false
#: alarms; 0.5/0.5 is the Dice loss.
TVERSKY_ALPHA, TVERSKY_BETA = 0.3, 0.7


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


def binary_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    pos_weight: float = 1.0,
    gamma: float = FOCAL_GAMMA,
) -> torch.Tensor:
    """Mean sigmoid focal loss over valid pixels: each pixel's binary cross-entropy times (1 - p_t)^gamma,
    p_t the probability given to its true label (torchvision's sigmoid_focal_loss without alpha);
    `pos_weight` weighs the foreground pixels' term as in `bce_loss`. gamma 0 is `bce_loss`."""
    valid = target != ignore_index
    x, truth = logits[:, 0].float(), (target == 1).float()
    ce = F.binary_cross_entropy_with_logits(x, truth, reduction="none")
    p = torch.sigmoid(x)
    p_true = p * truth + (1 - p) * (1 - truth)
    per_pixel = ce * (1 - p_true) ** gamma * (1 + (pos_weight - 1) * truth)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


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


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    class_weights: tuple[float, ...] = (),
    gamma: float = FOCAL_GAMMA,
) -> torch.Tensor:
    """Softmax focal loss: each valid pixel's cross-entropy times (1 - p_t)^gamma, averaged as `ce_loss`
    averages (over the class weights when given). gamma 0 is `ce_loss`."""
    valid = target != ignore_index
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, target.clamp(max=logits.shape[1] - 1)[:, None])[:, 0]
    per_pixel = -((1 - log_p.exp()) ** gamma) * log_p * valid
    if not class_weights:
        return per_pixel.sum() / valid.sum().clamp(min=1)
    weight = torch.tensor(class_weights, dtype=torch.float32, device=logits.device)
    pixel_weight = weight[target.clamp(max=logits.shape[1] - 1)] * valid
    return (per_pixel * pixel_weight).sum() / pixel_weight.sum().clamp(min=1e-12)


def tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    alpha: float = TVERSKY_ALPHA,
    beta: float = TVERSKY_BETA,
) -> torch.Tensor:
    """1 - soft Tversky index (TP + s) / (TP + alpha FP + beta FN + s) over the whole batch, of sigmoid
    probabilities for a binary model, of softmax probabilities per class (then averaged) for a multi-class
    one, over valid pixels; alpha = beta = 0.5 is the soft Dice loss."""
    n_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).float()
    if n_classes == 1:
        prob = torch.sigmoid(logits.float()) * valid
        truth = (target == 1).unsqueeze(1).float() * valid
    else:
        prob = torch.softmax(logits.float(), dim=1) * valid
        truth = F.one_hot(target.clamp(max=n_classes - 1), n_classes).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    tp = (prob * truth).sum(dims)
    fp, fn = prob.sum(dims) - tp, truth.sum(dims) - tp
    return 1.0 - ((tp + SMOOTH / 2) / (tp + alpha * fp + beta * fn + SMOOTH / 2)).mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """1 - soft Dice (per class, averaged, for multi-class); an empty prediction of an empty target gives 0."""
    return tversky_loss(logits, target, ignore_index, 0.5, 0.5)


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
    `pos_weight` (binary) and `class_weights` (multi-class, one per class) weigh the pixel term (cross-entropy
    or focal) only: the region term already weighs each class by its own size."""
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
    if (pos_weight != 1.0 or class_weights) and name in REGION_TERMS:
        raise ValueError(f"--pos-weight and --class-weights weigh the cross-entropy or focal term, which --loss "
                         f"{name} has not")  # fmt: skip
    terms = [_term(part, binary, pos_weight, class_weights) for part in name.split("+")]
    if len(terms) == 1:
        return terms[0]
    first, second = terms
    return lambda logits, target: 0.5 * first(logits, target) + 0.5 * second(logits, target)


def _term(name: str, binary: bool, pos_weight: float, class_weights: tuple[float, ...]) -> LossFn:
    """One term of a loss name: bce/ce, focal, dice or tversky, for the model's kind."""
    if name in REGION_TERMS:
        return dice_loss if name == "dice" else tversky_loss
    focal = name == "focal"
    if binary:
        return lambda logits, target: (binary_focal_loss if focal else bce_loss)(logits, target, pos_weight=pos_weight)
    return lambda logits, target: (focal_loss if focal else ce_loss)(logits, target, class_weights=class_weights)
