"""The TensorRT optimization profile: parsing --batch and --shape, and the defaults.

Shapes are model-input sizes (after the checkpoint's resize rule). The defaults cover whole-image inference of
a 1918x1280 image by the checkpoint's rule (the shape TensorRT tunes for), images of any aspect for a
longest-side rule, and the tile unet-infer suggests for --tile (DEFAULT_TILE; it predicts whole images unless
given one).
"""

from __future__ import annotations

from unetkit.core.cli import parse_pair
from unetkit.core.errors import UnetkitError
from unetkit.core.meta import ModelMeta
from unetkit.core.model import DOWNSAMPLE
from unetkit.core.preprocess import input_size
from unetkit.infer.engines import ShapeRange
from unetkit.infer.tiling import DEFAULT_TILE

CARVANA_HW = (1280, 1918)
DEFAULT_BATCH = (1, 8, 8)
MIN_SIDE = 32


def parse_batch(text: str) -> tuple[int, int, int]:
    """'8' -> (1, 8, 8); '1:4:8' -> (1, 4, 8)."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise UnetkitError(f"--batch '{text}': expected N or MIN:OPT:MAX, e.g. 1:8:8") from None
    if len(parts) == 1:
        parts = [1, parts[0], parts[0]]
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise UnetkitError(f"--batch '{text}': expected N or MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX")
    return parts[0], parts[1], parts[2]


def _hw(text: str, whole: str) -> tuple[int, int]:
    try:
        return parse_pair(text)
    except ValueError:
        raise UnetkitError(f"--shape '{whole}': expected positive HxW or MIN:OPT:MAX, e.g. 640x959") from None


def parse_shape(text: str) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """'640x959' -> that size only; '256x256:640x959:1280x1920' -> (min, opt, max) heights and widths."""
    parts = [_hw(p, text) for p in text.split(":")]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise UnetkitError(f"--shape '{text}': expected HxW or MIN:OPT:MAX")
    lo, opt, hi = parts
    if not all(lo[i] <= opt[i] <= hi[i] for i in (0, 1)):
        raise UnetkitError(f"--shape '{text}': need MIN <= OPT <= MAX in both height and width")
    return lo, opt, hi


def default_shape(meta: ModelMeta) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Tuned for a whole 1918x1280 image by the checkpoint's resize rule; wide enough for the default tile.

    A fixed-size model takes that size, a longest-side model takes any aspect (up to the side squared)."""
    opt = input_size(*CARVANA_HW, meta)
    rule = meta.resize_rule
    top = (rule.max_side, rule.max_side) if rule.mode == "max_side" and rule.max_side else opt
    hi = (max(_round_up(top[0]), DEFAULT_TILE), max(_round_up(top[1]), DEFAULT_TILE))
    return (MIN_SIDE, MIN_SIDE), opt, hi


def _round_up(value: int) -> int:
    """Up to the model's padding multiple, so an image a pixel larger than 1918 wide still fits."""
    return -(-value // DOWNSAMPLE) * DOWNSAMPLE


def make_profile(
    batch: tuple[int, int, int], shape: tuple[tuple[int, int], tuple[int, int], tuple[int, int]], channels: int = 3
) -> ShapeRange:
    (h0, w0), (h1, w1), (h2, w2) = shape
    return ShapeRange((batch[0], channels, h0, w0), (batch[1], channels, h1, w1), (batch[2], channels, h2, w2))
