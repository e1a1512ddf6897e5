"""Batches of images of similar size, so a batch padded to its largest image wastes little.

Images are put into buckets by size: each side rounded down on a geometric grid of ratio BUCKET_RATIO, so two
images in one bucket differ by less than that ratio in height and in width, and padding to the larger one
costs at most 1 - 1/BUCKET_RATIO**2 of a batch's pixels (17 % for 1.1). A bucket's last, partial batch stays
a smaller batch rather than borrowing images of another size. Each epoch the order inside the buckets and
the order of the batches are drawn from one generator (through `SeededSampler`, which also draws each
image's augmentation seed), whose state last.pth saves, so a resumed run sees the batches it would have seen.
Images of one size form one bucket: plain shuffled batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Sampler

from .dataset import SeededSampler
from .layouts import Pair

BUCKET_RATIO = 1.1


def bucket_key(height: int, width: int, ratio: float = BUCKET_RATIO) -> tuple[int, int]:
    """The grid cell of a (height, width): floor(log_ratio(side)) per side."""
    return math.floor(math.log(height) / math.log(ratio)), math.floor(math.log(width) / math.log(ratio))


def by_input_size(pairs: Sequence[Pair], sizes: dict[Path, tuple[int, int]]) -> list[Pair]:
    """Pairs ordered by model-input (height, width), so images of one size sit together and evaluation's
    same-size batches are as full as they can be (training's validation and `unet-train --eval` alike)."""
    return sorted(pairs, key=lambda p: sizes[p.image])


def same_size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Batches of indices for evaluation, in order: each a run of consecutive samples of one size, at most
    `batch_size` long. Nothing is padded, so a score does not depend on the batch size and matches inference,
    which runs each image at its own size."""
    batches: list[list[int]] = []
    for i, size in enumerate(sizes):
        if batches and len(batches[-1]) < batch_size and sizes[batches[-1][0]] == size:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def padding_fraction(sizes: Sequence[tuple[int, int]]) -> float:
    """Share of a batch's pixels that is padding when `sizes` are padded to their largest height and width."""
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    return 1 - sum(a * b for a, b in sizes) / (len(sizes) * h * w)


class BucketBatchSampler(Sampler):
    """Lists of `(index, augmentation seed)`, each list from one size bucket; for DataLoader's batch_sampler.

    `sizes` are the (height, width) each sample has when it reaches the model (after the resize rule).
    """

    def __init__(
        self,
        sizes: Sequence[tuple[int, int]],
        batch_size: int,
        generator: torch.Generator,
        ratio: float = BUCKET_RATIO,
    ) -> None:
        self.items = SeededSampler(len(sizes), generator)
        self.generator = generator
        self.batch_size = batch_size
        self.keys = [bucket_key(h, w, ratio) for h, w in sizes]

    def _bucket_sizes(self) -> list[int]:
        counts: dict[tuple[int, int], int] = {}
        for key in self.keys:
            counts[key] = counts.get(key, 0) + 1
        return list(counts.values())

    def __len__(self) -> int:
        return sum(-(-n // self.batch_size) for n in self._bucket_sizes())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buckets: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for index, seed in self.items:  # shuffled order, so each bucket's order is shuffled too
            buckets.setdefault(self.keys[index], []).append((index, seed))
        batches = [
            members[i : i + self.batch_size]
            for _, members in sorted(buckets.items())
            for i in range(0, len(members), self.batch_size)
        ]
        order = torch.randperm(len(batches), generator=self.generator).tolist()
        yield from (batches[i] for i in order)
