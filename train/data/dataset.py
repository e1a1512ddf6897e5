"""Loading samples for training and evaluation: decode, label, scale, cache, augment, batch.

A sample is an image as uint8 (3, H, W) and a label map as int64 (H, W) with IGNORE_INDEX where no label
applies. Normalization happens later, on the training device, with `preprocess.normalize`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from unetkit.core.atomic import atomic_path
from unetkit.core.errors import DataError
from unetkit.core.imageio import binary_mask, read_image, read_mask
from unetkit.core.labels import IGNORE_INDEX
from unetkit.core.preprocess import resize_masks, scale_pixels

from .layouts import Pair, cityscapes_lut

CACHE_VERSION = 1
Augment = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def load_sample(pair: Pair, scale: float, mask_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair and scale it: image (h, w, 3) uint8 and labels (h, w) uint8."""
    image = read_image(pair.image)
    raw = read_mask(pair.mask)
    if raw.shape != image.shape[:2]:
        raise DataError(
            f"{pair.mask}: mask is {raw.shape[1]}x{raw.shape[0]} but its image {pair.image.name} is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    labels = binary_mask(raw, pair.mask) if mask_kind == "binary" else cityscapes_lut()[raw]
    if scale != 1.0:
        scaled = scale_pixels(torch.from_numpy(image).permute(2, 0, 1), scale)
        image = scaled.permute(1, 2, 0).numpy()
        labels = resize_masks(torch.from_numpy(labels)[None], (scaled.shape[-2], scaled.shape[-1]))[0].numpy()
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


class SampleCache:
    """Decoded, scaled samples stored once as .npz, so later epochs and runs skip JPEG decoding.

    The key hashes both files' paths, sizes and modification times with the scale and mask kind, so
    changing a source file or the scale reads the source again. Entries are written atomically.
    """

    def __init__(self, root: str | os.PathLike, scale: float, mask_kind: str) -> None:
        self.root = Path(root)
        self.scale = scale
        self.mask_kind = mask_kind

    def path(self, pair: Pair) -> Path:
        parts = [f"v{CACHE_VERSION}", repr(self.scale), self.mask_kind]
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
        image, labels = load_sample(pair, self.scale, self.mask_kind)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, image=image, labels=labels)
        return image, labels


class SegmentationDataset(Dataset):
    """Pairs -> (image uint8 (3, h, w), labels int64 (h, w)); an item may be `(index, seed)` to augment."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        scale: float,
        mask_kind: str,
        augment: Augment | None = None,
        cache: SampleCache | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.scale = scale
        self.mask_kind = mask_kind
        self.augment = augment
        self.cache = cache

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[i]
        return self.cache.load(pair) if self.cache else load_sample(pair, self.scale, self.mask_kind)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, labels = self.load(index)
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


def split_pairs(pairs: Sequence[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Official split where the data set has one (Cityscapes), else a seeded random split."""
    if any(p.split == "val" for p in pairs):
        return [p for p in pairs if p.split != "val"], [p for p in pairs if p.split == "val"]
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    if len(pairs) < 2:
        raise DataError(f"{len(pairs)} image/mask pair(s): at least 2 are needed to train and validate")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(pairs) - 1, max(1, round(len(pairs) * val_fraction)))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [pairs[i] for i in train], [pairs[i] for i in val]


class SeededSampler(Sampler):
    """Shuffled `(index, augmentation seed)` items drawn from one generator.

    Order and augmentations depend only on the generator's state, not on the number of DataLoader workers,
    and the state is saved in last.pth, so a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n = n
        self.generator = generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=self.generator).tolist()
        return iter(zip(order, seeds, strict=True))
