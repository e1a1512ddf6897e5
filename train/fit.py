"""A whole training run: data checked, model built or resumed, epochs run, checkpoints and logs written.

Writes into the run folder: split.json (which pairs train and which validate), best.pth (when the validation
figure `--monitor` names improves: Dice, or the loss), last.pth (every epoch, with what --resume needs),
history.jsonl (one line per epoch) and tb/ (TensorBoard event files).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from unetkit.core.atomic import write_text_atomic
from unetkit.core.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from unetkit.core.device import autocast_dtype
from unetkit.core.errors import DataError, UnetkitError
from unetkit.core.meta import ModelMeta
from unetkit.core.model import UNet, UNetConfig

from .config import RESUME_OVERRIDES, STEP_SCHEDULES, TrainConfig, moved, moved_data_root, resume_conflicts, run_files
from .data.buckets import BucketBatchSampler, by_input_size, same_size_batches
from .data.checks import check_dataset, describe_unmatched, inverted_size
from .data.crop import Cropper, crop_note, validation_note, whole_image_batch
from .data.dataset import SampleCache, SampleRule, SegmentationDataset, pad_collate
from .data.layouts import DatasetIndex, index_dataset
from .data.split import SPLIT_FILE, Split, make_split, read_split, split_record, write_split
from .distributed import Distributed
from .ema import WeightAverage
from .finetune import load_init
from .loop import (
    BatchSetup,
    EarlyStopping,
    EvalResult,
    Stepping,
    evaluate,
    monitored,
    stalled_note,
    train_one_epoch,
)
from .losses import LossFn, default_loss, make_loss
from .optim import StepLr, describe_optimization, make_optimizer
from .tblog import TensorBoardLog

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    best_dice: float  # validation Dice of best.pth's epoch
    best_loss: float  # validation loss of that epoch (nan for runs saved before it was kept)
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    run_dir: Path
    out_of_time: bool = False


@dataclass
class _Run:
    """Everything a training run mutates, in one place so it can be saved and restored whole."""

    model: UNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    stopper: EarlyStopping
    sampler_rng: torch.Generator
    ema: WeightAverage | None = None  # --ema: the average that is validated and saved
    epoch: int = 0
    best_epoch: int = 0
    best_dice: float = 0.0  # the validation figures of best_epoch (what --monitor picked it by, and the other)
    best_loss: float = math.nan
    saved_epoch: int = 0  # the epoch last.pth holds on disk (0: none yet)

    @property
    def shown(self) -> UNet:
        """The weights the run validates and saves: the average with --ema, else the trained ones."""
        return self.ema.model if self.ema is not None else self.model

    def training_state(self, cfg: TrainConfig) -> dict[str, Any]:
        ema = {} if self.ema is None else {"ema": {**self.ema.state_dict(), "trained_weights": self.model.state_dict()}}
        return {
            **ema,
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
            "best_dice": self.best_dice,
            "best_loss": self.best_loss,
            "config": cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "rng": {
                "sampler": self.sampler_rng.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # a disabled scaler (CPU, bf16) saved {}; an fp16 GPU resuming starts it afresh
            self.scaler.load_state_dict(state["scaler"])
        self.stopper.load_state_dict(state["early_stopping"])
        self.sampler_rng.set_state(state["rng"]["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(visible_rng_states(state["rng"]["cuda"], torch.cuda.device_count()))
        self.epoch, self.best_epoch = int(state["epoch"]), int(state["best_epoch"])
        # runs saved before these were kept monitored Dice, so the stopper's best is its Dice
        self.best_dice = float(state.get("best_dice", self.stopper.best))
        self.best_loss = float(state.get("best_loss", math.nan))
        self.saved_epoch = self.epoch


@contextlib.contextmanager
def algorithm_choice(deterministic: bool) -> Iterator[None]:
    """How kernels are chosen while training, restored afterwards. By default cuDNN picks the fastest
    convolution for each shape (batches are size-bucketed, so shapes repeat), and only that:
    `torch.backends.cudnn.flags` would also reset TF32 and determinism to its own defaults, overriding the
    user's choice. With `deterministic` (--deterministic, as Ultralytics' deterministic=True) every op takes a
    deterministic kernel where PyTorch has one (the others warn once), cuDNN does not benchmark, and cuBLAS
    gets the fixed workspace its deterministic mode needs (CUBLAS_WORKSPACE_CONFIG, unless set; read when the
    process makes its cuBLAS handle, at training's first matrix product)."""
    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())  # fmt: skip
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if deterministic and workspace is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    cudnn.benchmark = not deterministic
    cudnn.deterministic = deterministic or before[1]
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = before[:2]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def visible_rng_states(saved: list[Any], visible: int) -> list[Any]:
    """The saved per-GPU random states that this process can restore: a run saved with 8 GPUs visible and
    resumed with fewer restores the ones it has (torch.cuda.set_rng_state_all indexes past the last GPU)."""
    return list(saved[:visible])


def resume_config(cfg: TrainConfig, resume: str | Path, given: dict[str, Any]) -> tuple[TrainConfig, Checkpoint]:
    """The stored run's config (with the allowed overrides from `given`) and the last.pth checkpoint; a
    given flag that would change anything else is an error naming it and both values."""
    path = Path(resume)
    checkpoint = read_checkpoint(path)
    if checkpoint.training is None:
        raise UnetkitError(f"{path}: has no training state (only last.pth can be resumed)")
    stored = TrainConfig.from_dict(checkpoint.training["config"])
    conflicts = resume_conflicts(stored, given)
    epochs = given.get("epochs")
    if stored.schedule in STEP_SCHEDULES and epochs is not None and epochs != stored.epochs:
        conflicts.append(f"--epochs {epochs}: the run's {stored.schedule} schedule takes the learning rate to 0 at "
                         f"epoch {stored.epochs}, and a schedule stretched mid-run would jump")  # fmt: skip
    if conflicts:
        allowed = ", ".join(f"--{k.replace('_', '-')}" for k in RESUME_OVERRIDES if k != "progress")
        raise UnetkitError(f"--resume {path}: {'; '.join(conflicts)} (a resumed run may change only {allowed}; "
                           "start a new run in another --out to change the rest)")  # fmt: skip
    overrides = {k: v for k, v in given.items() if v is not None and (k in RESUME_OVERRIDES or moved(stored, k))}
    gone = [k for k in ("data", "images", "masks") if moved(stored, k) and k not in overrides]
    if gone and not ("data" in overrides or ("images" in overrides and "masks" in overrides)):
        where = ", ".join(f"--{k} {getattr(stored, k)}" for k in gone)
        raise UnetkitError(f"--resume {path}: the run's data is gone from where it was ({where}); give its new place "
                           "with --data NEWDIR (or --images and --masks)")  # fmt: skip
    if "data" not in given and "images" in overrides and moved(stored, "data"):  # folders moved, --data left out:
        images = Path(overrides["images"])
        masks = Path(overrides.get("masks") or stored.masks or images)
        overrides["data"] = moved_data_root(stored, images) or Path(os.path.commonpath([images, masks]))
    if "data" in overrides:  # a moved named-folders data set: its folders move with it unless given too
        for key in ("images", "masks"):
            old = getattr(stored, key)
            if key not in overrides and old is not None and moved(stored, key):
                with contextlib.suppress(ValueError):  # recorded outside the data folder: cannot follow
                    overrides[key] = Path(overrides["data"]) / Path(old).relative_to(stored.data)
    return replace(stored, out=cfg.out, **overrides), checkpoint


def resolve_split(cfg: TrainConfig, index: DatasetIndex, resuming: bool) -> tuple[Split, bool]:
    """(split, whether to record it): a new run draws its split (recorded in RUN/split.json once the data
    check passed); a resumed run reads it back and refuses data that no longer matches it. Runs from before
    split.json existed draw theirs again by their own rule (per image)."""
    path = cfg.out / SPLIT_FILE
    if resuming and path.exists():
        try:
            return read_split(path, index), False
        except DataError as exc:
            raise DataError(f"{exc}; restore those files, or train a new run on this data") from None
    return make_split(index, cfg.group_by, cfg.val_fraction, cfg.seed, cfg.fold_pair), True


def _augmenter() -> Any:
    from .data.augment import Augmenter  # albumentations is needed only when augmenting

    return Augmenter()


def _loaders(
    cfg: TrainConfig, index: DatasetIndex, split: Split, ddp: Distributed, sampler_rng: torch.Generator
) -> tuple[DataLoader, DataLoader]:
    if len(split.val) < ddp.world:
        raise UnetkitError(
            f"{len(split.val)} validation image(s) for {ddp.world} processes: each needs at least one "
            "(start fewer processes or raise --val-fraction)"
        )
    rule = SampleRule(cfg.resize_rule, index.mask_kind, cfg.mask_threshold, index.n_classes)
    cache = SampleCache(cfg.cache, rule) if cfg.cache else None
    input_sizes: list[tuple[int, int]] = []  # (height, width) per pair after the rule, from rank 0
    if ddp.is_main:  # under torchrun rank 0 checks (and fills the cache) while the others wait for its sizes
        report = check_dataset(index, rule, cache, workers=max(cfg.workers, 2), progress=cfg.progress)
        report.raise_if_problems(limit=10)
        input_sizes = report.input_sizes
        empty = report.empty_classes()
        if empty:
            log.warning("warning: %s", empty)
        inverted = inverted_size(index, cfg.resize_rule)
        if inverted:
            log.warning("warning: %s", inverted)
        padded = crop_note(cfg.crop, input_sizes, cfg.resize_flag) if cfg.crop else None
        if padded:
            log.warning("warning: %s", padded)
    input_sizes = ddp.share(input_sizes)
    sizes = {p.image: hw for p, hw in zip(index.pairs, input_sizes, strict=True)}
    whole = validation_note(cfg.batch_size, cfg.crop, [sizes[p.image] for p in split.val]) if cfg.crop else None
    if whole and ddp.is_main:
        log.warning("warning: %s", whole)
    common: dict[str, Any] = dict(
        num_workers=cfg.workers,
        pin_memory=ddp.device.type == "cuda",
        collate_fn=pad_collate,
        persistent_workers=cfg.workers > 0,
    )
    crop = Cropper(cfg.crop, cfg.fg_fraction or 0.0) if cfg.crop else None
    train_ds = SegmentationDataset(split.train, rule, _augmenter() if cfg.augment else None, cache, crop)
    val_ds = SegmentationDataset(by_input_size(split.val, sizes), rule, None, cache)
    train_sizes = [cfg.crop or sizes[p.image] for p in split.train]  # crops: one size, one bucket
    batches = BucketBatchSampler(train_sizes, cfg.batch_size, sampler_rng)
    train = DataLoader(train_ds, batch_sampler=ddp.train_batches(batches), **common)
    val_part = ddp.val_part(val_ds)
    mine = val_part.indices if isinstance(val_part, Subset) else range(len(val_ds))
    val_sizes = [sizes[val_ds.pairs[i].image] for i in mine]
    val_batches = same_size_batches(val_sizes, whole_image_batch(cfg.batch_size, cfg.crop, val_sizes))
    val = DataLoader(val_part, batch_sampler=val_batches, **common)  # unpadded: independent of the batch size
    windows = f", windows {cfg.crop[0]}x{cfg.crop[1]} ({cfg.fg_fraction:g} made to hold foreground)" if cfg.crop else ""
    log.info("data: %s layout, %s, %s%s", index.layout, split.describe(), rule.resize.describe(), windows)
    return train, val


def _meta(cfg: TrainConfig, index: DatasetIndex, result: EvalResult, epoch: int) -> ModelMeta:
    rule = cfg.resize_rule
    return ModelMeta(
        n_classes=index.n_classes,
        scale=rule.scale,
        resize=rule.mode,
        input_size=rule.size,
        max_side=rule.max_side,
        mean=cfg.mean,
        std=cfg.std,
        threshold=cfg.threshold,
        class_names=tuple(index.class_names),
        mask_kind=index.mask_kind,
        layout=index.layout,
        val_dice=result.mean_dice,
        val_iou=result.mean_iou,
        epoch=epoch,
        extra={
            "val_dice_per_class": result.dice,
            "val_iou_per_class": result.iou,
            "val_absent_classes": [index.class_names[i] for i in result.absent],
            "train_args": cfg.to_dict(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


def fit(cfg: TrainConfig, resume: Checkpoint | None = None, ddp: Distributed | None = None) -> FitResult:
    """Train until cfg.epochs, early stopping or the time limit; `resume` is a last.pth to continue from and
    `ddp` this process's place among torchrun's processes (`training_processes`; None: a single process).

    A new run never writes into a folder that holds an earlier one. A write that fails (disk full) ends the
    run with an OSError whose message says which checkpoint is intact.
    """
    if resume is None and run_files(cfg.out):
        raise UnetkitError(f"{cfg.out}: holds an earlier run ({', '.join(run_files(cfg.out))}); resume it or "
                           "choose another folder")  # fmt: skip
    ddp = ddp or Distributed.single(cfg)
    device = ddp.device
    amp = autocast_dtype(device) if cfg.amp else None
    index = index_dataset(cfg.data, cfg.layout, cfg.folders)
    for line in describe_unmatched(index):
        log.warning("warning: %s", line)
    if resume is None and index.n_classes > 1 and cfg.threshold != TrainConfig.threshold:  # earlier runs kept it
        raise UnetkitError(f"--threshold {cfg.threshold:g}: a {index.n_classes}-class model takes each pixel's most "
                           "probable class; the threshold is for binary models")  # fmt: skip
    loss_name = cfg.loss or default_loss(index.n_classes)
    try:
        loss_fn = make_loss(loss_name, index.n_classes, cfg.pos_weight, cfg.class_weights)
    except ValueError as exc:
        raise UnetkitError(str(exc)) from None

    torch.manual_seed(cfg.seed)
    model = UNet(
        UNetConfig(
            n_classes=index.n_classes, base_channels=cfg.base_channels, bilinear=cfg.bilinear,
            attention=cfg.attention, deep_supervision=cfg.deep_supervision,
        )
    )  # fmt: skip
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay or 0.0)
    run = _Run(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, "max" if cfg.monitor == "dice" else "min", patience=cfg.lr_patience
        ),
        scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
        stopper=EarlyStopping(cfg.patience),
        sampler_rng=torch.Generator().manual_seed(cfg.seed),
    )
    averaged = (resume.training or {}).get("ema") if resume is not None else None  # then state_dict is the average
    if resume is not None:
        model.load_state_dict(averaged["trained_weights"] if averaged else resume.state_dict)
    elif cfg.init is not None:
        log.info("%s", load_init(model, cfg.init))
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub lacks it
    if cfg.ema is not None:  # a copy of the model as it now is, on its device
        run.ema = WeightAverage(model, cfg.ema)
        if resume is not None and averaged:
            run.ema.load_state_dict(averaged, resume.state_dict)
    if resume is not None and resume.training is not None:  # after the move: optimizer state on the device
        run.restore(resume.training)
        best = f"Dice {run.best_dice:.4f}" if cfg.monitor == "dice" else f"loss {run.best_loss:.4f}"
        log.info("resumed after epoch %d (best %s at epoch %d) in %s", run.epoch, best, run.best_epoch, cfg.out)
        if run.epoch >= cfg.epochs:
            log.warning("note: the run has trained %d of --epochs %d: nothing to train (give a larger --epochs to go "
                        "on); its best checkpoint is evaluated again", run.epoch, cfg.epochs)  # fmt: skip

    split, new_split = resolve_split(cfg, index, resuming=resume is not None)
    train_loader, val_loader = _loaders(cfg, index, split, ddp, run.sampler_rng)
    trained = ddp.wrap(model)  # under torchrun every rank starts from rank 0's weights and buffers
    setup = BatchSetup(device, amp, cfg.mean, cfg.std)
    tb = None
    if ddp.is_main:  # only rank 0 writes
        cfg.out.mkdir(parents=True, exist_ok=True)
        if new_split:
            write_split(
                cfg.out / SPLIT_FILE,
                split_record(split, index, cfg.group_by, cfg.val_fraction, cfg.seed, cfg.fold_pair),
            )
        tb = TensorBoardLog(cfg.out / "tb", index.class_names, index.mask_kind)
    weights = f" (--pos-weight {cfg.pos_weight:g})" if cfg.pos_weight != 1.0 else ""
    weights += f" (--class-weights {','.join(f'{w:g}' for w in cfg.class_weights)})" if cfg.class_weights else ""
    log.info(
        "model: U-Net base %d (%s up-sampling%s), %s, %s, loss %s%s%s",
        cfg.base_channels, "bilinear" if cfg.bilinear else "transposed-conv",
        ", attention gates" if cfg.attention else "", device, str(amp).replace("torch.", "") if amp else "fp32",
        loss_name, weights, " with deep supervision" if cfg.deep_supervision else "",
    )  # fmt: skip
    log.info("%s", describe_optimization(cfg))
    if cfg.deterministic:
        log.info("deterministic kernels only (--deterministic): cuDNN does not benchmark; an op without a "
                 "deterministic CUDA kernel warns once and runs as it can")  # fmt: skip
    if cfg.optimizer == "sgd" and cfg.lr <= TrainConfig.lr:
        log.warning("warning: --optimizer sgd at lr %g (Adam's rate) barely moves the weights; nnU-Net's SGD runs at "
                    "--lr 1e-2", cfg.lr)  # fmt: skip
    sharing = ddp.describe(cfg.batch_size, cfg.accumulate)
    if sharing:
        log.info("%s", sharing)
    try:
        with algorithm_choice(cfg.deterministic):
            out_of_time = _epochs(cfg, run, index, trained, train_loader, val_loader, loss_fn, setup, tb, ddp)
        ddp.check_in_sync(run.shown)  # the weights saved: the average is a function of every step's weights
    except OSError as exc:  # disk full, quota, read-only: the atomic writes kept every earlier file whole
        raise _write_failed(exc, cfg.out, run.saved_epoch) from None
    finally:
        if tb is not None:
            tb.close()
    return FitResult(run.best_dice, run.best_loss, run.best_epoch, run.epoch, run.stopper.stop, cfg.out, out_of_time)


def _epochs(
    cfg: TrainConfig,
    run: _Run,
    index: DatasetIndex,
    trained: torch.nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    loss_fn: LossFn,
    setup: BatchSetup,
    tb: TensorBoardLog | None,
    ddp: Distributed,
) -> bool:
    """Run epochs until the last, early stopping or the time limit; True when the time limit ended it.

    Under torchrun every rank takes the same decisions (the scores are reduced over all ranks, the time limit
    is reached when any rank reaches it) and only rank 0 writes, the others waiting for it.
    """
    deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else None
    first = run.epoch + 1
    last_loss = math.nan  # the latest epoch's validation loss, for the early-stopping note

    def time_up() -> bool:
        return deadline is not None and ddp.any(time.monotonic() > deadline)

    stop = time_up if deadline is not None else None
    stepping = Stepping(cfg.accumulate, cfg.clip_grad)
    while run.epoch < cfg.epochs and not run.stopper.stop:
        epoch = run.epoch + 1
        start = time.perf_counter()
        step_lr = StepLr(run.optimizer, cfg.schedule, cfg.epochs, cfg.warmup_epochs)  # from the epoch's rate
        lr = step_lr.base[0] * step_lr.factor(epoch, 0, math.ceil(len(train_loader) / cfg.accumulate))
        train_loss, img_s = ddp.reduce_train(
            *train_one_epoch(
                trained, train_loader, loss_fn, run.optimizer, run.scaler, setup,
                desc=f"epoch {epoch}/{cfg.epochs}", progress=cfg.progress, stop=stop, deep=cfg.deep_supervision,
                stepping=stepping, set_lr=partial(step_lr.set, epoch) if step_lr.active else None,
                after_step=partial(run.ema.update, run.model) if run.ema is not None else None,
            )
        )  # fmt: skip
        step_lr.restore()  # the epoch's starting rate: what last.pth holds and ReduceLROnPlateau lowers
        # Every rank sees the same reduced loss and holds the same weights, so every rank decides alike. An
        # FP16 batch that overflowed is skipped by the GradScaler (the weights stay finite): only said.
        if not math.isfinite(train_loss) and not _finite_weights(run.model):
            kept = (f"{cfg.out / 'last.pth'} (epoch {run.saved_epoch}) and best.pth are as they were"
                    if run.saved_epoch else "no checkpoint was written")  # fmt: skip
            raise UnetkitError(
                f"epoch {epoch}: the training loss is {train_loss} and the weights are lost; lower --lr (now "
                f"{lr:g}) or check that the masks label some pixels (unet-data check); {kept}"
            )
        if not math.isfinite(train_loss):
            log.warning("warning: epoch %d: some batches' loss was %s (overflow); their steps were skipped",
                        epoch, train_loss)  # fmt: skip
        ddp.sync_buffers(run.model)
        if run.ema is not None:  # each rank averaged its own BatchNorm statistics
            ddp.sync_buffers(run.ema.model)
        # The model itself (not DDP's wrapper) validates: ranks hold different numbers of validation images.
        result = ddp.reduce_eval(
            evaluate(run.shown, val_loader, loss_fn, index.n_classes, setup, cfg.threshold, cfg.progress),
            index.n_classes,
        )
        if result.absent and epoch == first:
            names = ", ".join(index.class_names[i] for i in result.absent)
            log.info("validation truth lacks %d class(es), left out of the mean Dice: %s", len(result.absent), names)
        improved = run.stopper.step(monitored(result, cfg.monitor))
        if cfg.schedule == "plateau":  # the figure itself: its relative threshold assumes positive values in "max"
            run.scheduler.step(result.mean_dice if cfg.monitor == "dice" else result.loss)
        run.epoch, last_loss = epoch, result.loss
        if improved:
            run.best_epoch, run.best_dice, run.best_loss = epoch, result.mean_dice, result.loss
        scalars = {
            "Loss/train": train_loss, "Loss/val": result.loss, "Dice/val": result.mean_dice,
            "IoU/val": result.mean_iou, "LR": lr, "Throughput/train_images_per_s": img_s,
        }  # fmt: skip
        if tb is not None:  # tb exists on rank 0 (or the only process), which writes; the others wait below
            if improved:
                save_checkpoint(cfg.out / "best.pth", run.shown, _meta(cfg, index, result, epoch))
            save_checkpoint(
                cfg.out / "last.pth", run.shown, _meta(cfg, index, result, epoch), training=run.training_state(cfg)
            )
            run.saved_epoch = epoch
            tb.scalars(epoch, scalars, result.dice, result.iou)
            if result.sample is not None:
                tb.triplet(epoch, *result.sample, index.n_classes)
            _append_history(cfg.out / "history.jsonl", epoch, scalars, result)
        ddp.barrier()
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  dice %.4f  iou %.4f  lr %.1e  %.1f img/s  %.0fs%s",
            epoch, cfg.epochs, train_loss, result.loss, result.mean_dice, result.mean_iou, lr, img_s,
            time.perf_counter() - start, "  [best]" if improved else "",
        )  # fmt: skip
        if stop is not None and stop():
            log.info("time limit: %g minutes of training reached", cfg.max_minutes)
            return True
    if run.stopper.stop:
        figure = "Dice" if cfg.monitor == "dice" else "loss"
        note = stalled_note(cfg.monitor, run.best_loss, last_loss)
        log.info("early stopping: no better validation %s for %d epochs%s", figure, cfg.patience, note)
    return False


def _write_failed(exc: OSError, out: Path, saved_epoch: int) -> OSError:
    """The one line a failed write ends a run with: which file, why, and what is intact."""
    last = out / "last.pth"
    kept = (f"{last} (epoch {saved_epoch}) is intact: continue with `unet-train --out {out} --resume`"
            if saved_epoch else "no checkpoint had been written yet")  # fmt: skip
    return OSError(exc.errno, f"{exc.strerror or exc}; training stopped, {kept}", exc.filename)


def _finite_weights(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a score with nothing to score is null, as in --eval's numbers."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _append_history(path: Path, epoch: int, scalars: dict[str, float], result: EvalResult) -> None:
    """history.jsonl keeps one JSON line per epoch, rewritten atomically (a resumed run drops later lines)."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if line.strip() and json.loads(line)["epoch"] < epoch]
    row = {"epoch": epoch, **scalars, "dice_per_class": result.dice, "iou_per_class": result.iou}
    row = {k: [_finite(x) for x in v] if isinstance(v, list) else _finite(v) for k, v in row.items()}
    write_text_atomic(path, "\n".join([*kept, json.dumps(row)]) + "\n")
