"""An evaluation's numbers: per image, per group and per class, pooled, the worst images, as text and JSON.

Everything here is arithmetic on confusion counts (`core.metrics`), so each figure can be checked by hand:
- pooled Dice/IoU sum every image's pixels before dividing (what training validates and `best.pth` keeps);
- an image's or a group's Dice is its own pixels' (for multi-class, the mean over the classes its truth
  contains); the mean per image is Kaggle's Carvana metric;
- the worst images are the lowest per-image Dice;
- each post-processing (`core.postprocess.candidates`) is scored on the same images, pooled, beside the plain
  masks, so the change it makes is a difference of two numbers from one run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unetkit.core.metrics import ClassScores, class_scores

SCHEMA = "unetkit.eval/1"
SHOW_WORST = 5


@dataclass
class ImageScore:
    """One image's pixels, counted at its original size."""

    name: str  # path relative to the data folder
    group: str
    height: int
    width: int
    counts: torch.Tensor  # (K, 3) tp, fp, fn per scored class
    post: dict[str, torch.Tensor] = field(default_factory=dict)  # the counts after each post-processing, by flags

    def scores(self, n_classes: int) -> ClassScores:
        return class_scores(self.counts, n_classes)


def json_number(value: float | None) -> float | None:
    """JSON has no NaN: a score with nothing to score is null."""
    return None if value is None or math.isnan(value) else round(float(value), 6)


@dataclass
class EvalReport:
    """What `unet-train --eval` and the end of training report about a checkpoint on a set of images."""

    checkpoint: str
    data: str
    split: str
    class_names: list[str]
    n_classes: int
    grouping: str  # the group rule, in words
    resize: str  # the checkpoint's resize rule, in words
    images: list[ImageScore]
    model_size: ClassScores  # pooled at the model's input size: what training validated
    loss: float
    recorded_dice: float | None = None  # the checkpoint's own validation Dice, from training
    recorded_epoch: int | None = None
    picture: Path | None = None
    worst_shown: list[str] = field(default_factory=list)
    tta: bool = False  # predictions averaged with the mirrored image's (unet-infer --tta)

    @property
    def pooled(self) -> ClassScores:
        """Every image's pixels at the original size, summed, then divided once."""
        return self._pooled([s.counts for s in self.images])

    def _pooled(self, counts: list[torch.Tensor]) -> ClassScores:
        return class_scores(sum(counts, torch.zeros_like(self.images[0].counts)), self.n_classes)

    def per_image(self) -> list[tuple[ImageScore, float, float]]:
        """(image, Dice, IoU) in the evaluation's order; NaN where an image's truth has no scored class."""
        out = []
        for s in self.images:
            scores = s.scores(self.n_classes)
            out.append((s, scores.mean_dice, scores.mean_iou))
        return out

    def mean_image(self) -> tuple[float, float]:
        """Mean of the per-image Dice and IoU (images with nothing to score left out)."""
        rows = self.per_image()
        return _finite_mean([d for _, d, _ in rows]), _finite_mean([i for _, d, i in rows if not math.isnan(d)])

    def postprocessing(self) -> list[tuple[str, float, float]]:
        """(unet-infer flags, pooled Dice, mean per-image Dice) of each post-processing scored."""
        out = []
        for flags in self.images[0].post if self.images else {}:
            per_image = [class_scores(s.post[flags], self.n_classes).mean_dice for s in self.images]
            out.append((flags, self._pooled([s.post[flags] for s in self.images]).mean_dice, _finite_mean(per_image)))
        return out

    def per_group(self) -> list[tuple[str, int, float, float]]:
        """(group, images, Dice, IoU) with each group's pixels pooled, worst group first."""
        counts: dict[str, torch.Tensor] = {}
        sizes: dict[str, int] = {}
        for s in self.images:
            counts[s.group] = counts.get(s.group, torch.zeros_like(s.counts)) + s.counts
            sizes[s.group] = sizes.get(s.group, 0) + 1
        rows = []
        for group, c in counts.items():
            scores = class_scores(c, self.n_classes)
            rows.append((group, sizes[group], scores.mean_dice, scores.mean_iou))
        return sorted(rows, key=lambda r: (_sort_key(r[2]), r[0]))

    def worst(self, n: int) -> list[tuple[ImageScore, float, float]]:
        """The `n` images with the lowest Dice (images with nothing to score last)."""
        return sorted(self.per_image(), key=lambda r: (_sort_key(r[1]), r[0].name))[:n]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`--json`): stable keys, schema unetkit.eval/1."""
        pooled = self.pooled
        mean_dice, mean_iou = self.mean_image()
        return {
            "schema": SCHEMA,
            "checkpoint": self.checkpoint,
            "data": self.data,
            "split": self.split,
            "images": len(self.images),
            "groups": len({s.group for s in self.images}),
            "grouping": self.grouping,
            "resize": self.resize,
            "scored_at": "original image size",
            "tta": self.tta,
            "dice": json_number(pooled.mean_dice),
            "iou": json_number(pooled.mean_iou),
            "mean_image_dice": json_number(mean_dice),
            "mean_image_iou": json_number(mean_iou),
            "model_size": {
                "dice": json_number(self.model_size.mean_dice),
                "iou": json_number(self.model_size.mean_iou),
                "loss": json_number(self.loss),
            },
            "recorded_val_dice": json_number(self.recorded_dice),
            "recorded_epoch": self.recorded_epoch,
            "per_class": [
                {
                    "name": name,
                    "present": d is not None,
                    "dice": json_number(d),
                    "iou": json_number(i),
                    "stray_pixels": stray,
                }
                for name, d, i, stray in zip(
                    self._class_names(), pooled.dice, pooled.iou, pooled.stray_pixels, strict=True
                )
            ],
            "absent_classes": [self._class_names()[i] for i in pooled.absent],
            "per_image": [
                {
                    "image": s.name,
                    "group": s.group,
                    "height": s.height,
                    "width": s.width,
                    "dice": json_number(d),
                    "iou": json_number(i),
                }
                for s, d, i in self.per_image()
            ],
            "per_group": [
                {"group": g, "images": n, "dice": json_number(d), "iou": json_number(i)}
                for g, n, d, i in self.per_group()
            ],
            "postprocessing": [
                {
                    "flags": flags,
                    "dice": json_number(d),
                    "mean_image_dice": json_number(m),
                    "dice_change": json_number(d - pooled.mean_dice),
                    "mean_image_dice_change": json_number(m - mean_dice),
                }
                for flags, d, m in self.postprocessing()
            ],
            "worst": [s.name for s, _, _ in self.worst(SHOW_WORST)],
            "picture": str(self.picture) if self.picture else None,
        }

    def _class_names(self) -> list[str]:
        return list(self.class_names) if self.n_classes > 1 else list(self.class_names[:1] or ["foreground"])

    def lines(self) -> list[str]:
        """The terminal summary."""
        pooled = self.pooled
        mean_dice, mean_iou = self.mean_image()
        groups = len({s.group for s in self.images})
        recorded = ""
        if self.recorded_dice is not None:
            recorded = f"  (the checkpoint's validation Dice: {self.recorded_dice:.4f} at epoch {self.recorded_epoch})"
        out = [
            f"{self.checkpoint} on {self.data} ({self.split}, {len(self.images)} images in {groups} group(s), "
            f"{self.grouping}; model input by {self.resize}{'; mirrored TTA' if self.tta else ''}):",
            f"  original size:    Dice {pooled.mean_dice:.4f}  IoU {pooled.mean_iou:.4f}  (pixels pooled);  "
            f"per image: mean Dice {mean_dice:.4f}  IoU {mean_iou:.4f}",
            f"  model input size: Dice {self.model_size.mean_dice:.4f}  IoU {self.model_size.mean_iou:.4f}  "
            f"loss {self.loss:.4f}{' (of the plain prediction)' if self.tta else ''}{recorded}",
        ]
        if self.n_classes > 1:
            names = self._class_names()
            for name, d, i, stray in zip(names, pooled.dice, pooled.iou, pooled.stray_pixels, strict=True):
                if d is None or i is None:
                    note = f"; {stray} pixel(s) predicted as it" if stray else ""
                    out.append(f"  {name:<16} absent from the truth (left out of the mean{note})")
                else:
                    out.append(f"  {name:<16} Dice {d:.4f}  IoU {i:.4f}")
        if groups > 1 and groups < len(self.images):
            shown = ", ".join(f"{g} {d:.4f} ({n})" for g, n, d, _ in self.per_group()[:SHOW_WORST])
            out.append(f"  worst groups (Dice, images): {shown}")
        post = self.postprocessing()
        if post:
            out.append("  post-processing (unet-infer flags): Dice pooled, per image (change)")
            width = max(len(flags) for flags, _, _ in post)
            out += [f"    {flags:<{width}}  {d:.4f} ({_change(d, pooled.mean_dice)})  {m:.4f} ({_change(m, mean_dice)})"
                    for flags, d, m in post]  # fmt: skip
        shown = ", ".join(f"{s.name} {d:.4f}" for s, d, _ in self.worst(SHOW_WORST))
        out.append(f"  worst images (Dice): {shown}")
        if self.picture is not None:
            out.append(f"  picture of the worst {len(self.worst_shown)}: {self.picture}")
        return out


def _finite_mean(values: list[float]) -> float:
    """The mean of the values that are not NaN (an image with nothing to score), NaN when none is."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _change(after: float, before: float) -> str:
    """A change to 4 decimals, signed, with no '-0.0000' for a loss too small to show."""
    return f"{round(after - before, 4) + 0.0:+.4f}"


def _sort_key(value: float) -> float:
    return math.inf if math.isnan(value) else value
