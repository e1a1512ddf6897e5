"""One training epoch, one evaluation pass, and the state that decides when to stop."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from unetkit.core.labels import predict_labels
from unetkit.core.metrics import ClassScores, class_scores, confusion_counts
from unetkit.core.preprocess import normalize

from .losses import LossFn, deep_supervision_loss


@dataclass(frozen=True)
class BatchSetup:
    """How a batch goes onto the device: where, in what precision and memory format, normalized how."""

    device: torch.device
    amp_dtype: torch.dtype | None
    mean: Sequence[float]
    std: Sequence[float]

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda"

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images.to(self.device, non_blocking=True), self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


@dataclass
class EvalResult:
    loss: float
    scores: ClassScores  # per scored class; multi-class means count only the classes in the truth
    sample: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # image, truth, prediction
    counts: torch.Tensor | None = None  # (K, 3) tp, fp, fn per scored class, which the scores come from
    n: int = 0  # images scored

    @property
    def dice(self) -> list[float | None]:
        """Per class; None for a class the validation truth lacks."""
        return self.scores.dice

    @property
    def iou(self) -> list[float | None]:
        return self.scores.iou

    @property
    def absent(self) -> list[int]:
        return self.scores.absent

    @property
    def mean_dice(self) -> float:
        """The score that picks best.pth and drives the learning-rate schedule and early stopping."""
        return self.scores.mean_dice

    @property
    def mean_iou(self) -> float:
        return self.scores.mean_iou


def monitored(result: EvalResult, monitor: str) -> float:
    """The validation figure `--monitor` names, higher is better (the loss negated): what picks best.pth,
    lowers the learning rate (ReduceLROnPlateau in "max" mode) and stops the run early."""
    return result.mean_dice if monitor == "dice" else -result.loss


def stalled_note(monitor: str, best_loss: float, last_loss: float) -> str:
    """Said with early stopping on Dice when the validation loss still fell since the best epoch: the model was
    learning (on small or rare objects Dice can stay 0 for epochs), and `--monitor loss` would follow it."""
    if monitor != "dice" or not (last_loss < 0.99 * best_loss):
        return ""
    return f"; the validation loss still fell ({best_loss:.4f} -> {last_loss:.4f}): --monitor loss follows it"


class EarlyStopping:
    """Tracks the best validation score; `stop` once `patience` epochs pass without a better one."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = -math.inf
        self.bad_epochs = 0

    def step(self, score: float) -> bool:
        """Record an epoch's score; True when it is the best so far."""
        if score > self.best:
            self.best, self.bad_epochs = score, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, float | int]:
        return {"patience": self.patience, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.patience = int(state["patience"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])


@dataclass(frozen=True)
class Stepping:
    """How batches become optimizer steps: gradients of `accumulate` batches summed into one step (a larger
    effective batch than fits in memory), their norm clipped to `clip_grad` first where given."""

    accumulate: int = 1
    clip_grad: float | None = None


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    setup: BatchSetup,
    desc: str = "train",
    progress: bool = True,
    stop: Callable[[], bool] | None = None,
    deep: bool = False,
    stepping: Stepping = Stepping(),
    set_lr: Callable[[int, int], float] | None = None,
    after_step: Callable[[], None] | None = None,
) -> tuple[float, float, int]:
    """Train over `loader` once, or until `stop()`, asked after every optimizer step, says so (the time limit);
    returns (mean loss per image, images per second, images). With `deep` the loss also scores the decoder's
    coarser levels (deep supervision; the reported loss is that weighted sum). `set_lr(step, steps)` gives the
    optimizer its learning rate for each step (0-based) of the epoch's `steps` (the step schedule, `StepLr`);
    `after_step()` runs after every optimizer step (the weight average, `WeightAverage.update`).

    With `stepping.accumulate` N each step follows the mean of its window's batch losses (each counts 1/N; in a
    last window of k < N batches, 1/k); under DistributedDataParallel the gradients are all-reduced once per
    step (no_sync on the others).
    """
    model.train()
    total, seen = torch.zeros((), device=setup.device), 0
    start = time.perf_counter()
    n = len(loader)
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress)
    acc = stepping.accumulate
    for i, (images, labels) in enumerate(bar):
        x, y = setup.inputs(images), labels.to(setup.device, non_blocking=True)
        if i % acc == 0:
            optimizer.zero_grad(set_to_none=True)
        steps_now = (i + 1) % acc == 0 or i + 1 == n
        window = min(acc, n - i // acc * acc)  # batches in this step's window: fewer in a short last one
        skip_sync = getattr(model, "no_sync", None) if not steps_now else None
        with skip_sync() if skip_sync is not None else contextlib.nullcontext():
            with setup.autocast():
                outputs = model(x, deep=True) if deep else model(x)
            loss = deep_supervision_loss(loss_fn, outputs, y) if deep else loss_fn(outputs, y)
            scaler.scale(loss / window if window > 1 else loss).backward()
        total += loss.detach() * len(images)
        seen += len(images)
        if steps_now:
            if set_lr is not None:
                set_lr(i // acc, math.ceil(n / acc))
            if stepping.clip_grad is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), stepping.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            if after_step is not None:
                after_step()
        if progress:  # .item() is a device sync: only pay for it when a bar shows it
            bar.set_postfix(loss=f"{total.item() / seen:.4f}", img_s=f"{seen / (time.perf_counter() - start):.1f}")
        if steps_now and stop is not None and stop():
            break
    seconds = time.perf_counter() - start
    return total.item() / max(seen, 1), seen / max(seconds, 1e-9), seen


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: LossFn,
    n_classes: int,
    setup: BatchSetup,
    threshold: float = 0.5,
    progress: bool = False,
) -> EvalResult:
    """Loss and data-set-level Dice/IoU per class over `loader` (at the model's resolution), plus the first
    image's triplet."""
    model.eval()
    total, seen, counts, sample = 0.0, 0, None, None
    for images, labels in tqdm(loader, desc="validate", unit="batch", leave=False, disable=not progress):
        x, y = setup.inputs(images), labels.to(setup.device, non_blocking=True)
        with setup.autocast():
            logits = model(x)
        total += loss_fn(logits, y).item() * len(images)
        seen += len(images)
        pred = predict_labels(logits.float(), threshold)
        batch_counts = confusion_counts(pred, y, n_classes)
        counts = batch_counts if counts is None else counts + batch_counts
        if sample is None:
            sample = (images[0], labels[0], pred[0].cpu())
    if counts is None:
        raise ValueError("evaluate() got an empty loader")
    return EvalResult(total / seen, class_scores(counts, n_classes), sample, counts, seen)
