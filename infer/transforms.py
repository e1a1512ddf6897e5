"""Out of the model, on the device: probabilities back to the original size, confidence pictures and overlays.

Pixels -> model input is `unetkit.core.preprocess.model_input` and probabilities -> labels is
`unetkit.core.labels.to_labels`: the functions training, export and the benchmark use too."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from unetkit.core.labels import palette

OVERLAY_ALPHA = 0.45
#: Binary overlays tint the foreground in this colour.
OVERLAY_COLOR = (255, 40, 40)


def to_size(prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) probabilities resized bilinearly to the original (H, W); probabilities, not logits."""
    if tuple(prob.shape[-2:]) == tuple(size):
        return prob
    return F.interpolate(prob[None], size=size, mode="bilinear", align_corners=False)[0]


def confidence(prob: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W) picture of the foreground probability (binary) or the winning class's (multi-class)."""
    p = prob[0] if prob.shape[0] == 1 else prob.max(dim=0).values
    return (p * 255).round_().to(torch.uint8)


@functools.lru_cache(maxsize=8)
def _colors(n_classes: int, mask_kind: str, device: torch.device) -> torch.Tensor:
    """The overlay tint (3, 1, 1) for binary, the class palette (256, 3) otherwise; made once per device."""
    if n_classes == 1:
        return torch.tensor(OVERLAY_COLOR, dtype=torch.float32).view(3, 1, 1).to(device)
    return torch.from_numpy(palette(n_classes, mask_kind)).float().to(device)


def overlay(image: torch.Tensor, labels: torch.Tensor, n_classes: int, mask_kind: str) -> torch.Tensor:
    """uint8 (3, H, W) image with the prediction blended in: a red tint for binary, class colours otherwise."""
    if n_classes == 1:
        color = _colors(1, mask_kind, image.device)
        alpha = labels.float()[None] * OVERLAY_ALPHA
    else:
        color = _colors(n_classes, mask_kind, image.device)[labels.long()].permute(2, 0, 1)
        alpha = torch.full_like(labels, OVERLAY_ALPHA, dtype=torch.float32)[None]
    out = image.float() * (1 - alpha) + color * alpha
    return out.round_().clamp_(0, 255).to(torch.uint8)
