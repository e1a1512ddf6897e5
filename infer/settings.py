"""Inference settings, owned in one place and checked once, before any image is read.

`InferSettings` says how images go through an engine (tiling, batching, decoding threads); `OutputOptions`
what is written for each one. `Predictor` owns both; `unet-infer`, `unet-bench`'s end-to-end scope and the
Python API all build their runs from them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

from unetkit.core.cli import DEFAULT_WORKERS
from unetkit.core.errors import UnetkitError
from unetkit.core.postprocess import PostProcess

from .tiling import BLEND_MODES, MIN_TILE, default_overlap, max_overlap

DECODERS = ("auto", "cpu", "nvjpeg")
#: Images (or tiles) per engine call when none is asked for: a GPU wants full batches, a CPU gains little.
DEFAULT_BATCH = {"cuda": 8, "cpu": 2}


#: The files a run may write beside each mask: probability maps (save_prob) and overlays (overlay).
SIBLINGS = (".prob.png", ".overlay.jpg")


@dataclass(frozen=True)
class InferSettings:
    """How images go through the engine."""

    tile: int = 0  # tile edge in model-input pixels; 0 predicts whole images
    overlap: int | None = None  # minimum tile overlap in pixels; None: tile // 4
    blend: str = "gaussian"
    batch: int | None = None  # None: DEFAULT_BATCH for the engine's device
    workers: int = DEFAULT_WORKERS  # decoding and encoding threads
    decoder: str = "auto"  # JPEG decoding: auto (nvJPEG where usable), cpu, nvjpeg
    tta: bool = False  # also predict the mirrored image and average: the flip training augments with
    keep_largest: bool = PostProcess.keep_largest  # post-processing of each mask at its original size, as
    min_area: int = PostProcess.min_area  # `postprocess` (which owns the defaults and the checks) says
    fill_holes: bool = PostProcess.fill_holes

    def __post_init__(self) -> None:
        _ = self.postprocess  # made (and checked) once, first: a bad --min-area fails before the rest
        problems = [
            (
                self.tile == 0 or self.tile >= MIN_TILE,
                f"--tile {self.tile}: must be 0 (whole images) or a tile edge of at least {MIN_TILE} pixels",
            ),
            (self.tile or self.overlap is None, f"--overlap {self.overlap}: only applies to tiles; give --tile too"),
            (self.batch is None or self.batch >= 1, f"--batch {self.batch}: must be at least 1"),
            (self.workers >= 1, f"--workers {self.workers}: must be at least 1"),
            (self.blend in BLEND_MODES, f"--blend {self.blend}: choose one of {', '.join(BLEND_MODES)}"),
            (self.decoder in DECODERS, f"--decoder {self.decoder}: choose one of {', '.join(DECODERS)}"),
        ]
        if self.tile >= MIN_TILE and self.overlap is not None:
            most = max_overlap(self.tile)
            problems.append((0 <= self.overlap <= most, f"--overlap {self.overlap}: must be in [0, {most}] for "
                             f"--tile {self.tile} (at most half a tile)"))  # fmt: skip
        for ok, message in problems:
            if not ok:
                raise UnetkitError(message)

    @functools.cached_property
    def postprocess(self) -> PostProcess:
        """What each mask gets after the threshold or argmax: components kept, dropped or filled."""
        return PostProcess(self.keep_largest, self.min_area, self.fill_holes)

    @property
    def tile_overlap(self) -> int:
        """The overlap tiles get: the one asked for, or a quarter of the tile."""
        if not self.tile:
            return 0
        return default_overlap(self.tile) if self.overlap is None else self.overlap

    @property
    def batch_size(self) -> int:
        """The batch once resolved for a device (see `for_device`)."""
        if self.batch is None:
            raise ValueError("resolve the batch for the engine's device first (InferSettings.for_device)")
        return self.batch

    def for_device(self, device_type: str) -> InferSettings:
        """These settings with the batch size resolved for an engine on `device_type`."""
        return self if self.batch is not None else replace(self, batch=DEFAULT_BATCH.get(device_type, 2))


@dataclass(frozen=True)
class OutputOptions:
    """What a folder run writes besides each image's mask."""

    save_prob: bool = False  # <name>.prob.png
    overlay: bool = False  # <name>.overlay.jpg
    palette: bool = False  # multi-class masks as palette PNGs
    rle: Path | None = None  # Carvana's Kaggle CSV
    resume: bool = False  # skip images whose outputs exist
    progress: bool = True

    def siblings(self) -> list[str]:
        """The endings of the files written beside each mask, as asked for: '.prob.png', '.overlay.jpg'."""
        return [suffix for wanted, suffix in zip((self.save_prob, self.overlay), SIBLINGS, strict=True) if wanted]
