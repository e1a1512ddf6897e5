"""The settings of one training run, resolved once from the command line and stored in checkpoints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from unetkit.core.cli import DEFAULT_WORKERS
from unetkit.core.distributed import DEFAULT_TIMEOUT_MINUTES
from unetkit.core.errors import UnetkitError
from unetkit.core.meta import DEFAULT_MEAN, DEFAULT_STD, RECIPE_SCALE, ResizeRule
from unetkit.core.model import MIN_SIDE

from .data.crop import DEFAULT_FG_FRACTION
from .data.layouts import FolderSpec

#: Settings a resumed run may change; every other one comes from last.pth so the run stays the same run.
RESUME_OVERRIDES = ("epochs", "device", "workers", "cache", "progress", "max_minutes", "sync_bn", "dist_timeout")
#: What makes a folder hold a run: a new run never writes into one (it would overwrite or truncate them).
RUN_FILES = ("best.pth", "last.pth", "history.jsonl", "tb")
#: The run's data paths, which --resume may point elsewhere when they no longer exist (`moved`).
MOVABLE = ("data", "images", "masks")
#: Flags whose presence sets a setting to a fixed value (store_true / store_false).
SWITCHES = {
    "bilinear": "--bilinear", "attention": "--attention", "deep_supervision": "--deep-supervision",
    "augment": "--no-augment", "amp": "--no-amp", "progress": "--no-progress", "deterministic": "--deterministic",
}  # fmt: skip

#: --monitor: the validation figure that picks best.pth, lowers the learning rate and stops the run early.
MONITORS = ("dice", "loss")

#: --optimizer, and --weight-decay when not given: none for Adam (the seed's recipe), PyTorch's AdamW default,
#: nnU-Net's SGD value (train/optim.py builds them).
DEFAULT_WEIGHT_DECAY = {"adam": 0.0, "adamw": 1e-2, "sgd": 3e-5}
OPTIMIZERS = tuple(DEFAULT_WEIGHT_DECAY)
#: --schedule: ReduceLROnPlateau between epochs (the seed's), or a rate falling every step towards --epochs.
SCHEDULES = ("plateau", "poly", "cosine")
#: Schedules that fall with the run's progress towards --epochs: a resumed run cannot change --epochs under them.
STEP_SCHEDULES = ("poly", "cosine")

#: Settings given as HEIGHTxWIDTH on the command line.
HW_FLAGS = ("size", "crop")
#: The smallest --crop side (core.model.MIN_SIDE).
MIN_CROP = MIN_SIDE

#: --sync-bn: under torchrun, SyncBatchNorm on CUDA with more than one process (auto), always (on), never (off).
SYNC_BN_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    out: Path
    layout: str = "auto"
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    optimizer: str = "adam"  # OPTIMIZERS
    weight_decay: float | None = None  # None: the optimizer's default (DEFAULT_WEIGHT_DECAY), set on creation
    schedule: str = "plateau"  # SCHEDULES: ReduceLROnPlateau (the seed's), or poly / cosine over --epochs
    warmup_epochs: float = 0.0  # linear warmup of the learning rate over the first epochs
    accumulate: int = 1  # batches whose gradients are summed into one optimizer step
    clip_grad: float | None = None  # clip the gradients' global norm to this before each step
    ema: float | None = None  # decay of an exponential moving average of the weights, which is validated and saved
    scale: float = RECIPE_SCALE
    base_channels: int = 64
    bilinear: bool = False
    attention: bool = False  # attention gates on the skip connections
    deep_supervision: bool = False  # the decoder's 1/2, 1/4 and 1/8 levels also scored by the loss
    loss: str | None = None  # None: bce+dice for binary, ce+dice for multi-class
    pos_weight: float = 1.0  # binary: weight of the foreground pixels' cross-entropy term
    class_weights: tuple[float, ...] = ()  # multi-class: cross-entropy weight per class (empty: all 1)
    device: str = "auto"
    workers: int = DEFAULT_WORKERS
    seed: int = 0
    val_fraction: float = 0.2
    folds: int | None = None  # k-fold cross-validation: the groups dealt into this many folds ...
    fold: int = 0  # ... of which this one validates
    augment: bool = True
    cache: Path | None = None
    amp: bool = True
    deterministic: bool = False  # deterministic kernels only (cuDNN without benchmarking): slower, repeatable on CUDA
    patience: int = 5  # early stopping, in epochs without a better monitored validation figure
    lr_patience: int = 3  # ReduceLROnPlateau: epochs without a better one before the learning rate drops 10x
    monitor: str = "dice"  # MONITORS
    threshold: float = 0.5
    max_minutes: float | None = None  # stop once this much time has passed: the epoch in progress is cut short
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    progress: bool = True
    group_by: str = "auto"  # split groups: auto, none, or a pattern whose first group is the key
    size: tuple[int, int] | None = None  # fixed model-input (height, width) instead of --scale
    max_side: int | None = None  # longest model-input side, aspect kept, instead of --scale
    crop: tuple[int, int] | None = None  # train on random (height, width) windows of the model input
    fg_fraction: float | None = None  # with crop: the share of windows holding foreground (None: the default)
    mask_threshold: int | None = None  # binarise lossless masks with stray values at this value
    images: Path | None = None  # a data set in two named folders (layout "folders")
    masks: Path | None = None
    image_suffix: str = ""
    mask_suffix: str = ""
    mask_ext: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()  # class names of class-id masks in named folders (--classes); empty: binary
    init: Path | None = None  # a checkpoint whose weights the run starts from (--init; fine-tuning)
    sync_bn: str = "auto"  # under torchrun: SyncBatchNorm on CUDA with several processes (auto), on, off
    dist_timeout: float = DEFAULT_TIMEOUT_MINUTES  # under torchrun: minutes a process waits for the others

    def __post_init__(self) -> None:
        if self.weight_decay is None and self.optimizer in OPTIMIZERS:  # recorded as a number, never as "default"
            object.__setattr__(self, "weight_decay", DEFAULT_WEIGHT_DECAY[self.optimizer])
        if self.fg_fraction is None and self.crop is not None:
            object.__setattr__(self, "fg_fraction", DEFAULT_FG_FRACTION)
        checks = {
            "--epochs must be at least 1": self.epochs >= 1,
            "--batch-size must be at least 1": self.batch_size >= 1,
            "--lr must be positive": self.lr > 0,
            "--scale must be in (0, 1]": 0 < self.scale <= 1,
            "--base-channels must be at least 1": self.base_channels >= 1,
            "--workers must be 0 or more": self.workers >= 0,
            "--val-fraction must be in (0, 1)": 0 < self.val_fraction < 1,
            "--folds must be at least 2": self.folds is None or self.folds >= 2,
            f"--fold must be in 0..{(self.folds or 1) - 1} (one of --folds {self.folds})": self.folds is None
            or 0 <= self.fold < self.folds,
            "--fold needs --folds K": self.folds is not None or self.fold == 0,
            f"--optimizer must be one of {', '.join(OPTIMIZERS)}": self.optimizer in OPTIMIZERS,
            "--weight-decay must be 0 or more": self.weight_decay is None or self.weight_decay >= 0,
            f"--schedule must be one of {', '.join(SCHEDULES)}": self.schedule in SCHEDULES,
            "--warmup-epochs must be 0 or more, and fewer than --epochs": 0 <= self.warmup_epochs < self.epochs,
            "--accumulate must be at least 1": self.accumulate >= 1,
            "--clip-grad must be positive": self.clip_grad is None or self.clip_grad > 0,
            "--ema must be in (0, 1), e.g. 0.999": self.ema is None or 0 < self.ema < 1,
            "--patience must be at least 1": self.patience >= 1,
            "--lr-patience must be 0 or more": self.lr_patience >= 0,
            "--mask-threshold binarises masks; masks of --classes hold class ids: give one of the two": not (
                self.classes and self.mask_threshold is not None
            ),
            "--pos-weight must be positive": math.isfinite(self.pos_weight) and self.pos_weight > 0,
            "--class-weights must be positive": all(math.isfinite(w) and w > 0 for w in self.class_weights),
            "--monitor must be dice or loss": self.monitor in MONITORS,
            "--std must be positive": all(v > 0 for v in self.std),
            "--mean and --std are in [0, 1] units (pixel / 255): divide values on the 0-255 scale by 255": all(
                0 <= v <= 1 for v in self.mean
            )
            and all(v <= 1 for v in self.std),
            "--threshold must be in (0, 1)": 0 < self.threshold < 1,
            "--max-minutes must be positive": self.max_minutes is None or self.max_minutes > 0,
            "--size and --max-side are two rules: give one": self.size is None or self.max_side is None,
            "--size needs a positive HEIGHTxWIDTH": self.size is None or min(self.size) >= 1,
            "--max-side must be at least 1": self.max_side is None or self.max_side >= 1,
            f"--crop needs HEIGHTxWIDTH of at least {MIN_CROP}x{MIN_CROP}": not self.crop or min(self.crop) >= MIN_CROP,
            "--fg-fraction needs --crop (it is the share of crops made to hold foreground)": self.crop is not None
            or self.fg_fraction is None,
            "--fg-fraction must be in [0, 1]": self.fg_fraction is None or 0 <= self.fg_fraction <= 1,
            "--mask-threshold must be in 1..255": self.mask_threshold is None or 1 <= self.mask_threshold <= 255,
            "--images and --masks go together": (self.images is None) == (self.masks is None),
            "--image-suffix, --mask-suffix, --mask-ext and --classes need --images and --masks": self.images is not None
            or not (self.image_suffix or self.mask_suffix or self.mask_ext or self.classes),
            "--sync-bn must be auto, on or off": self.sync_bn in SYNC_BN_CHOICES,
            "--dist-timeout must be positive": self.dist_timeout > 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise UnetkitError(message)

    @property
    def resize_flag(self) -> str:
        """The flag of the resize rule in use: --size, --max-side or --scale."""
        return "--size" if self.size is not None else "--max-side" if self.max_side is not None else "--scale"

    @property
    def resize_rule(self) -> ResizeRule:
        """How images become model inputs: --size, else --max-side, else --scale."""
        if self.size is not None:
            return ResizeRule("size", size=self.size)
        if self.max_side is not None:
            return ResizeRule("max_side", max_side=self.max_side)
        return ResizeRule("scale", scale=self.scale)

    @property
    def fold_pair(self) -> tuple[int, int] | None:
        """(folds, fold) for k-fold cross-validation, else None."""
        return (self.folds, self.fold) if self.folds is not None else None

    @property
    def folders(self) -> FolderSpec | None:
        """The two named folders of a data set given by --images and --masks, else None."""
        if self.images is None or self.masks is None:
            return None
        return FolderSpec(self.images, self.masks, self.image_suffix, self.mask_suffix, self.mask_ext, self.classes)

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
        for key in ("data", "out", "cache", "images", "masks", "init"):
            if kwargs.get(key) is not None:
                kwargs[key] = Path(kwargs[key])
        for key in ("mean", "std", "size", "crop", "mask_ext", "classes", "class_weights"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def run_files(folder: Path) -> list[str]:
    """The files of an earlier run in `folder` that a new run would overwrite. An empty tb/ does not count, nor
    tb/ alone: a run stopped before its first epoch ended has nothing to keep or resume."""
    found = []
    for name in RUN_FILES:
        path = folder / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(name)
    return [] if found == ["tb"] else found


def next_free_run_dir(base: Path) -> Path:
    """`base` when it holds no run, else the first of base2, base3, ... that holds none (as Ultralytics does)."""
    candidate, n = base, 1
    while run_files(candidate):
        n += 1
        candidate = base.with_name(f"{base.name}{n}")
    return candidate


def resume_conflicts(stored: TrainConfig, given: dict[str, Any]) -> list[str]:
    """Flags given to --resume that would change the run but cannot: each names the flag and both values.

    Only RESUME_OVERRIDES may change (and `out`, the run folder itself). `--data`, `--images` and `--masks`
    may also point elsewhere when the run's paths no longer exist (the data set was moved).
    """
    problems = []
    for key, value in given.items():
        if key in RESUME_OVERRIDES or key == "out" or value is None:
            continue
        old = getattr(stored, key)
        if _same(old, value) or moved(stored, key):
            continue
        if key in SWITCHES:
            problems.append(f"{SWITCHES[key]}: the run was started without it")
        else:
            was = "the default" if old is None else _shown(key, old)
            problems.append(f"--{key.replace('_', '-')} {_shown(key, value)}: the run was started with {was}")
    return problems


def moved(stored: TrainConfig, key: str) -> bool:
    """True when `key` is one of the run's data paths and it no longer exists here (the data set was moved,
    or a run recorded it relative to another folder): then --resume may point it elsewhere."""
    old = getattr(stored, key)
    return key in MOVABLE and old is not None and not Path(old).exists()


def moved_data_root(stored: TrainConfig, images: Path) -> Path | None:
    """Where a named-folders run's data folder went, given where its image folder is now: the image folder
    keeps its place under the data folder (`x/imgs` under `/a` is `x/imgs` under `/b`). None when the stored
    image folder was not under the stored data folder, or the new one does not end the same way."""
    if stored.images is None:
        return None
    try:
        inside = Path(stored.images).relative_to(stored.data)
    except ValueError:
        return None
    root = Path(images)
    for part in reversed(inside.parts):
        if root.name != part:
            return None
        root = root.parent
    return root


def _shown(key: str, value: Any) -> str:
    """A value as its flag takes it: HxW for --size and --crop."""
    if key in HW_FLAGS and isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    return str(value)


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, Path) or isinstance(new, Path):
        return old is not None and (Path(old) == Path(new) or Path(old).resolve() == Path(new).resolve())
    if isinstance(old, float) and isinstance(new, (int, float)):
        return math.isclose(old, new, rel_tol=1e-9)
    return bool(old == new)
