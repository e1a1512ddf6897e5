"""`unet-data score PRED --data DIR`: masks written by any engine (or any tool) scored against the ground truth.

Export verifies each file against PyTorch, and the benchmark compares engines with eager FP32; this scores what
a deployment actually wrote (an INT8 or OpenVINO run, a TensorRT engine on another machine) against the data
set's own masks, as nnU-Net's evaluate_folder does: per image tp, fp and fn at the original size, the pooled
Dice and IoU (what training validates), the mean per image (Kaggle's Carvana metric), precision and recall.

A prediction is found by its image's name: `<stem>.png` anywhere below PRED (unet-infer writes
`<out>/<relative path>.png`, and `.prob.png` maps beside them are left out). Binary predictions are 0/255 or
0/1; multi-class ones hold class ids (a `--palette` PNG's indices). Images without a prediction are named and
left out of the score; a prediction whose size or values do not fit its truth is a failure of that image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.core.errors import DataError, UnetkitError
from unetkit.core.imageio import binary_mask, class_id_mask, read_mask
from unetkit.core.labels import IGNORE_INDEX
from unetkit.core.metrics import ClassScores, class_scores, confusion_counts

from ..report import json_number
from .dataset import SampleRule, labels_of
from .layouts import DatasetIndex

SCHEMA = "unetkit.score/1"
#: Files unet-infer writes beside each mask that are not masks.
SIDECARS = (".prob.png",)
SHOW_WORST = 5


@dataclass
class ScoreReport:
    """Every scored image's counts, and what could not be scored."""

    data: str
    predictions: str
    n_classes: int
    class_names: list[str]
    images: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # (name, (K, 3) tp/fp/fn counts)
    missing: list[str] = field(default_factory=list)  # images without a prediction
    failures: list[tuple[str, str]] = field(default_factory=list)  # (prediction, why)

    @property
    def counts(self) -> torch.Tensor:
        """(K, 3) tp, fp, fn summed over the scored images."""
        return torch.stack([c for _, c in self.images]).sum(0)

    @property
    def pooled(self) -> ClassScores:
        return class_scores(self.counts, self.n_classes)

    def per_image(self) -> list[tuple[str, ClassScores]]:
        return [(name, class_scores(counts, self.n_classes)) for name, counts in self.images]

    def lines(self) -> list[str]:
        total = len(self.images) + len(self.missing) + len(self.failures)
        out = [f"{self.predictions} against {self.data}: {len(self.images)} of {total} images scored"]
        if self.images:
            pooled, scores = self.pooled, self.per_image()
            mean_dice, mean_iou = _mean([s.mean_dice for _, s in scores]), _mean([s.mean_iou for _, s in scores])
            out.append(f"  Dice {pooled.mean_dice:.4f}  IoU {pooled.mean_iou:.4f}  (pixels pooled);  per image: mean "
                       f"Dice {mean_dice:.4f}  IoU {mean_iou:.4f}")  # fmt: skip
            if self.n_classes == 1:
                precision, recall = _precision_recall(self.counts[0])
                out.append(f"  precision {precision:.4f}  recall {recall:.4f}")
            else:
                for name, d in zip(self.class_names, pooled.dice, strict=True):
                    out.append(f"  {name:<16} " + ("absent from the truth" if d is None else f"Dice {d:.4f}"))
            worst = sorted((x for x in scores if not math.isnan(x[1].mean_dice)), key=lambda x: x[1].mean_dice)
            out.append("  worst: " + ", ".join(f"{name} {s.mean_dice:.4f}" for name, s in worst[:SHOW_WORST]))
        if self.missing:
            out.append(f"  warning: {len(self.missing)} image(s) have no prediction, left out of the score (e.g. "
                       f"{self.missing[0]})")  # fmt: skip
        out += [f"  failed: {where}: {why}" for where, why in self.failures]
        return out

    def to_dict(self) -> dict[str, Any]:
        pooled = self.pooled if self.images else None
        return {
            "schema": SCHEMA,
            "data": self.data,
            "predictions": self.predictions,
            "classes": self.class_names,
            "scored": len(self.images),
            "dice": json_number(pooled.mean_dice) if pooled else None,
            "iou": json_number(pooled.mean_iou) if pooled else None,
            "per_class": {"dice": pooled.dice, "iou": pooled.iou} if pooled else None,
            "images": [
                {
                    "name": name,
                    "dice": json_number(s.mean_dice),
                    "iou": json_number(s.mean_iou),
                    "counts": counts.tolist(),
                }
                for (name, counts), (_, s) in zip(self.images, self.per_image(), strict=True)
            ],
            "missing": self.missing,
            "failed": [{"prediction": w, "reason": r} for w, r in self.failures],
        }


def _precision_recall(counts: torch.Tensor) -> tuple[float, float]:
    tp, fp, fn = (int(v) for v in counts)
    return (tp / (tp + fp) if tp + fp else 1.0), (tp / (tp + fn) if tp + fn else 1.0)


def find_predictions(folder: Path) -> dict[str, Path]:
    """Every mask below `folder` by its name without extension; two of one name are a DataError."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.png")):
        if path.name.startswith(".") or any(path.name.endswith(s) for s in SIDECARS):
            continue
        if path.stem in found:
            raise DataError(f"{folder}: two predictions named {path.stem}: {found[path.stem]} and {path}")
        found[path.stem] = path
    return found


def read_prediction(path: Path, n_classes: int) -> np.ndarray:
    """A written mask as labels: 0/255 or 0/1 for a binary model, class ids for a multi-class one (every pixel
    has one: 255, the truth's "no label", is no prediction)."""
    if n_classes == 1:
        return binary_mask(read_mask(path), path)
    labels = class_id_mask(read_mask(path, class_ids=True), path, n_classes)
    if (labels == IGNORE_INDEX).any():
        raise DataError(f"{path}: holds {IGNORE_INDEX}, which is no class: a prediction gives every pixel one of "
                        f"0-{n_classes - 1}")  # fmt: skip
    return labels


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]  # nan: a truth of ignored pixels only
    return sum(kept) / len(kept) if kept else math.nan


def score_folder(predictions: Path, index: DatasetIndex, rule: SampleRule) -> ScoreReport:
    """Each pair of `index` whose image has a prediction in `predictions`, counted at the original size."""
    if not predictions.is_dir():
        raise DataError(f"{predictions}: no such folder of predicted masks")
    found = find_predictions(predictions)
    truths = {p.mask.resolve() for p in index.pairs}
    own = next((path for path in found.values() if path.resolve() in truths), None)
    if own is not None:  # the data set's masks would score themselves: Dice 1.0 that measures nothing
        raise DataError(f"{predictions}: holds the data set's own masks (e.g. {own}); give the folder of predicted "
                        "masks (unet-infer writes <folder>_predictions)")  # fmt: skip
    report = ScoreReport(str(index.root), str(predictions), index.n_classes, list(index.class_names))
    for pair in index.pairs:
        name = pair.image.relative_to(index.root).as_posix()
        path = found.get(pair.image.stem)
        if path is None:
            report.missing.append(name)
            continue
        try:
            pred = read_prediction(path, index.n_classes)
            truth = labels_of(read_mask(pair.mask, class_ids=rule.mask_kind == "multiclass"), pair.mask, rule)
            if pred.shape != truth.shape:
                raise DataError(f"the prediction is {pred.shape[1]}x{pred.shape[0]}, its truth {pair.mask.name} "
                                f"{truth.shape[1]}x{truth.shape[0]}")  # fmt: skip
        except UnetkitError as exc:
            report.failures.append((str(path), str(exc).removeprefix(f"{path}: ")))
            continue
        counts = confusion_counts(torch.from_numpy(pred), torch.from_numpy(truth), index.n_classes)
        report.images.append((name, counts))
    if not report.images and not report.failures:
        raise DataError(f"{predictions}: holds no prediction for any of the {len(index.pairs)} images of "
                        f"{index.root} (predictions are <image name>.png)")  # fmt: skip
    return report
