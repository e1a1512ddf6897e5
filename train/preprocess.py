"""Input scaling and normalization: one implementation for training and for every inference engine.

Training and inference must see identically prepared pixels, so both call these functions: images are
resized with antialiased bilinear interpolation, masks with nearest neighbour, and normalized with the
mean and std stored in the checkpoint.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: ImageNet statistics, in [0, 1] units; stored in every checkpoint so inference never guesses.
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The (height, width) an image of this size is resized to at `scale` (at least 1x1)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize float (N, C, H, W) images with antialiased bilinear interpolation; no-op at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize integer (N, H, W) label maps with nearest neighbour, keeping their dtype."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    resized = F.interpolate(masks[:, None].float(), size=size, mode="nearest-exact")
    return resized[:, 0].to(masks.dtype)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 (N, 3, H, W) in [0, 255] -> normalized float tensor of `dtype`, on the images' device."""
    m, s = _pixel_stats(tuple(mean), tuple(std), images.device)
    return ((images.float() - m) / s).to(dtype)


@functools.lru_cache(maxsize=16)
def _pixel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Mean and std in pixel units on `device`, made once: copying a constant to a GPU each call would make
    the host wait for the device's queue every time."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    return m.to(device), s.to(device)


def scale_uint8_image(image: torch.Tensor, scale: float) -> torch.Tensor:
    """Scale one uint8 (3, H, W) image by `scale` and return it as uint8 (the training data path)."""
    size = scaled_size(image.shape[-2], image.shape[-1], scale)
    if tuple(image.shape[-2:]) == size:
        return image
    out = resize_images(image[None].float(), size)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)
