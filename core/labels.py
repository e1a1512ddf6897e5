"""Labels: what a pixel's class is, how a model's output becomes one, and the colours that show it.

One implementation of probabilities -> labels for training, inference, export verification and the
benchmark, so a threshold or an argmax can never be applied two ways.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Label of pixels that count for nothing (padding, rotation borders, Cityscapes' void classes).
IGNORE_INDEX = 255

#: Colour of IGNORE_INDEX in multi-class pictures: no class takes it.
IGNORED_COLOR = (255, 255, 255)

#: Cityscapes' own colours for its 19 train classes (cityscapesScripts' labels.py).
CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits (..., C, H, W) -> float32 probabilities: sigmoid for one channel, softmax over the classes."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[-3] == 1 else torch.softmax(logits, dim=-3)


def resize_probabilities(prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) probabilities resized bilinearly to (H, W), e.g. back to an image's original size: the
    probabilities are resized, never the labels or logits, so the decision is made at full resolution."""
    if tuple(prob.shape[-2:]) == tuple(size):
        return prob
    return F.interpolate(prob[None], size=size, mode="bilinear", align_corners=False)[0]


def to_labels(prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """Probabilities (..., C, H, W) -> uint8 labels (..., H, W): 0/1 above `threshold` for one channel
    (binary), the most probable class otherwise."""
    if prob.shape[-3] == 1:
        return (prob[..., 0, :, :] > threshold).to(torch.uint8)
    return prob.argmax(dim=-3).to(torch.uint8)


def predict_labels(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Logits (..., C, H, W) -> uint8 labels (..., H, W), as `to_labels(probabilities(logits))`."""
    return to_labels(probabilities(logits), threshold)


def palette(n_classes: int, mask_kind: str = "binary") -> np.ndarray:
    """(256, 3) uint8 colours for label pictures: black/white for binary, Cityscapes' colours for its
    classes, fixed pseudo-random colours (none white) otherwise. Unused entries are mid-grey; IGNORE_INDEX is
    mid-grey for binary and IGNORED_COLOR (white) for multi-class, where grey is a class colour (Cityscapes'
    pole, and its building and wall are near it)."""
    table = np.full((256, 3), 128, dtype=np.uint8)
    if n_classes == 1:
        table[:2] = ((0, 0, 0), (255, 255, 255))
        return table
    if mask_kind == "cityscapes":
        table[: len(CITYSCAPES_COLORS)] = CITYSCAPES_COLORS
    else:
        table[:n_classes] = np.random.default_rng(0).integers(40, 231, (n_classes, 3), dtype=np.uint8)
    table[IGNORE_INDEX] = IGNORED_COLOR
    return table
