"""Loading samples for training and evaluation: decode, label, scale, cache, augment, batch.

A sample is an image as uint8 (3, H, W) and a label map as int64 (H, W) with IGNORE_INDEX where no label
applies. Normalization happens later, on the training device, with `preprocess.normalize`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from unetkit.core.atomic import atomic_path
from unetkit.core.errors import DataError
from unetkit.core.imageio import binary_mask, class_id_mask, read_image, read_mask
from unetkit.core.labels import IGNORE_INDEX
from unetkit.core.meta import ResizeRule
from unetkit.core.preprocess import resize_masks, resize_pixels

from .layouts import Pair, cityscapes_train_ids

CACHE_VERSION = 3  # 3: Cityscapes masks are checked (labelIds only, not all void) before caching
Augment = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SampleRule:
    """How a pair on disk becomes a sample: the model's resize rule, what mask values mean (with the class
    count of class-id masks), and the threshold that binarises lossless masks with stray grey values (None:
    such masks are an error)."""

    resize: ResizeRule
    mask_kind: str
    mask_threshold: int | None = None
    n_classes: int = 1

    def key(self) -> str:
        classes = f"|{self.n_classes}" if self.mask_kind == "multiclass" else ""  # earlier keys stay valid
        return f"{self.resize!r}|{self.mask_kind}|{self.mask_threshold}{classes}"


def read_pair(pair: Pair, rule: SampleRule) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair at its own size: image (H, W, 3) uint8 and labels (H, W) uint8."""
    image = read_image(pair.image)
    raw = read_mask(pair.mask, class_ids=rule.mask_kind == "multiclass")
    if raw.shape != image.shape[:2]:
        raise DataError(
            f"{pair.mask}: mask is {raw.shape[1]}x{raw.shape[0]} but its image {pair.image.name} is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    return image, labels_of(raw, pair.mask, rule)


def labels_of(raw: np.ndarray, path: Path, rule: SampleRule) -> np.ndarray:
    """A mask's raw values (`read_mask`) as the labels the model learns: 0/1, class ids, or Cityscapes'
    trainIds (255: no label)."""
    if rule.mask_kind == "binary":
        return binary_mask(raw, path, rule.mask_threshold)
    if rule.mask_kind == "multiclass":
        return class_id_mask(raw, path, rule.n_classes)
    return cityscapes_train_ids(raw, path)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 by the one pixel-resizing rule (`preprocess.resize_pixels`)."""
    return resize_pixels(torch.from_numpy(image).permute(2, 0, 1), size).permute(1, 2, 0).numpy()


def load_sample(pair: Pair, rule: SampleRule) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair and resize it by the rule: image (h, w, 3) uint8 and labels (h, w) uint8."""
    image, labels = read_pair(pair, rule)
    size = rule.resize.output_size(*labels.shape)
    if size != labels.shape:
        image = resize_image(image, size)
        labels = resize_masks(torch.from_numpy(labels)[None], size)[0].numpy()
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


class SampleCache:
    """Decoded, resized samples stored once as .npz, so later epochs and runs skip JPEG decoding.

    The key hashes both files' paths, sizes and modification times with the sample rule (resize rule, mask
    kind, mask threshold), so changing a source file or the rule reads the source again. Entries are written
    atomically.
    """

    def __init__(self, root: str | os.PathLike, rule: SampleRule) -> None:
        self.root = Path(root)
        self.rule = rule

    def path(self, pair: Pair) -> Path:
        parts = [f"v{CACHE_VERSION}", self.rule.key()]
        for f in (pair.image, pair.mask):
            st = f.stat()
            parts += [str(f.resolve()), str(st.st_size), str(st.st_mtime_ns)]
        return self.root / (hashlib.sha1("\0".join(parts).encode()).hexdigest() + ".npz")

    def load(self, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
        """The cached sample, decoding and storing it first if needed."""
        try:
            path = self.path(pair)
        except FileNotFoundError as exc:
            raise DataError(f"{exc.filename}: file not found") from None
        if path.exists():
            try:
                with np.load(path) as z:
                    return z["image"], z["labels"]
            except (OSError, ValueError, KeyError):
                pass  # a damaged entry is rebuilt below
        image, labels = load_sample(pair, self.rule)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, image=image, labels=labels)
        return image, labels


class SegmentationDataset(Dataset):
    """Pairs -> (image uint8 (3, h, w), labels int64 (h, w)); an item may be `(index, seed)` to crop (a window of
    the sample, `crop.Cropper`) and augment, in that order."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        rule: SampleRule,
        augment: Augment | None = None,
        cache: SampleCache | None = None,
        crop: Augment | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.rule = rule
        self.augment = augment
        self.cache = cache
        self.crop = crop

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[i]
        return self.cache.load(pair) if self.cache else load_sample(pair, self.rule)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, labels = self.load(index)
        if self.crop is not None and seed is not None:
            image, labels = self.crop(image, labels, seed)
        if self.augment is not None and seed is not None:
            image, labels = self.augment(image, labels, seed)
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
        return image_t, torch.from_numpy(np.ascontiguousarray(labels)).long()


def pad_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples of different sizes by padding to the largest; padded labels are ignored."""
    h = max(img.shape[1] for img, _ in batch)
    w = max(img.shape[2] for img, _ in batch)
    images = torch.zeros(len(batch), 3, h, w, dtype=torch.uint8)
    labels = torch.full((len(batch), h, w), IGNORE_INDEX, dtype=torch.long)
    for i, (img, lab) in enumerate(batch):
        images[i, :, : img.shape[1], : img.shape[2]] = img
        labels[i, : lab.shape[0], : lab.shape[1]] = lab
    return images, labels


class SeededSampler(Sampler):
    """Shuffled `(index, augmentation seed)` items drawn from one generator.

    Order and augmentations depend only on the generator's state, not on the number of DataLoader workers,
    and the state is saved in last.pth, so a resumed run sees exactly the batches it would have seen. The
    draws are made when the first item is taken, not when `iter()` is called: with worker processes the
    DataLoader calls `iter()` on its batch sampler twice in its first epoch and discards one (torch's
    `_MultiProcessingDataLoaderIter`), which must not cost a draw. The batch samplers built on this one are
    generators for the same reason.
    """

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n = n
        self.generator = generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=self.generator).tolist()
        yield from zip(order, seeds, strict=True)
