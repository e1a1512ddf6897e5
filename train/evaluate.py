"""`unet-train --eval`: the Dice and IoU of a checkpoint on a data set, at the checkpoint's own settings."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from unetkit.core.checkpoint import load_checkpoint
from unetkit.core.device import autocast_dtype, resolve_device
from unetkit.core.errors import UnetkitError
from unetkit.core.meta import ModelMeta

from .data.dataset import SegmentationDataset, pad_collate, split_pairs
from .data.layouts import index_dataset
from .loop import BatchSetup, EvalResult, evaluate
from .losses import make_loss

SPLITS = ("all", "train", "val")


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    layout: str = "auto",
    split: str = "all",
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 2,
    progress: bool = True,
) -> tuple[EvalResult, ModelMeta, int]:
    """Evaluate on all pairs, or on the train/val part of the split the checkpoint was trained with.

    Returns (result, checkpoint meta, number of images evaluated).
    """
    dev = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, dev)
    index = index_dataset(data, layout)
    if index.n_classes != meta.n_classes:
        raise UnetkitError(
            f"{checkpoint}: predicts {meta.n_classes} class channel(s) but {data} is a "
            f"{index.layout} data set with {index.n_classes}"
        )
    pairs = index.pairs
    if split != "all":
        args = meta.extra.get("train_args", {})
        train, val = split_pairs(pairs, args.get("val_fraction", 0.2), args.get("seed", 0))
        pairs = val if split == "val" else train
    loader = DataLoader(
        SegmentationDataset(pairs, meta.scale, index.mask_kind),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=pad_collate,
        pin_memory=dev.type == "cuda",
    )
    setup = BatchSetup(dev, autocast_dtype(dev), meta.mean, meta.std)
    loss_fn = make_loss("bce+dice" if meta.n_classes == 1 else "ce+dice", meta.n_classes)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub lacks memory_format
    result = evaluate(model, loader, loss_fn, meta.n_classes, setup, meta.threshold, progress)
    return result, meta, len(pairs)
