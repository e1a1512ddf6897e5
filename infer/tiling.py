"""Tiling arithmetic for sliding-window prediction: pure functions on sizes and weights."""

from __future__ import annotations

#: Default tile edge (model-input pixels) of `unet-infer --tile`; export's default TensorRT profile covers it.
DEFAULT_TILE = 512
