"""Run-length encoding of binary masks in Carvana's Kaggle submission format."""

from __future__ import annotations

import numpy as np


def rle_encode(mask: np.ndarray) -> str:
    """'start length start length ...' of the foreground runs, 1-indexed, pixels numbered row by row (left to
    right, then top to bottom), as Carvana's train_masks.csv; an empty mask gives ''."""
    pixels = np.concatenate([[0], np.asarray(mask).reshape(-1) > 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(pixels)) + 1
    edges[1::2] -= edges[0::2]
    return " ".join(map(str, edges))
