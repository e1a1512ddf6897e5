"""Mask post-processing: connected components kept, dropped or filled after the threshold or argmax.

One car per Carvana photo, one organ per scan: a model's stray specks and pin-holes cost Dice that a rule
about the mask's shape wins back. nnU-Net decides on validation whether keeping only the largest component
helps; MONAI offers KeepLargestConnectedComponent, RemoveSmallObjects and FillHoles. Here they are
`unet-infer --keep-largest / --min-area N / --fill-holes`, applied to each mask at its original size, and
`unet-train --eval` reports what each would change on its images, so the choice is measured, not guessed.

Components are found on horizontal runs of pixels (a run-length labelling), in numpy alone: inference needs
neither OpenCV nor SciPy. Foreground is 8-connected (diagonal neighbours touch) and background 4-connected,
the pair that keeps a one-pixel diagonal line of foreground a wall between two holes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UnetkitError


@dataclass(frozen=True)
class Runs:
    """The horizontal runs of one nonzero value in a (H, W) label image, in row-major order: row, first
    column, the column after, and the value."""

    height: int
    width: int
    row: np.ndarray
    start: np.ndarray
    end: np.ndarray
    value: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray) -> Runs:
        h, w = labels.shape
        padded = np.zeros((h, w + 2), dtype=labels.dtype)
        padded[:, 1:-1] = labels
        rows, cols = np.nonzero(padded[:, 1:] != padded[:, :-1])  # where a new value begins (or 0 after the row)
        values = padded[rows, cols + 1]
        nonzero = np.flatnonzero(values)  # a run of a nonzero value ends at the row's next change, never past it
        return cls(h, w, rows[nonzero], cols[nonzero], cols[nonzero + 1], values[nonzero])

    def __len__(self) -> int:
        return len(self.row)

    def take(self, index: np.ndarray) -> Runs:
        return Runs(self.height, self.width, self.row[index], self.start[index], self.end[index], self.value[index])

    def touching_pairs(self, diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
        """(a, b): indices of runs in adjacent rows that touch (share a column, or a corner with `diagonal`)."""
        k = 1 if diagonal else 0
        stride = self.width + 2  # keys of one row never reach the next row's
        key_start, key_end = self.row * stride + self.start, self.row * stride + self.end
        above = (self.row - 1) * stride
        # Runs of the row above that b touches form one contiguous range [lo, hi): both keys increase.
        lo = np.searchsorted(key_end, above + self.start - k, side="right")
        hi = np.searchsorted(key_start, above + self.end + k, side="left")
        count = np.maximum(hi - lo, 0)
        b = np.repeat(np.arange(len(self)), count)
        offsets = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        return np.repeat(lo, count) + offsets, b

    def component_areas(self, diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
        """Each run's component (the smallest run index in it) and that component's area in pixels."""
        root = _roots(len(self), *self.touching_pairs(diagonal))
        return root, np.bincount(root, weights=self.end - self.start, minlength=len(self)).astype(np.int64)[root]

    def paint(self, keep: np.ndarray) -> np.ndarray:
        """bool (H, W) mask of the runs where `keep` is True."""
        step = np.zeros((self.height, self.width + 1), dtype=np.int8)
        step[self.row[keep], self.start[keep]] += 1  # starts are distinct, and so are ends; one run may end
        step[self.row[keep], self.end[keep]] -= 1  # where the next (of another value) starts
        return np.cumsum(step, axis=1, dtype=np.int8)[:, : self.width].astype(bool)


def _roots(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of n nodes joined by edges (a, b): each node's smallest member. Union by hooking
    roots to the smaller one, then pointer jumping; a few rounds for any real mask."""
    parent = np.arange(n)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        lo, hi = np.minimum(ra[differ], rb[differ]), np.maximum(ra[differ], rb[differ])
        np.minimum.at(parent, hi, lo)  # roots only: parent[x] <= x always, so no cycle can form
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def holes(mask: np.ndarray) -> np.ndarray:
    """bool (H, W): the 4-connected background of `mask` that does not reach the image's border."""
    runs = Runs.of((~mask.astype(bool)).astype(np.uint8))
    if not len(runs):
        return np.zeros(mask.shape, dtype=bool)
    root, _ = runs.component_areas(diagonal=False)
    edge = (runs.row == 0) | (runs.row == runs.height - 1) | (runs.start == 0) | (runs.end == runs.width)
    outside = np.zeros(len(runs), dtype=bool)
    outside[root[edge]] = True
    return runs.paint(~outside[root])


@dataclass(frozen=True)
class PostProcess:
    """Which post-processing a mask gets; the default does nothing. Each class but 0 is processed on its own
    and the pixels it loses become class 0, the background (so Cityscapes, whose class 0 is road, is refused);
    holes are filled in binary masks only (in a multi-class mask, whose class would fill one?). Steps run in
    the order keep-largest, min-area, fill-holes: with both of the first two, a class whose largest component is
    smaller than --min-area loses it too (a binary mask is then empty)."""

    keep_largest: bool = False
    min_area: int = 0  # pixels at the original size; components smaller go (0 and 1 keep every component)
    fill_holes: bool = False

    def __post_init__(self) -> None:
        for flag, value in (("--keep-largest", self.keep_largest), ("--fill-holes", self.fill_holes)):
            if not isinstance(value, bool):
                raise UnetkitError(f"{flag}: True or False, not {value!r}")
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, int) or self.min_area < 0:
            raise UnetkitError(f"--min-area {self.min_area}: must be 0 (keep every component) or more pixels")

    @property
    def active(self) -> bool:
        return self.keep_largest or self.min_area > 1 or self.fill_holes

    def flags(self) -> str:
        """The unet-infer flags that ask for this, e.g. '--keep-largest --fill-holes'."""
        parts = ["--keep-largest"] * self.keep_largest + [f"--min-area {self.min_area}"] * (self.min_area > 1)
        return " ".join(parts + ["--fill-holes"] * self.fill_holes)

    def record(self) -> dict[str, Any]:
        """The active steps, as an output folder's record keeps them (empty when none)."""
        out: dict[str, Any] = {"keep_largest": True} if self.keep_largest else {}
        out.update({"min_area": self.min_area} if self.min_area > 1 else {})
        return {**out, **({"fill_holes": True} if self.fill_holes else {})}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PostProcess:
        """The post-processing an output folder's record describes (unknown keys left out)."""
        return cls(**{k: record[k] for k in ("keep_largest", "min_area", "fill_holes") if k in record})

    def check(self, n_classes: int, mask_kind: str = "binary") -> None:
        """UnetkitError, before any work, where a step cannot apply to this model's masks."""
        if self.fill_holes and n_classes > 1:
            raise UnetkitError(f"--fill-holes fills binary masks; this model has {n_classes} classes, and a hole "
                               "among several would need a class to fill it with")  # fmt: skip
        if mask_kind == "cityscapes" and (self.keep_largest or self.min_area > 1):
            step = "--keep-largest" if self.keep_largest else "--min-area"
            raise UnetkitError(f"{step}: the pixels a class loses become class 0, which for this Cityscapes model "
                               "is road, not background")  # fmt: skip

    def apply(self, labels: np.ndarray, n_classes: int, mask_kind: str = "binary") -> np.ndarray:
        """(H, W) labels post-processed, as a new uint8 array; `labels` itself, untouched, when nothing is asked
        for. Checks the model's classes first (`check`), for callers that did not."""
        if not self.active:
            return labels
        self.check(n_classes, mask_kind)
        out = labels.astype(np.uint8)  # a copy
        if self.keep_largest or self.min_area > 1:
            runs = Runs.of(labels)
            keep = np.ones(len(runs), dtype=bool)
            for c in np.unique(runs.value):
                index = np.flatnonzero(runs.value == c)
                root, area = runs.take(index).component_areas(diagonal=True)
                if self.keep_largest:  # the first in row-major order on a tie
                    keep[index] &= root == root[np.flatnonzero(area == area.max())[0]]
                keep[index] &= area >= self.min_area
            if not keep.all():
                out[runs.paint(~keep)] = 0
        if self.fill_holes:
            out[holes(out > 0)] = 1
        return out


def candidates(n_classes: int, mask_kind: str = "binary") -> tuple[PostProcess, ...]:
    """The post-processing `unet-train --eval` measures: keep-largest, and for binary masks fill-holes alone
    and after it (--min-area needs a size only the user knows); none for Cityscapes (see `PostProcess`)."""
    if mask_kind == "cityscapes":
        return ()
    if n_classes > 1:
        return (PostProcess(keep_largest=True),)
    return (PostProcess(keep_largest=True), PostProcess(fill_holes=True), PostProcess(True, 0, True))
