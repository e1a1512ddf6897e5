"""Tiling arithmetic for sliding-window prediction: pure functions on sizes and weights.

Tiles are spread evenly so the first starts at 0 and the last ends exactly at the edge, as nnU-Net places
them (MONAI instead steps by a fixed stride and moves only the last window back to the edge); the requested
overlap is a minimum. Blending weighs each tile's probabilities with a
gaussian (more weight to a tile's centre, where the network sees context on every side) or constant weight,
and the result is normalized by the summed weights, as MONAI's sliding window does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from unetkit.core.model import MIN_SIDE

#: The tile edge (model-input pixels) unet-infer suggests for `--tile` (it predicts whole images unless given
#: one); export's default TensorRT profile covers it.
DEFAULT_TILE = 512
#: The smallest tile (core.model.MIN_SIDE); smaller ones would also cost far more calls.
MIN_TILE = MIN_SIDE
BLEND_MODES = ("gaussian", "constant")
#: Gaussian sigma as a fraction of the tile size (MONAI's default) and the floor that keeps weights positive.
SIGMA_SCALE = 0.125
MIN_WEIGHT = 1e-3


def default_overlap(tile: int) -> int:
    return tile // 4


def max_overlap(tile: int) -> int:
    """At most half a tile: each pixel is then predicted at most 4 times (an overlap near the tile would
    multiply the tiles without bound)."""
    return tile // 2


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size) with at least `overlap` shared pixels.

    A size no larger than the tile gets one tile at 0 (the caller pads the image up to the tile).
    """
    if tile < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / (tile - overlap)) + 1
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def oversized_tile_note(sizes: Sequence[tuple[int, int]], tile: int) -> str:
    """What to say when --tile exceeds every image's model input (height, width): each image then runs as one
    tile padded up to tile x tile, computing mostly padding; '' when some image needs several tiles."""
    if not sizes or tile <= max(max(hw) for hw in sizes):
        return ""
    h, w = max(hw[0] for hw in sizes), max(hw[1] for hw in sizes)
    share = max(a * b for a, b in sizes) / tile**2
    return (f"--tile {tile} is larger than every image's model input (at most {w} wide, {h} high): each runs as "
            f"one tile padded to {tile}x{tile}, {share:.0%} of it image at best; leave out --tile (whole images) or "
            "give a smaller one")  # fmt: skip


def small_tile_note(tile: int, crop: Sequence[int] | None) -> str:
    """What to say when --tile is smaller than the windows the model trained on (unet-train --crop): each tile
    sees less context than training gave it; '' otherwise."""
    if not tile or not crop or tile >= max(crop):
        return ""
    return (f"--tile {tile} is smaller than the {crop[0]}x{crop[1]} windows the model trained on (--crop): each tile "
            f"sees less context than training gave it; give --tile {max(crop)} or more, or leave it out")  # fmt: skip


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(y, x) of every tile, row by row."""
    return [(y, x) for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)]


@functools.lru_cache(maxsize=8)
def blend_weights(tile: int, mode: str = "gaussian", device: torch.device | str = "cpu") -> torch.Tensor:
    """(tile, tile) float32 weights, all positive, largest 1; made once per device (no copy per batch)."""
    if mode == "constant":
        return torch.ones(tile, tile, device=device)
    if mode != "gaussian":
        raise ValueError(f"blend mode '{mode}' is not one of {', '.join(BLEND_MODES)}")
    centre = (tile - 1) / 2
    sigma = SIGMA_SCALE * tile
    g = torch.exp(-((torch.arange(tile, dtype=torch.float64) - centre) ** 2) / (2 * sigma**2))
    w = torch.outer(g, g)
    return (w / w.max()).clamp(min=MIN_WEIGHT).float().to(device)
