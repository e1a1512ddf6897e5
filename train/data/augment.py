"""Joint image + mask augmentation (albumentations 2.0): the seed's recipe, reproducible per sample.

Horizontal flip, rotation within +-15 degrees, random resized crop (80-100 % of the area, back to the
sample's own size), brightness/contrast and blur. Each call is seeded, so a sample's augmentation depends
only on the seed the sampler drew for it. Pixels rotated in from outside the image get IGNORE_INDEX labels.

albumentations' `Compose.set_random_seed` gives every transform the same seed, so their first draws are equal
and each "p=0.5" transform was applied to the same half of the samples (3 patterns in all instead of 16 x 2);
each transform gets a seed of its own from the sample's (`seed_pipeline`).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from unetkit.core.labels import IGNORE_INDEX

# albumentations asks PyPI for a newer version on import; never do that from a training job.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A


class Augmenter:
    """Callable `(image, labels, seed) -> (image, labels)`, picklable for DataLoader workers."""

    def __init__(self) -> None:
        self._pipelines: dict[tuple[int, int], A.Compose] = {}

    def _pipeline(self, height: int, width: int) -> A.Compose:
        key = (height, width)
        if key not in self._pipelines:
            aspect = width / height
            self._pipelines[key] = A.Compose(
                [
                    A.HorizontalFlip(p=0.5),
                    A.Rotate(limit=15, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX, p=0.5),
                    A.RandomResizedCrop(
                        size=(height, width), scale=(0.8, 1.0), ratio=(aspect * 3 / 4, aspect * 4 / 3), p=0.5
                    ),
                    A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
                    A.GaussianBlur(blur_limit=(3, 5), p=0.2),
                ]
            )
        return self._pipelines[key]

    def __call__(self, image: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        pipeline = self._pipeline(*image.shape[:2])
        seed_pipeline(pipeline, seed)
        out = pipeline(image=image, mask=labels)
        return out["image"], out["mask"]


def seed_pipeline(pipeline: A.Compose, seed: int) -> None:
    """Seed `pipeline` for one sample, each transform from its own child of `seed` (numpy's SeedSequence), so
    whether one applies says nothing about whether another does."""
    pipeline.set_random_seed(seed)
    children = np.random.SeedSequence(seed).spawn(len(pipeline.transforms))
    for transform, child in zip(pipeline.transforms, children, strict=True):
        transform.set_random_seed(int(child.generate_state(1)[0]))
