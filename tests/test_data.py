"""Sample loading: resizing, the cache, seeded sampling and augmentation, batching."""

import os
import time
from typing import Any

import numpy as np
import pytest
import torch

from unetkit.core.labels import IGNORE_INDEX
from unetkit.core.meta import ResizeRule
from unetkit.core.preprocess import scaled_size
from unetkit.train.data.dataset import (
    SampleCache,
    SampleRule,
    SeededSampler,
    SegmentationDataset,
    load_sample,
    pad_collate,
)
from unetkit.train.data.layouts import index_dataset

HALF = SampleRule(ResizeRule(scale=0.5), "binary")


def augmenter() -> Any:
    """The training augmenter; its tests skip where albumentations (the `train` extra) is not installed."""
    pytest.importorskip("albumentations", reason="albumentations (unetkit[train]) is not installed")
    from unetkit.train.data.augment import Augmenter

    return Augmenter()


def test_scale_is_bilinear_for_images_and_nearest_for_masks(synth_small):
    pair = index_dataset(synth_small).pairs[0]
    image, labels = load_sample(pair, HALF)
    assert image.shape == (64, 96, 3) and image.dtype == np.uint8
    assert labels.shape == (64, 96) and set(np.unique(labels)) == {0, 1}  # nearest: no in-between values
    assert scaled_size(1280, 1918, 0.5) == (640, 959)


def test_cache_stores_once_and_is_invalidated_by_changes(tmp_path, synth_small):
    pair = index_dataset(synth_small).pairs[0]
    cache = SampleCache(tmp_path / "cache", HALF)
    first = cache.load(pair)
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1
    again = cache.load(pair)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert list((tmp_path / "cache").iterdir()) == entries  # read back, not rewritten
    # a different resize rule or mask threshold is a different entry
    SampleCache(tmp_path / "cache", SampleRule(ResizeRule(scale=0.25), "binary")).load(pair)
    SampleCache(tmp_path / "cache", SampleRule(ResizeRule("size", size=(32, 48)), "binary")).load(pair)
    SampleCache(tmp_path / "cache", SampleRule(ResizeRule(scale=0.5), "binary", mask_threshold=100)).load(pair)
    assert len(list((tmp_path / "cache").iterdir())) == 4
    # a touched source file is read again
    stamp = time.time() + 5
    os.utime(pair.mask, (stamp, stamp))
    assert cache.path(pair) not in entries
    cache.load(pair)
    assert len(list((tmp_path / "cache").iterdir())) == 5


def test_sampler_order_depends_only_on_the_generator_state():
    g = torch.Generator().manual_seed(0)
    sampler = SeededSampler(10, g)
    state = g.get_state()
    first = list(sampler)
    g.set_state(state)
    assert list(sampler) == first
    assert sorted(i for i, _ in first) == list(range(10))
    assert list(sampler) != first  # the next epoch differs


def test_augmentation_is_reproducible_per_seed_and_fills_with_ignore():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    labels = (rng.random((40, 60)) > 0.5).astype(np.uint8)
    aug = augmenter()
    a = aug(image, labels, 123)
    b = aug(image, labels, 123)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].shape == image.shape and a[1].shape == labels.shape
    outputs = [aug(image, labels, s)[1] for s in range(40)]
    assert any(not np.array_equal(o, labels) for o in outputs)
    assert any((o == IGNORE_INDEX).any() for o in outputs)  # rotated-in corners are ignored
    assert all(set(np.unique(o)) <= {0, 1, IGNORE_INDEX} for o in outputs)


def test_each_transform_decides_on_its_own_whether_to_apply():
    """albumentations' rule (BasicTransform.should_apply: py_random.random() < p) after the sample's seeding:
    each transform applies to its p of the samples, independently of the others (one seed for all once made
    every p=0.5 transform apply to the same half)."""
    aug = augmenter()
    from unetkit.train.data.augment import seed_pipeline

    pipeline = aug._pipeline(40, 60)
    decisions = []
    for seed in range(2000):
        seed_pipeline(pipeline, seed)
        decisions.append([t.py_random.random() < t.p for t in pipeline.transforms])
    applied = np.array(decisions)
    rates = applied.mean(axis=0)
    assert rates == pytest.approx([t.p for t in pipeline.transforms], abs=0.04)
    flip, rotate = applied[:, 0], applied[:, 1]
    assert (flip & rotate).mean() == pytest.approx(0.25, abs=0.04)  # independent: 0.5 x 0.5
    assert len({tuple(row) for row in decisions}) == 32  # every combination of the five occurs


def test_dataset_items_and_pad_collate(synth_small):
    pairs = index_dataset(synth_small).pairs[:2]
    ds = SegmentationDataset(pairs, HALF, augment=augmenter())
    image, labels = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 96)
    assert labels.dtype == torch.long and labels.shape == (64, 96)
    assert torch.equal(ds[(1, 7)][0], ds[(1, 7)][0])
    small = (torch.ones(3, 2, 3, dtype=torch.uint8), torch.ones(2, 3, dtype=torch.long))
    big = (torch.ones(3, 4, 5, dtype=torch.uint8), torch.zeros(4, 5, dtype=torch.long))
    images, masks = pad_collate([small, big])
    assert images.shape == (2, 3, 4, 5) and masks.shape == (2, 4, 5)
    assert (masks[0, 2:] == IGNORE_INDEX).all() and (masks[0, :, 3:] == IGNORE_INDEX).all()
    assert (masks[0, :2, :3] == 1).all() and (images[0, :, 2:] == 0).all()
