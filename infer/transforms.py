"""Out of the model, on the device: probabilities back to the original size, confidence pictures and overlays.

Pixels -> model input is `unetkit.core.preprocess.model_input` and probabilities -> labels is
`unetkit.core.labels.to_labels`: the functions training, export and the benchmark use too."""

from __future__ import annotations

import functools

import torch

from unetkit.core.labels import palette, resize_probabilities

OVERLAY_ALPHA = 0.45
#: Binary overlays tint the foreground in whichever of these stands out most from the pixels under the mask
#: (a red car gets cyan, a white one a saturated colour), and outline it in the same colour at full strength.
OVERLAY_COLORS = ((255, 40, 40), (40, 200, 40), (40, 90, 255), (255, 220, 0), (0, 220, 255), (255, 0, 255))


#: (C, h, w) probabilities back to the original (H, W): the function evaluation scores with, too.
to_size = resize_probabilities


def confidence(prob: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W) picture of the foreground probability (binary) or the winning class's (multi-class)."""
    p = prob[0] if prob.shape[0] == 1 else prob.max(dim=0).values
    return (p * 255).round_().to(torch.uint8)


@functools.lru_cache(maxsize=8)
def _colors(n_classes: int, mask_kind: str, device: torch.device) -> torch.Tensor:
    """The binary candidates (K, 3), or the class palette (256, 3); made once per device."""
    if n_classes == 1:
        return torch.tensor(OVERLAY_COLORS, dtype=torch.float32).to(device)
    return torch.from_numpy(palette(n_classes, mask_kind)).float().to(device)


def contrast_color(image: torch.Tensor, region: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The candidate colour (3,) farthest from the mean colour of `image` (3, H, W) inside `region` (H, W)
    (the whole image when the region is empty)."""
    pixels, weight = image.float(), region.float()
    total = weight.sum()  # stays on the device: no host sync in the streamed pipeline
    inside = (pixels * weight).sum(dim=(1, 2)) / total.clamp(min=1)
    mean = torch.where(total > 0, inside, pixels.mean(dim=(1, 2)))
    return candidates[(candidates - mean).norm(dim=1).argmax()]


def outline(labels: torch.Tensor, width: int) -> torch.Tensor:
    """bool (H, W): pixels whose (2 width + 1)² window (clipped to the image) holds two labels (mask edges,
    class borders). The window is connected, so it holds two labels exactly when it holds two neighbours
    that differ: counted with integral images, five times faster on a CPU than a max-pool of the window."""
    across = labels[:, 1:] != labels[:, :-1]  # (H, W-1): pixel and its right neighbour differ
    down = labels[1:, :] != labels[:-1, :]  # (H-1, W)
    return _window_holds(across, width, (0, 1)) | _window_holds(down, width, (1, 0))


def _window_holds(pairs: torch.Tensor, width: int, span: tuple[int, int]) -> torch.Tensor:
    """bool (H, W): whether the window of each pixel holds a True pair; a pair at (i, j) covers rows i..i+dy and
    columns j..j+dx, where (dy, dx) = `span`, so the window must hold both of its pixels."""
    (rows, cols), (dy, dx) = pairs.shape, span
    table = torch.zeros(rows + 1, cols + 1, dtype=torch.int32, device=pairs.device)
    table[1:, 1:] = pairs.to(torch.int32).cumsum(0).cumsum(1)
    r = torch.arange(rows + dy, device=pairs.device)
    c = torch.arange(cols + dx, device=pairs.device)
    r0, r1 = (r - width).clamp(0, rows), (r + width - dy + 1).clamp(0, rows)
    c0, c1 = (c - width).clamp(0, cols), (c + width - dx + 1).clamp(0, cols)
    return (table[r1][:, c1] - table[r0][:, c1] - table[r1][:, c0] + table[r0][:, c0]) > 0


def overlay(image: torch.Tensor, labels: torch.Tensor, n_classes: int, mask_kind: str) -> torch.Tensor:
    """uint8 (3, H, W) image with the prediction blended in and outlined, visible on any colour: binary masks
    in the candidate colour that contrasts most with the pixels they cover, classes in their palette colours."""
    width = max(1, round(max(labels.shape[-2:]) / 500))
    edge = outline(labels, width)[None]
    if n_classes == 1:
        color = contrast_color(image, labels > 0, _colors(1, mask_kind, image.device)).view(3, 1, 1)
        alpha = labels.float()[None] * OVERLAY_ALPHA
        edge = edge & (labels > 0)[None]
    else:
        color = _colors(n_classes, mask_kind, image.device)[labels.long()].permute(2, 0, 1)
        alpha = torch.full_like(labels, OVERLAY_ALPHA, dtype=torch.float32)[None]
    alpha = torch.where(edge, torch.ones_like(alpha), alpha)
    out = image.float() * (1 - alpha) + color * alpha
    return out.round_().clamp_(0, 255).to(torch.uint8)
