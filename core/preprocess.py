"""Pixels -> model input: one implementation for training, every inference engine, export verification and
the benchmark.

An image is resized by the model's rule (`ModelMeta.resize_rule`: a scale, a fixed size, or a longest side)
with antialiased bilinear interpolation and rounded back to 8-bit pixels (what training caches and augments),
then normalized with the model's mean and std on the device. Masks are resized with nearest neighbour.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .meta import DEFAULT_MEAN, DEFAULT_STD, ModelMeta, ResizeRule

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "input_size",
    "model_input",
    "normalize",
    "resize_masks",
    "resize_pixels",
    "scale_pixels",
    "scaled_size",
]


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The (height, width) an image of this size is resized to at `scale` (at least 1x1)."""
    return ResizeRule(scale=scale).output_size(height, width)


def input_size(height: int, width: int, meta: ModelMeta) -> tuple[int, int]:
    """The model-input (height, width) of an image of this size: the model's resize rule."""
    return meta.resize_rule.output_size(height, width)


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize float (N, C, H, W) images with antialiased bilinear interpolation; no-op at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def scale_pixels(pixels: torch.Tensor, scale: float) -> torch.Tensor:
    """uint8 (..., C, H, W) pixels scaled by `scale`, rounded back to uint8, on the pixels' device."""
    return resize_pixels(pixels, scaled_size(pixels.shape[-2], pixels.shape[-1], scale))


def resize_pixels(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (..., C, H, W) pixels resized to `size` as `scale_pixels` does (antialiased, rounded)."""
    size = (int(size[0]), int(size[1]))
    if tuple(pixels.shape[-2:]) == size:
        return pixels
    batch = pixels.reshape(-1, *pixels.shape[-3:]).float()
    out = resize_images(batch, size).round_().clamp_(0, 255).to(torch.uint8)
    return out.reshape(*pixels.shape[:-2], *size)


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
    """uint8 (..., 3, H, W) in [0, 255] -> normalized float tensor of `dtype`, on the images' device."""
    m, s = _pixel_stats(tuple(mean), tuple(std), images.device)
    return ((images.float() - m) / s).to(dtype)


def model_input(pixels: torch.Tensor, meta: ModelMeta, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (..., 3, H, W) pixels -> the model's input: resized by the model's rule, normalized by its
    mean/std."""
    size = input_size(pixels.shape[-2], pixels.shape[-1], meta)
    return normalize(resize_pixels(pixels, size), meta.mean, meta.std, dtype)


@functools.lru_cache(maxsize=16)
def _pixel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Mean and std in pixel units on `device`, made once: copying a constant to a GPU each call would make
    the host wait for the device's queue every time."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0
    return m.to(device), s.to(device)
