"""Calibration data for INT8: real images through the checkpoint's own preprocessing, chosen by a seed.

Where the images come from, in order: `--calib DIR`; else the training data set recorded in the checkpoint
(`train_args.images` for a run on two named folders, without its masks where they share the folder; else
`train_args.data`), when it is on this machine; else synthetic cars (unetkit's own renderer), which is said.
A folder is read as core.sources reads one: a data set root works as well as a plain folder of images.

Each sample is one image's model input (resized by the model's rule, normalized by its mean/std), whole or one
square tile of it at a seeded position; the plan of (image, tile position) pairs is drawn once from the
seed, and images are read only when the calibrator asks for them, so memory stays flat and the same seed
gives the same samples in the same order.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unetkit.core.checkpoint import read_checkpoint
from unetkit.core.errors import UnetkitError
from unetkit.core.imageio import image_size, read_image
from unetkit.core.meta import ModelMeta
from unetkit.core.preprocess import input_size, model_input
from unetkit.core.sources import LAYOUT_IMAGE_DIRS, find_images, recorded_data, training_images
from unetkit.train.data.synth import random_car, render

DEFAULT_COUNT = 128
DEFAULT_TILE = 256
SYNTHETIC_HW = (1280, 1918)  # Carvana's size, as the verification's car image
log = logging.getLogger(__name__)


class CalibrationError(UnetkitError):
    """No usable calibration images, or settings that cannot give any."""


@dataclass(frozen=True)
class CalibrationSource:
    images: tuple[Path, ...]  # empty: synthetic cars
    description: str

    @property
    def synthetic(self) -> bool:
        return not self.images


@dataclass(frozen=True)
class CalibrationItem:
    index: int  # into the source's images, or the synthetic car's seed offset
    crop: tuple[float, float] | None  # relative (top, left) of the tile in [0, 1), None for the whole image


def calibration_source(calib: Path | None, meta: ModelMeta) -> CalibrationSource:
    """The images to calibrate on (see the module's docstring for the order); CalibrationError when `calib`
    is given and holds none."""
    if calib is not None:
        if not calib.is_dir():
            raise CalibrationError(f"--calib {calib}: not a folder")
        found = find_images(calib)
        if not found:
            looked = ", ".join([str(calib), *(str(calib / d) for d in LAYOUT_IMAGE_DIRS)])
            raise CalibrationError(f"--calib {calib}: no images found (looked in {looked})")
        images, problems = readable(found)
        if not images:
            raise CalibrationError(f"--calib {calib}: none of its {len(found)} images can be read ({problems[0]})")
        return CalibrationSource(tuple(images), f"{len(images)} images in {calib}")
    data = recorded_data(meta)
    if data:
        images, _ = readable(training_images(meta))
        if images:
            return CalibrationSource(tuple(images), f"the checkpoint's training data: {len(images)} images in {data}")
        why = f"the checkpoint's training data {data} is not on this machine (or holds no readable image)"
    else:
        why = "the checkpoint records no training data"
    return CalibrationSource((), f"synthetic cars ({why}; pass --calib DIR for real images)")


#: The train_args keys that say where a run's data is; `unet-train --resume --data NEW` may change them.
DATA_KEYS = ("data", "images", "masks", "cache")


def followed_data(checkpoint: Path, meta: ModelMeta) -> tuple[ModelMeta, str | None]:
    """`meta` with its data paths taken from the run's last.pth when the recorded data is gone and last.pth
    (same run folder, so the same run, resumed on the moved data) records where it went; with a line saying
    so. best.pth is not rewritten on resume (its digest names the artifacts exported from it), so until the
    next improvement it holds the old paths."""
    args = meta.extra.get("train_args")
    last = checkpoint.parent / "last.pth"
    if not isinstance(args, dict) or checkpoint.name == last.name or not last.is_file():
        return meta, None
    data = args.get("images") or args.get("data")
    if not data or Path(data).is_dir():
        return meta, None
    try:
        newer = read_checkpoint(last).meta.extra.get("train_args")
    except UnetkitError:
        return meta, None  # a damaged last.pth only loses the hint; the checkpoint itself is fine
    moved = (newer.get("images") or newer.get("data")) if isinstance(newer, dict) else None
    if not isinstance(newer, dict) or not moved or not Path(moved).is_dir() or moved == data:
        return meta, None
    changed = {**args, **{k: newer.get(k) for k in DATA_KEYS}}
    return meta.replace(train_args=changed), f"the run's data moved from {data} to {moved} (as {last} records)"


def readable(images: list[Path]) -> tuple[list[Path], list[str]]:
    """The images whose headers can be read, and a line per one that cannot (named once in a warning), so every
    planned sample is one that calibrates and the recorded count is the count used."""
    ok, problems = [], []
    for path in images:
        try:
            image_size(path)
        except UnetkitError as exc:
            problems.append(str(exc))
        else:
            ok.append(path)
    if problems and ok:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        log.warning("warning: calibration leaves out %s%s", problems[0], more)
    return ok, problems


def plan(source: CalibrationSource, count: int, tile: int, seed: int) -> list[CalibrationItem]:
    """`count` (image, tile position) pairs drawn from `seed`: distinct images first, then more tiles of them."""
    if count < 1:
        raise CalibrationError(f"--calib-count {count}: must be at least 1")
    if tile < 0:
        raise CalibrationError(f"--calib-tile {tile}: must be 0 (whole images) or a tile edge in pixels")
    rng = np.random.default_rng(seed)
    n = len(source.images) or count
    order = np.concatenate([rng.permutation(n) for _ in range(-(-count // n))])[:count]
    items = []
    for i in order:
        top, left = rng.random(2).tolist()
        items.append(CalibrationItem(int(i), (top, left) if tile else None))
    return items


def _pixels(source: CalibrationSource, index: int, seed: int) -> np.ndarray:
    if source.synthetic:
        rng = np.random.default_rng([seed, index])
        image, _ = render(random_car(rng), rng, SYNTHETIC_HW[1], SYNTHETIC_HW[0])
        return image
    return read_image(source.images[index])


def _crop(x: torch.Tensor, crop: tuple[float, float] | None, tile: int) -> torch.Tensor:
    """A tile x tile window of a (3, H, W) input at a relative position (the whole side where it is smaller)."""
    if crop is None:
        return x
    h, w = x.shape[-2:]
    th, tw = min(tile, h), min(tile, w)
    top, left = int(crop[0] * (h - th + 1)), int(crop[1] * (w - tw + 1))
    return x[:, top : top + th, left : left + tw]


def samples(
    source: CalibrationSource, meta: ModelMeta, items: list[CalibrationItem], tile: int, seed: int
) -> Iterator[np.ndarray]:
    """The model inputs (1, 3, h, w) float32 for `items`, computed one at a time; an unreadable image is named
    in a warning and skipped (the others still calibrate)."""
    for item in items:
        try:
            image = _pixels(source, item.index, seed)
        except UnetkitError as exc:
            log.warning("warning: calibration skips %s", exc)
            continue
        whole = model_input(torch.from_numpy(image).permute(2, 0, 1), meta)
        yield np.ascontiguousarray(_crop(whole, item.crop, tile)[None].numpy())


def whole_inputs(source: CalibrationSource, meta: ModelMeta, items: list[CalibrationItem], tile: int) -> Counter:
    """The model input sizes (W, H) of the planned samples that fit in one tile, so calibrate whole, with how
    many samples have each; read from the images' headers before calibrating (unreadable ones are left to
    `samples` to name)."""
    fits: Counter = Counter()
    if not tile:
        return fits
    for item in items:
        try:
            w, h = (SYNTHETIC_HW[1], SYNTHETIC_HW[0]) if source.synthetic else image_size(source.images[item.index])
        except UnetkitError:
            continue
        ih, iw = input_size(h, w, meta)
        if ih <= tile and iw <= tile:
            fits[(iw, ih)] += 1
    return fits


def whole_note(fits: Counter, count: int, tile: int) -> str:
    """The clause of the calibration line saying which samples are whole model inputs rather than tiles."""
    if not fits:
        return ""
    sizes = ", ".join(f"{w}x{h}" for (w, h), _ in fits.most_common(3)) + (" ..." if len(fits) > 3 else "")
    n = sum(fits.values())
    which = "all samples are" if n == count else f"{n} of {count} samples are"
    return f"; {which} whole model inputs ({sizes}), as they fit in a {tile} px tile"


def describe_plan(source: CalibrationSource, count: int, tile: int, seed: int) -> dict[str, object]:
    """What the INT8 file records about its calibration (written into its metadata)."""
    return {"source": source.description, "count": count, "tile": tile, "seed": seed, "method": "minmax"}
