"""The settings of one training run, resolved once from the command line and stored in checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from unetkit.core.cli import DEFAULT_WORKERS
from unetkit.core.distributed import DEFAULT_TIMEOUT_MINUTES
from unetkit.core.errors import UnetkitError
from unetkit.core.meta import DEFAULT_MEAN, DEFAULT_STD

#: Settings a resumed run may change; every other one comes from last.pth so the run stays the same run.
RESUME_OVERRIDES = ("epochs", "device", "workers", "cache", "progress", "max_minutes", "sync_bn", "dist_timeout")

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
    sync_bn: str = "auto"  # under torchrun: SyncBatchNorm on CUDA with several processes (auto), on, off
    dist_timeout: float = DEFAULT_TIMEOUT_MINUTES  # under torchrun: minutes a process waits for the others

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
            "--sync-bn must be auto, on or off": self.sync_bn in SYNC_BN_CHOICES,
            "--dist-timeout must be positive": self.dist_timeout > 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise UnetkitError(message)

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
        for key in ("data", "out", "cache"):
            if kwargs.get(key) is not None:
                kwargs[key] = Path(kwargs[key])
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)
