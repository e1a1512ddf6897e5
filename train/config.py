"""The settings of one training run, resolved once from the command line and stored in checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from unetkit.core.cli import DEFAULT_WORKERS
from unetkit.core.errors import UnetkitError
from unetkit.core.meta import DEFAULT_MEAN, DEFAULT_STD, ResizeRule

from .data.layouts import FolderSpec

#: Settings a resumed run may change; every other one comes from last.pth so the run stays the same run.
RESUME_OVERRIDES = ("epochs", "device", "workers", "cache", "progress", "max_minutes")


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    out: Path
    layout: str = "auto"
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    scale: float = 0.5
    base_channels: int = 64
    bilinear: bool = False
    loss: str | None = None  # None: bce+dice for binary, ce+dice for multi-class
    device: str = "auto"
    workers: int = DEFAULT_WORKERS
    seed: int = 0
    val_fraction: float = 0.2
    augment: bool = True
    cache: Path | None = None
    amp: bool = True
    patience: int = 5  # early stopping, in epochs without a better validation Dice
    lr_patience: int = 3  # ReduceLROnPlateau
    threshold: float = 0.5
    max_minutes: float | None = None  # stop once this much time has passed: the epoch in progress is cut short
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    progress: bool = True
    group_by: str = "auto"  # split groups: auto, none, or a pattern whose first group is the key
    size: tuple[int, int] | None = None  # fixed model-input (height, width) instead of --scale
    max_side: int | None = None  # longest model-input side, aspect kept, instead of --scale
    mask_threshold: int | None = None  # binarise lossless masks with stray values at this value
    images: Path | None = None  # a data set in two named folders (layout "folders")
    masks: Path | None = None
    image_suffix: str = ""
    mask_suffix: str = ""
    mask_ext: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks = {
            "--epochs must be at least 1": self.epochs >= 1,
            "--batch-size must be at least 1": self.batch_size >= 1,
            "--lr must be positive": self.lr > 0,
            "--scale must be in (0, 1]": 0 < self.scale <= 1,
            "--base-channels must be at least 1": self.base_channels >= 1,
            "--workers must be 0 or more": self.workers >= 0,
            "--val-fraction must be in (0, 1)": 0 < self.val_fraction < 1,
            "--patience must be at least 1": self.patience >= 1,
            "--threshold must be in (0, 1)": 0 < self.threshold < 1,
            "--max-minutes must be positive": self.max_minutes is None or self.max_minutes > 0,
            "--size and --max-side are two rules: give one": self.size is None or self.max_side is None,
            "--size needs a positive HEIGHTxWIDTH": self.size is None or min(self.size) >= 1,
            "--max-side must be at least 1": self.max_side is None or self.max_side >= 1,
            "--mask-threshold must be in 1..255": self.mask_threshold is None or 1 <= self.mask_threshold <= 255,
            "--images and --masks go together": (self.images is None) == (self.masks is None),
            "--image-suffix, --mask-suffix and --mask-ext need --images and --masks": self.images is not None
            or not (self.image_suffix or self.mask_suffix or self.mask_ext),
        }
        for message, ok in checks.items():
            if not ok:
                raise UnetkitError(message)

    @property
    def resize_rule(self) -> ResizeRule:
        """How images become model inputs: --size, else --max-side, else --scale."""
        if self.size is not None:
            return ResizeRule("size", size=self.size)
        if self.max_side is not None:
            return ResizeRule("max_side", max_side=self.max_side)
        return ResizeRule("scale", scale=self.scale)

    @property
    def folders(self) -> FolderSpec | None:
        """The two named folders of a data set given by --images and --masks, else None."""
        if self.images is None or self.masks is None:
            return None
        return FolderSpec(self.images, self.masks, self.image_suffix, self.mask_suffix, self.mask_ext)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the dict can live in a weights_only checkpoint."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        kwargs.setdefault("group_by", "none")  # runs recorded before group-aware splits split per image
        for key in ("data", "out", "cache", "images", "masks"):
            if kwargs.get(key) is not None:
                kwargs[key] = Path(kwargs[key])
        for key in ("mean", "std", "size", "mask_ext"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)
