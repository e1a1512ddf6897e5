"""A picture of the worst images of an evaluation: image, truth, prediction and where they differ.

One row per image, four panels at the same scale: the image, the truth, the prediction, and the differences
(binary: white where both say foreground, orange where only the prediction does, blue where only the truth
does; multi-class: the image dimmed where the class is right, magenta where it is wrong; ignored pixels are
white, a colour no class takes). Orange and blue stay apart for colour-blind readers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from unetkit.core.atomic import atomic_path
from unetkit.core.labels import IGNORE_INDEX, IGNORED_COLOR, palette

PANEL_WIDTH = 320
HEADER = 16
BOTH, PRED_ONLY, TRUTH_ONLY, WRONG, IGNORED = (
    (255, 255, 255),
    (230, 159, 0),
    (86, 180, 233),
    (204, 0, 204),
    (128, 128, 128),
)
LEGEND = {
    "binary": "image | truth | prediction | white: both, orange: predicted only (FP), blue: missed (FN)",
    "multiclass": "image | truth | prediction | magenta: wrong class, white: ignored",
}


@dataclass
class WorstRow:
    name: str
    dice: float
    image: np.ndarray  # (H, W, 3) uint8
    truth: np.ndarray  # (H, W) uint8 labels, IGNORE_INDEX where unlabelled
    pred: np.ndarray  # (H, W) uint8 labels


def difference(truth: np.ndarray, pred: np.ndarray, image: np.ndarray, n_classes: int) -> np.ndarray:
    """(H, W, 3) uint8 picture of where `pred` and `truth` agree and differ."""
    ignored = truth == IGNORE_INDEX
    if n_classes == 1:
        out = (image.astype(np.float32) * 0.3).astype(np.uint8)
        out[(truth == 1) & (pred == 1)] = BOTH
        out[(truth == 0) & (pred == 1)] = PRED_ONLY
        out[(truth == 1) & (pred == 0)] = TRUTH_ONLY
    else:
        out = (image.astype(np.float32) * 0.4).astype(np.uint8)
        out[(truth != pred) & ~ignored] = WRONG
    out[ignored] = IGNORED if n_classes == 1 else IGNORED_COLOR
    return out


def _panel(picture: np.ndarray, nearest: bool) -> Image.Image:
    img = Image.fromarray(picture)
    height = max(1, round(img.height * PANEL_WIDTH / img.width))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return img.resize((PANEL_WIDTH, height), resample)


def draw_worst(rows: list[WorstRow], n_classes: int, mask_kind: str) -> Image.Image:
    """The picture: a legend line, then per row a caption (name, Dice) and its four panels."""
    colors = palette(n_classes, mask_kind)
    strips = []
    for row in rows:
        panels = [
            _panel(row.image, nearest=False),
            _panel(colors[row.truth], nearest=True),
            _panel(colors[row.pred], nearest=True),
            _panel(difference(row.truth, row.pred, row.image, n_classes), nearest=True),
        ]
        height = panels[0].height
        strip = Image.new("RGB", (4 * PANEL_WIDTH + 6, height + HEADER), (32, 32, 32))
        ImageDraw.Draw(strip).text((4, 2), f"{row.name}   Dice {row.dice:.4f}", fill=(255, 255, 255))
        for i, panel in enumerate(panels):
            strip.paste(panel, (i * (PANEL_WIDTH + 2), HEADER))
        strips.append(strip)
    width = 4 * PANEL_WIDTH + 6
    out = Image.new("RGB", (width, HEADER + sum(s.height for s in strips)), (32, 32, 32))
    legend = LEGEND["binary" if n_classes == 1 else "multiclass"]
    ImageDraw.Draw(out).text((4, 2), legend, fill=(255, 255, 255))
    y = HEADER
    for strip in strips:
        out.paste(strip, (0, y))
        y += strip.height
    return out


def write_worst(path: str | os.PathLike, rows: list[WorstRow], n_classes: int, mask_kind: str) -> None:
    """Draw and write the picture as PNG, atomically."""
    picture = draw_worst(rows, n_classes, mask_kind)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
