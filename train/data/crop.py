"""Training on patches: a random window of each sample, a share of them made to hold foreground.

Large images (Cityscapes' 2048x1024 at full resolution, whole-slide tiles, satellite scenes) do not fit a
useful batch whole; nnU-Net trains on patches, and a third of its patches are forced to contain a
foreground voxel (`oversample_foreground_percent` 0.33), because a polyp or a pole in a random window is
rare and the model would mostly learn background. `--crop HxW --fg-fraction P` does the same in model-input
pixels (after the resize rule, so `--scale 1` trains at full resolution): with probability P, for each
sample on its own (nnU-Net forces a share of each batch instead), the window holds a pixel of a foreground
class present in the sample, chosen class first (so rare classes are drawn as often as common ones), at a
uniform position in the window; otherwise the window is uniform over the sample. A sample smaller than the
window is padded: pixels 0, labels IGNORE_INDEX, so padding is never learned. Crops are taken before
augmentation, which then works on the window alone (its rotations and resized crops can move a small object
out again: about 1 window in 20 at P = 1). The window depends only on the sample's seed, so a resumed run
crops as the uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unetkit.core.labels import IGNORE_INDEX

#: nnU-Net's oversample_foreground_percent: the share of patches that hold foreground.
DEFAULT_FG_FRACTION = 0.33


def foreground_point(labels: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A random pixel of a random foreground class present in `labels`, or None when there is none.
    Foreground is every class but 0: a binary mask's 1, a multi-class mask's classes past the first
    (background in most data sets; Cityscapes' road, which needs no help to be seen)."""
    counts = np.bincount(labels.ravel(), minlength=IGNORE_INDEX + 1)  # uint8 labels: 3x faster than np.unique
    counts[0] = counts[IGNORE_INDEX] = 0
    classes = np.flatnonzero(counts)
    if not len(classes):
        return None
    ys, xs = np.nonzero(labels == classes[rng.integers(len(classes))])
    i = rng.integers(len(ys))
    return int(ys[i]), int(xs[i])


def window_start(length: int, window: int, point: int | None, rng: np.random.Generator) -> int:
    """First index of a `window` along a side of `length`: uniform over the positions that fit (0 when the side
    is shorter and is padded), and among those holding `point` when one is given."""
    last = max(length - window, 0)
    if point is None:
        return int(rng.integers(last + 1))
    low, high = max(point - window + 1, 0), min(point, last)
    return int(rng.integers(low, high + 1))


class Cropper:
    """Callable `(image (H, W, 3), labels (H, W), seed) -> (image, labels)` of the crop's size; picklable for
    DataLoader workers."""

    def __init__(self, size: tuple[int, int], fg_fraction: float) -> None:
        self.size, self.fg_fraction = size, fg_fraction

    def __call__(self, image: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        point = foreground_point(labels, rng) if rng.random() < self.fg_fraction else None
        (height, width), (ch, cw) = labels.shape, self.size
        top = window_start(height, ch, None if point is None else point[0], rng)
        left = window_start(width, cw, None if point is None else point[1], rng)
        out_image = np.zeros((ch, cw, 3), dtype=image.dtype)
        out_labels = np.full((ch, cw), IGNORE_INDEX, dtype=labels.dtype)
        h, w = min(ch, height - top), min(cw, width - left)
        out_image[:h, :w] = image[top : top + h, left : left + w]
        out_labels[:h, :w] = labels[top : top + h, left : left + w]
        return out_image, out_labels


def whole_image_batch(batch_size: int, crop: Sequence[int] | None, sizes: Sequence[tuple[int, int]]) -> int:
    """Images per batch when a run trained on crops scores whole images (validation, --eval): no more pixels
    than a training batch of crops, so what fit in memory for training fits for validation (at least 1)."""
    if not crop or not sizes:
        return batch_size
    largest = max(h * w for h, w in sizes)
    return max(1, min(batch_size, batch_size * crop[0] * crop[1] // largest))


#: How many training batches of crops one whole validation image may hold before it is worth a warning.
VALIDATION_RATIO = 4


def validation_note(batch_size: int, crop: Sequence[int], sizes: Sequence[tuple[int, int]]) -> str | None:
    """A line when one whole validation image holds several times the pixels of a training batch of crops: it
    is scored alone, and may not fit in memory where the crops did."""
    largest = max(sizes, key=lambda s: s[0] * s[1]) if sizes else (0, 0)
    ratio = largest[0] * largest[1] / (batch_size * crop[0] * crop[1])
    if ratio < VALIDATION_RATIO:
        return None
    return (f"validation scores whole images: the largest model input, {largest[0]}x{largest[1]}, holds {ratio:.1f} "
            f"times the pixels of a training batch of {batch_size} crops and is scored alone; if it does not fit in "
            "memory the run stops at its first validation (validation in tiles is not built yet)")  # fmt: skip


def crop_note(crop: Sequence[int], sizes: Sequence[tuple[int, int]], resize_flag: str = "--scale") -> str | None:
    """A line when --crop windows are mostly padding: larger than the model inputs they are cut from (made by
    the resize rule of `resize_flag`: --scale, --size or --max-side)."""
    ch, cw = crop
    share = sum(min(h, ch) * min(w, cw) for h, w in sizes) / (len(sizes) * ch * cw) if sizes else 1.0
    if share >= 0.9:
        return None
    largest = max(sizes, key=lambda s: s[0] * s[1])
    return (f"--crop {ch}x{cw} is larger than the model inputs (the largest is {largest[0]}x{largest[1]}): "
            f"{100 * share:.0f} % of each window is image, the rest padding that trains nothing; give a smaller "
            f"--crop, or a larger {resize_flag}")  # fmt: skip
