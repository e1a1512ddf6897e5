"""Feeding images through an engine in full batches: whole images, or tiles from several images at once.

Whole-image mode batches consecutive images of the same model-input size. Tiled mode cuts every image into
fixed-size tiles and fills each batch with tiles from as many images as it takes, so the GPU stays full
whatever the image sizes; each tile's probabilities are blended into its image's buffers, and an image is
finished when its last tile is. For engines that recompile per shape the last batch is padded to full size.
With test-time augmentation (`tta`) every batch also runs mirrored left-right, and the two probability maps
are averaged.
Everything runs on the current CUDA stream of the caller; results come back in the order images went in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from unetkit.core.labels import probabilities

from .engines.base import Engine
from .settings import InferSettings
from .tiling import blend_weights, default_overlap, tile_grid

Infer = Callable[[torch.Tensor], torch.Tensor]
Check = Callable[[tuple[int, ...]], None]


@dataclass
class Job:
    """One image in flight: its model input on the device and, once finished, its probabilities."""

    key: Any
    image: torch.Tensor  # (3, h, w) normalized, in the engine's input dtype, on the device
    extra: dict[str, Any] = field(default_factory=dict)  # what the caller needs later (original size, pixels)
    prob: torch.Tensor | None = None  # (C, h, w) float32 when finished
    # tiled mode
    acc: torch.Tensor | None = None
    norm: torch.Tensor | None = None
    remaining: int = 0


class BatchRunner:
    """Push jobs in, get finished jobs out (in order); `flush()` at the end runs what is left."""

    def __init__(
        self,
        infer: Infer,
        n_classes: int,
        batch: int,
        tile: int = 0,
        overlap: int | None = None,
        blend: str = "gaussian",
        static_shapes: bool = False,
        check: Check | None = None,
        tta: bool = False,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.infer, self.n_classes, self.batch = infer, n_classes, batch
        self.tile = tile
        self.overlap = default_overlap(tile) if overlap is None and tile else (overlap or 0)
        self.blend = blend
        self.static_shapes = static_shapes
        self.check = check  # raises for an input shape the engine cannot take (a TensorRT profile's limits)
        self.tta = tta
        self._queue: deque[Job] = deque()  # jobs not yet handed back, in order
        self._pending: list[Any] = []  # whole mode: jobs; tiled mode: (job, y, x)
        if tile:
            tile_grid(tile, tile, tile, self.overlap)  # validates tile and overlap now, not mid-run
            blend_weights(tile, blend)

    @classmethod
    def for_engine(cls, engine: Engine, settings: InferSettings) -> BatchRunner:
        """The runner for `engine` with these settings (the batch already resolved for its device)."""
        return cls(
            engine, engine.n_classes, settings.batch_size, settings.tile, settings.tile_overlap, settings.blend,
            engine.static_shapes, check=engine.check, tta=settings.tta,
        )  # fmt: skip

    def push(self, job: Job) -> list[Job]:
        """Queue `job`; returns the jobs finished so far, in order. An image the engine cannot take whole
        raises (EngineShapeError) before it is queued, so it fails alone and the run goes on."""
        if not self.tile and self.check is not None:
            self.check((1, *job.image.shape))
        self._queue.append(job)
        if self.tile:
            self._add_tiles(job)
        else:
            if self._pending and self._pending[0].image.shape != job.image.shape:
                self._run_whole()
            self._pending.append(job)
            if len(self._pending) == self.batch:
                self._run_whole()
        return self._finished()

    def flush(self) -> list[Job]:
        if self._pending and self.tile:
            self._run_tiles()
        elif self._pending:
            self._run_whole()
        return self._finished()

    def _finished(self) -> list[Job]:
        done = []
        while self._queue and self._queue[0].prob is not None:
            done.append(self._queue.popleft())
        return done

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.static_shapes and n < self.batch:  # one shape for engines that recompile per shape
            x = torch.cat([x, x.new_zeros((self.batch - n, *x.shape[1:]))])
        prob = probabilities(self.infer(x)[:n])
        if self.tta:  # the mirrored image's probabilities, mirrored back, averaged in (same shape: same engine call)
            prob = (prob + probabilities(self.infer(x.flip(-1))[:n]).flip(-1)) / 2
        return prob

    def _run_whole(self) -> None:
        jobs, self._pending = self._pending, []
        prob = self._forward(torch.stack([j.image for j in jobs]))
        for job, p in zip(jobs, prob, strict=True):
            job.prob = p

    def _add_tiles(self, job: Job) -> None:
        _, h, w = job.image.shape
        t = self.tile
        if h < t or w < t:  # smaller than a tile: pad (zeros are the mean colour after normalization)
            job.image = F.pad(job.image, (0, max(t - w, 0), 0, max(t - h, 0)))
        ph, pw = job.image.shape[1:]
        grid = tile_grid(ph, pw, t, self.overlap)
        job.acc = torch.zeros((self.n_classes, ph, pw), dtype=torch.float32, device=job.image.device)
        job.norm = torch.zeros((ph, pw), dtype=torch.float32, device=job.image.device)
        job.remaining = len(grid)
        job.extra["model_hw"] = (h, w)
        for y, x in grid:
            self._pending.append((job, y, x))
            if len(self._pending) == self.batch:
                self._run_tiles()

    def _run_tiles(self) -> None:
        tiles, self._pending = self._pending, []
        t = self.tile
        prob = self._forward(torch.stack([job.image[:, y : y + t, x : x + t] for job, y, x in tiles]))
        weight = blend_weights(t, self.blend, prob.device)
        for (job, y, x), p in zip(tiles, prob, strict=True):
            job.acc[:, y : y + t, x : x + t] += p * weight
            job.norm[y : y + t, x : x + t] += weight
            job.remaining -= 1
            if job.remaining == 0:
                h, w = job.extra["model_hw"]
                job.prob = (job.acc / job.norm)[:, :h, :w]
                job.acc = job.norm = None


def run_all(runner: BatchRunner, jobs: Iterable[Job]) -> list[Job]:
    """Every job through `runner`, finished, in order (for callers that hold all images at once)."""
    done = []
    for job in jobs:
        done += runner.push(job)
    return done + runner.flush()
