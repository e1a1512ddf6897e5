"""Checking a data set before any work is spent on it: every pair decoded once, every problem named.

Used by `unet-data check` and at the start of `unet-train`, where the pass also fills the sample cache.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from unetkit.core.errors import DataError
from unetkit.core.imageio import CLASS_IDS_HINT, MASK_THRESHOLD_HINT, image_size
from unetkit.core.labels import IGNORE_INDEX
from unetkit.core.meta import ResizeRule

from .dataset import SampleCache, SampleRule, SegmentationDataset
from .layouts import BEYOND_TRAIN_ID_RANGE, LAYOUTS, DatasetIndex


@dataclass
class DataReport:
    """What a full pass over a data set found."""

    index: DatasetIndex
    rule: SampleRule
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> number of images, after the rule
    label_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    problems: list[str] = field(default_factory=list)
    input_sizes: list[tuple[int, int]] = field(default_factory=list)  # per pair: (height, width) after the rule

    def class_fractions(self) -> dict[str, float]:
        """Share of the labelled pixels that each class covers (background included for binary)."""
        names = ["background", *self.index.class_names] if self.index.mask_kind == "binary" else self.index.class_names
        counts = self.label_counts[: len(names)]
        total = max(int(counts.sum()), 1)
        return {name: float(c) / total for name, c in zip(names, counts, strict=True)}

    def empty_classes(self) -> str | None:
        """A warning naming the classes of a multi-class data set that no mask holds (a `--classes` count one
        too many, say): the model would learn a class it never sees."""
        if self.index.mask_kind != "multiclass" or not self.sizes:  # Cityscapes subsets may lack some classes
            return None
        empty = [f"{i} ({name})" for i, name in enumerate(self.index.class_names) if not self.label_counts[i]]
        if not empty or len(empty) == len(self.index.class_names):
            return None
        return f"no mask holds class {', '.join(empty)}: check --classes, or the masks"

    def ignored_fraction(self) -> float:
        total = max(int(self.label_counts.sum()), 1)
        return float(self.label_counts[IGNORE_INDEX]) / total

    def raise_if_problems(self, limit: int | None = None) -> None:
        """A DataError listing the problems (the first `limit`, then how many more and where to see them all:
        `unet-data check`, which lists every one)."""
        if self.problems:
            shown = self.problems if limit is None else self.problems[:limit]
            listing = "\n".join(f"  {p}" for p in shown)
            if len(shown) < len(self.problems):
                listing += f"\n  ... and {len(self.problems) - len(shown)} more (`unet-data check` lists them all)"
            stray = sum(MASK_THRESHOLD_HINT in p for p in self.problems)
            ids = [m.group(1) for p in self.problems if (m := CLASS_IDS_HINT.search(p))]
            remedy = f" ({stray} mask(s) with stray grey values: {MASK_THRESHOLD_HINT} binarises them)" if stray else ""
            if ids:
                flags = f"{named_folders(self.index.layout)}--classes {max(map(int, ids))}"
                remedy += f" ({len(ids)} mask(s) of class ids: {flags} reads them as classes)"
            raise DataError(
                f"{len(self.problems)} bad file(s) in {self.index.root}; fix or remove them{remedy}:\n{listing}"
            )


def named_folders(layout: str) -> str:
    """The --images/--masks flags that read a built-in binary layout's folders as named folders (where
    --classes applies), or '' for a named-folders data set."""
    if layout not in LAYOUTS or layout == "cityscapes":
        return ""
    images, masks = LAYOUTS[layout][0]
    suffix = " --mask-suffix _mask" if layout in ("carvana", "kaggle-carvana") else ""
    return f"--images {images} --masks {masks}{suffix} "


def inverted_size(index: DatasetIndex, resize: ResizeRule, sample: int = 20) -> str | None:
    """A warning when `--size HxW` turns every image on its side: sizes of images are written WxH (unet-data
    synth takes them so), and the same two numbers given to --size swap height and width. Decided from the
    first `sample` images' headers; None when any of them is square or has the size's orientation."""
    if resize.mode != "size" or resize.size is None or resize.size[0] == resize.size[1]:
        return None
    h, w = resize.size
    tall, seen = h > w, 0
    for pair in index.pairs[:sample]:
        try:
            iw, ih = image_size(pair.image)
        except DataError:
            continue
        if iw == ih or (ih > iw) == tall:
            return None
        seen += 1
    if not seen:
        return None
    shape = "wider than high" if tall else "higher than wide"
    return (f"--size {h}x{w} is HxW ({h} high, {w} wide), but the images are {shape}: every one is stretched on "
            f"its side; --size {w}x{h} keeps their shape")  # fmt: skip


def describe_unmatched(index: DatasetIndex, limit: int = 10) -> list[str]:
    """Human-readable lines naming images without a mask and masks without an image."""
    lines = []
    for what, files in (("image(s) without a mask", index.unmatched_images),
                        ("mask(s) without an image", index.unmatched_masks)):  # fmt: skip
        if files:
            shown = ", ".join(os.path.relpath(Path(f).absolute(), Path(index.root).absolute()) for f in files[:limit])
            more = f" and {len(files) - limit} more" if len(files) > limit else ""
            lines.append(f"{len(files)} {what}: {shown}{more}")
    return lines


def check_dataset(
    index: DatasetIndex,
    rule: SampleRule | None = None,
    cache: SampleCache | None = None,
    workers: int = 8,
    progress: bool = True,
) -> DataReport:
    """Decode every pair once (in threads) and collect sizes, class balance and problems; `rule` defaults to
    the images' own size and the layout's mask meaning."""
    rule = rule or SampleRule(ResizeRule(), index.mask_kind, n_classes=index.n_classes)
    dataset = SegmentationDataset(index.pairs, rule, cache=cache)
    report = DataReport(index, rule)

    def load(i: int) -> tuple[tuple[int, int], np.ndarray] | str:
        try:
            image, labels = dataset.load(i)
        except DataError as exc:
            return str(exc)
        return (image.shape[1], image.shape[0]), np.bincount(labels.ravel(), minlength=256)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(load, range(len(dataset)))
        for result in tqdm(results, total=len(dataset), desc="checking data", unit="img", disable=not progress):
            if isinstance(result, str):
                report.problems.append(result)
                report.input_sizes.append((0, 0))
            else:
                size, counts = result
                report.sizes[size] += 1
                report.label_counts += counts
                report.input_sizes.append((size[1], size[0]))
    if rule.mask_kind == "binary" and report.sizes and report.label_counts[1] == 0:
        report.problems.append(f"{index.root}: no mask has a foreground pixel, so there is nothing to learn (check "
                               "the masks' values, or the --mask-threshold given)")  # fmt: skip
    present = np.flatnonzero(report.label_counts[: index.n_classes])
    if rule.mask_kind == "multiclass" and report.sizes and len(present) < 2:
        only = f"only class {present[0]} ({index.class_names[present[0]]})" if len(present) else "no class"
        report.problems.append(f"{index.root}: the masks hold {only}, so there is nothing to tell apart (check "
                               "the masks' values and --classes)")  # fmt: skip
    if rule.mask_kind == "cityscapes" and report.sizes and not report.label_counts[list(BEYOND_TRAIN_ID_RANGE)].any():
        report.problems.append(f"{index.root}: no mask holds any of the labelIds 19-33 (traffic light to bicycle), "
                               "as masks of trainIds (0-18) do not; use the *_gtFine_labelIds.png files")  # fmt: skip
    return report
