"""The optimizer and the learning rate over a run: which optimizer, weight decay, and the schedule with warmup.

The seed tutorial's recipe is the default: Adam without weight decay, the learning rate cut tenfold when the
validation figure stalls (ReduceLROnPlateau). `--optimizer sgd --schedule poly` is nnU-Net's (SGD with Nesterov
momentum 0.99, the rate falling as (1 - t/T)^0.9); `--optimizer adamw --schedule cosine --warmup-epochs N` is
the common transformer-era choice (as Ultralytics offers). Weight decay never applies to biases and
BatchNorm's scales and shifts (the parameters with fewer than two dimensions), as in timm and Ultralytics:
decaying them only shrinks the normalization.

The step schedules are pure functions of how far the run is, in epochs, so a resumed run computes the same
rate from its epoch count and nothing but the optimizer's state needs saving.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from .config import OPTIMIZERS, SCHEDULES, TrainConfig

#: nnU-Net's SGD: Nesterov momentum 0.99 (nnUNetTrainer.configure_optimizers), which its poly schedule pairs with.
SGD_MOMENTUM = 0.99
#: nnU-Net's poly exponent: lr = base * (1 - t/T) ** 0.9.
POLY_EXPONENT = 0.9


def parameter_groups(params: Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """One group, or with weight decay two: the weights that decay, and the biases and normalization
    parameters (fewer than two dimensions) that do not. One group without decay keeps the optimizer state of
    runs saved before this option readable."""
    trained = [p for p in params if p.requires_grad]
    if weight_decay == 0:  # said outright: AdamW's own default is 0.01
        return [{"params": trained, "weight_decay": 0.0}]
    groups = [
        {"params": [p for p in trained if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The run's optimizer over `model`'s trainable parameters."""
    groups = parameter_groups(model.parameters(), weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=SGD_MOMENTUM, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r} (one of {', '.join(OPTIMIZERS)})")


def decay_factor(schedule: str, done: float, epochs: int) -> float:
    """The share of the base learning rate a step schedule gives after `done` epochs of `epochs` (1 at the
    start, falling towards 0 at the end); 1 for plateau, whose rate ReduceLROnPlateau lowers between epochs."""
    if schedule == "plateau":
        return 1.0
    t = min(max(done / epochs, 0.0), 1.0)
    if schedule == "poly":
        return (1.0 - t) ** POLY_EXPONENT
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {schedule!r} (one of {', '.join(SCHEDULES)})")


def warmup_factor(done: float, warmup_epochs: float) -> float:
    """Linear warmup: the share of the rate once `done` epochs have passed (counted at the end of the step, so
    the first step already moves), 1 after `warmup_epochs`."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, done / warmup_epochs)


class StepLr:
    """Sets the learning rate of every step of one epoch from the rate the epoch began with.

    `base` is each group's rate at the start of the epoch: the configured rate for the step schedules (which
    `restore` puts back at the end of the epoch, so checkpoints hold it), or what ReduceLROnPlateau left for
    plateau, which warmup then scales.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: str, epochs: int, warmup_epochs: float) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.base = [group["lr"] for group in optimizer.param_groups]

    @property
    def active(self) -> bool:
        """False for the seed tutorial's plateau schedule without warmup: then nothing changes per step."""
        return self.schedule != "plateau" or self.warmup_epochs > 0

    def factor(self, epoch: int, step: int, steps: int) -> float:
        """The share of `base` for `step` (0-based) of `steps` in `epoch` (1-based)."""
        start = epoch - 1 + step / max(steps, 1)
        end = epoch - 1 + (step + 1) / max(steps, 1)
        return decay_factor(self.schedule, start, self.epochs) * warmup_factor(end, self.warmup_epochs)

    def set(self, epoch: int, step: int, steps: int) -> float:
        """Give every group its rate for this step; returns the first group's."""
        f = self.factor(epoch, step, steps)
        for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base * f
        return self.base[0] * f

    def restore(self) -> None:
        """Put back the epoch's starting rates (what the checkpoint stores and ReduceLROnPlateau reads)."""
        for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base


def describe_optimization(cfg: TrainConfig) -> str:
    """The one line a run states how it optimizes: optimizer, rate and decay, schedule, step rule."""
    decay = (f"weight decay {cfg.weight_decay:g} (not on biases or normalization)" if cfg.weight_decay
             else "no weight decay")  # fmt: skip
    if cfg.schedule == "plateau":
        schedule = f"rate x0.1 after {cfg.lr_patience} epochs without a better validation {cfg.monitor}"
    else:
        schedule = f"{cfg.schedule} schedule to 0 at epoch {cfg.epochs}"
    if cfg.warmup_epochs:
        schedule += f", after {cfg.warmup_epochs:g} warmup epoch{'' if cfg.warmup_epochs == 1 else 's'}"
    parts = [f"optimizer: {cfg.optimizer}, lr {cfg.lr:g}, {decay}; {schedule}"]
    if cfg.accumulate > 1:
        parts.append(f"{cfg.accumulate} batches per step (effective batch {cfg.accumulate * cfg.batch_size} per "
                     "process)")  # fmt: skip
    if cfg.clip_grad is not None:
        parts.append(f"gradients clipped at norm {cfg.clip_grad:g}")
    if cfg.ema is not None:
        parts.append(f"weights averaged (EMA decay {cfg.ema:g}): the average is validated and saved")
    return "; ".join(parts)
