"""`unet-train --eval` and the end of training: a checkpoint's scores on a set of images, per image and per
group, at the original image size, where its masks will be used.

Each image goes through the model as inference feeds it (resized by the checkpoint's rule); the
probabilities are resized back to the mask's size (as `unet-infer` does) and scored against the mask as it
is on disk. Scores at the model's input size are kept too: with the run's own split and batch size they
reproduce the validation Dice training recorded. The worst images are drawn into a picture beside the
checkpoint.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from unetkit.core.checkpoint import load_checkpoint
from unetkit.core.device import autocast_dtype, resolve_device, use_device
from unetkit.core.errors import DataError, UnetkitError
from unetkit.core.imageio import image_size
from unetkit.core.labels import IGNORE_INDEX, probabilities, resize_probabilities, to_labels
from unetkit.core.meta import ModelMeta
from unetkit.core.metrics import class_scores, confusion_counts
from unetkit.core.postprocess import candidates
from unetkit.core.preprocess import resize_masks

from .data.buckets import by_input_size, same_size_batches
from .data.crop import whole_image_batch
from .data.dataset import SampleRule, read_pair, resize_image
from .data.layouts import DatasetIndex, FolderSpec, Pair, index_dataset
from .data.split import SPLIT_FILE, Split, group_key_fn, make_split, read_split
from .loop import BatchSetup
from .losses import LossFn, default_loss, make_loss
from .report import EvalReport, ImageScore
from .worst import WorstRow, write_worst

log = logging.getLogger(__name__)

SPLITS = ("all", "train", "val")
WORST_ROWS = 4


class _EvalDataset(Dataset):
    """Pairs -> (model-input image uint8 (3, h, w), original labels int64 (H, W), position)."""

    def __init__(self, pairs: Sequence[Pair], rule: SampleRule) -> None:
        self.pairs, self.rule = list(pairs), rule

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, labels = read_pair(self.pairs[i], self.rule)
        small = resize_image(image, self.rule.resize.output_size(*labels.shape))
        return torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1), torch.from_numpy(labels).long(), i


def _collate(batch: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    """Images of one model-input size stacked (`same_size_batches`: never padded); labels at their own sizes."""
    return torch.stack([img for img, _, _ in batch]), [lab for _, lab, _ in batch], [i for _, _, i in batch]


@dataclass
class EvalSettings:
    """What to evaluate and how; None means: as the checkpoint was trained."""

    split: str = "all"
    layout: str = "auto"
    folders: FolderSpec | None = None
    group_by: str | None = None
    mask_threshold: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    workers: int = 2
    progress: bool = True
    replace_picture: bool = False  # the run's own evaluation at the end of training; --eval never replaces one
    tta: bool = False  # average each prediction with the mirrored image's, as unet-infer --tta does


def free_path(path: Path) -> Path:
    """`path`, or the first of path-2, path-3, ... (before the suffix) that does not exist: an evaluation of
    another data set with the same folder name, or of the same one again, keeps the earlier picture."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _pairs(
    checkpoint: Path, index: DatasetIndex, settings: EvalSettings, args: dict[str, Any]
) -> tuple[list[Pair], dict[Path, str], str]:
    """The pairs to score, each image's group, and the group rule in words."""
    group_by = settings.group_by or str(args.get("group_by", "auto" if settings.split == "all" else "none"))
    if settings.split == "all":
        key_of, words = group_key_fn(group_by, index.layout)
        return index.pairs, {p.image: key_of(p) for p in index.pairs}, words
    recorded = checkpoint.parent / SPLIT_FILE
    split: Split
    if recorded.exists():
        try:
            split = read_split(recorded, index)
        except DataError as exc:  # most often another data set than the run's: --split names the run's sides
            trained_on = args.get("images") or args.get("data")
            where = f" (the run trained on {trained_on})" if trained_on else ""
            raise DataError(f"{exc}. --split {settings.split} is a side of the run's own split{where}; "
                            "--split all scores every pair of another data set") from None  # fmt: skip
    else:
        log.info("no %s beside %s: drawing the split again from its training arguments", SPLIT_FILE, checkpoint)
        folds = (int(args["folds"]), int(args.get("fold", 0))) if args.get("folds") else None
        split = make_split(index, group_by, float(args.get("val_fraction", 0.2)), int(args.get("seed", 0)), folds)
    pairs = split.val if settings.split == "val" else split.train
    return pairs, split.keys, split.rule


def report_stem(checkpoint: str | os.PathLike, data: str | os.PathLike, split: str) -> Path:
    """<checkpoint folder>/<stem>-eval-<data folder name>-<split>: where an evaluation's picture (+
    "-worst.png") and, at the end of training, its numbers (+ ".json") go."""
    checkpoint = Path(checkpoint)
    name = Path(os.path.abspath(data)).name or "data"
    return checkpoint.parent / f"{checkpoint.stem}-eval-{name}-{split}"


def evaluate_checkpoint(
    checkpoint: str | os.PathLike, data: str | os.PathLike, settings: EvalSettings | None = None
) -> EvalReport:
    """Score `checkpoint` on all pairs of `data`, or on the train/val side of the split it was trained with
    (RUN/split.json beside it); the worst images are drawn into a picture beside it."""
    settings = settings or EvalSettings()
    checkpoint = Path(checkpoint)
    dev = resolve_device(settings.device)
    use_device(dev)
    model, meta = load_checkpoint(checkpoint, dev)
    args = dict(meta.extra.get("train_args", {}))
    folders = settings.folders
    if folders is not None and not folders.classes and meta.mask_kind == "multiclass":
        folders = replace(folders, classes=meta.class_names)  # class-id masks, as the model was trained on
    if folders is not None and folders.classes and len(folders.classes) == meta.n_classes > 1:
        if tuple(folders.classes) != tuple(meta.class_names) and not all(
            n.startswith("class ") for n in folders.classes
        ):
            raise UnetkitError(f"--classes {','.join(folders.classes)}: {checkpoint} names its classes "
                               f"{','.join(meta.class_names)}; leave --classes out to use them")  # fmt: skip
        folders = replace(folders, classes=meta.class_names)  # a count (--classes N) names no classes
    index = index_dataset(data, settings.layout, folders)
    if index.n_classes != meta.n_classes:
        raise UnetkitError(
            f"{checkpoint}: predicts {meta.n_classes} class channel(s) but {data} is a "
            f"{index.layout} data set with {index.n_classes}"
        )
    pairs, keys, grouping = _pairs(checkpoint, index, settings, args)
    threshold = settings.mask_threshold if settings.mask_threshold is not None else args.get("mask_threshold")
    rule = SampleRule(meta.resize_rule, index.mask_kind, threshold, index.n_classes)
    sizes = {p.image: _input_size(p, rule) for p in pairs}
    pairs = by_input_size(pairs, sizes)
    batch_size = settings.batch_size or whole_image_batch(int(args.get("batch_size", 8)), meta.trained_crop,
                                                          list(sizes.values()))  # fmt: skip
    loader = DataLoader(
        _EvalDataset(pairs, rule),
        batch_sampler=same_size_batches([sizes[p.image] for p in pairs], batch_size),
        num_workers=settings.workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
    )
    setup = BatchSetup(dev, autocast_dtype(dev), meta.mean, meta.std)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub lacks memory_format
    loss_fn = run_loss(args, meta.n_classes)
    predict = functools.partial(_predict, model, setup, settings.tta)
    images, model_counts, loss = _score(predict, loader, pairs, sizes, keys, meta, setup, index.root, loss_fn,
                                        settings.progress)  # fmt: skip
    report = EvalReport(
        checkpoint=str(checkpoint),
        data=str(data),
        split=settings.split,
        class_names=list(index.class_names),
        n_classes=meta.n_classes,
        grouping=grouping,
        resize=meta.resize_rule.describe(),
        images=images,
        model_size=class_scores(model_counts, meta.n_classes),
        loss=loss,
        recorded_dice=meta.val_dice,
        recorded_epoch=meta.epoch,
        tta=settings.tta,
    )
    worst = report.worst(WORST_ROWS)
    by_name = {s.name: p for s, p in zip(images, pairs, strict=True)}
    rows = [_worst_row(predict, meta, setup, rule, by_name[s.name], s.name, d) for s, d, _ in worst]
    stem = report_stem(checkpoint, data, settings.split)
    picture = stem.with_name(stem.name + "-worst.png")
    picture = picture if settings.replace_picture else free_path(picture)
    try:
        write_worst(picture, rows, meta.n_classes, meta.mask_kind)
    except OSError as exc:  # a read-only model folder costs the picture, not the numbers
        log.warning("warning: could not write %s (%s)", picture, exc.strerror or exc)
    else:
        report.picture, report.worst_shown = picture, [s.name for s, _, _ in worst]
    return report


def _input_size(pair: Pair, rule: SampleRule) -> tuple[int, int]:
    width, height = image_size(pair.image)
    return rule.resize.output_size(height, width)


def run_loss(train_args: dict[str, Any], n_classes: int) -> LossFn:
    """The loss the run validated with (its --loss and weights, as recorded), so the loss --eval reports is
    the one its validation reported; the default for checkpoints that record none."""
    name = train_args.get("loss") or default_loss(n_classes)
    weights = tuple(train_args.get("class_weights") or ())
    return make_loss(name, n_classes, float(train_args.get("pos_weight", 1.0)), weights)


@torch.no_grad()
def _predict(
    model: torch.nn.Module, setup: BatchSetup, tta: bool, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, probabilities) of a batch of same-size inputs; with `tta` the probabilities are averaged with
    those of the mirrored inputs, mirrored back (the loss stays that of the plain logits)."""
    with setup.autocast():
        logits = model(x).float()
        prob = probabilities(logits)
        if tta:
            prob = (prob + probabilities(model(x.flip(-1)).float()).flip(-1)) / 2
    return logits, prob


@torch.no_grad()
def _score(
    predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    loader: DataLoader,
    pairs: list[Pair],
    sizes: dict[Path, tuple[int, int]],
    keys: dict[Path, str],
    meta: ModelMeta,
    setup: BatchSetup,
    root: Path,
    loss_fn: LossFn,
    progress: bool,
) -> tuple[list[ImageScore], torch.Tensor, float]:
    """Per-image counts at the original size (plain, and after each post-processing), pooled counts at the
    model's size, and the mean loss."""
    images: list[ImageScore] = []
    model_counts = None
    total, seen = 0.0, 0
    for batch, labels, positions in tqdm(loader, desc="evaluate", unit="batch", leave=False, disable=not progress):
        logits, probs = predict(setup.inputs(batch))
        small = torch.full((len(labels), *batch.shape[-2:]), IGNORE_INDEX, dtype=torch.long)
        for j, (truth, i) in enumerate(zip(labels, positions, strict=True)):
            h, w = sizes[pairs[i].image]
            small[j, :h, :w] = resize_masks(truth[None], (h, w))[0]
            prob = probs[j, :, :h, :w]
            full = to_labels(resize_probabilities(prob, tuple(truth.shape)), meta.threshold).cpu()
            counts = confusion_counts(full, truth, meta.n_classes)
            post = {pp.flags(): confusion_counts(torch.from_numpy(pp.apply(full.numpy(), meta.n_classes,
                                                                           meta.mask_kind)), truth, meta.n_classes)
                    for pp in candidates(meta.n_classes, meta.mask_kind)}  # fmt: skip
            name = Path(os.path.relpath(pairs[i].image, root)).as_posix()
            images.append(ImageScore(name, keys[pairs[i].image], truth.shape[0], truth.shape[1], counts, post))
        y = small.to(setup.device)
        total += loss_fn(logits, y).item() * len(labels)
        seen += len(labels)
        batch_counts = confusion_counts(to_labels(probs, meta.threshold), y, meta.n_classes)
        model_counts = batch_counts if model_counts is None else model_counts + batch_counts
    if model_counts is None:
        raise UnetkitError("nothing to evaluate: the split is empty")
    return images, model_counts, total / seen


@torch.no_grad()
def _worst_row(
    predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    meta: ModelMeta,
    setup: BatchSetup,
    rule: SampleRule,
    pair: Pair,
    name: str,
    dice: float,
) -> WorstRow:
    """One image predicted again, alone, for the picture."""
    image, truth = read_pair(pair, rule)
    small = resize_image(image, rule.resize.output_size(*truth.shape))
    x = setup.inputs(torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1)[None])
    prob = predict(x)[1][0]
    pred = to_labels(resize_probabilities(prob, truth.shape), meta.threshold).cpu().numpy()
    return WorstRow(name, dice, image, truth, pred)
