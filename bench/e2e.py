"""The end-to-end scope: JPEG files in, masks written, through unet-infer's own pipeline.

Each engine first processes a few images (compilation, cuDNN autotuning, allocator warm-up), then the
whole set is timed. The stage split is busy time per image (decode, upload, compute, download, write);
stages overlap, so it says where the time goes, not how it adds up.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unetkit.core.errors import UnetkitError
from unetkit.core.imageio import image_size
from unetkit.core.meta import ModelMeta
from unetkit.core.preprocess import input_size
from unetkit.infer.engines import Engine
from unetkit.infer.io import discover
from unetkit.infer.pipeline import RunSummary
from unetkit.infer.predictor import Predictor
from unetkit.infer.settings import InferSettings, OutputOptions
from unetkit.train.data.synth import write_synthetic

from .runner import EngineSpec, Row, device_problem, failure_reason

log = logging.getLogger(__name__)


@dataclass
class E2ERow:
    engine: str
    precision: str
    batch: int
    status: str = "ok"
    reason: str = ""
    images: int = 0
    failed: int = 0  # images the timed pass could not process (listed in the log)
    seconds: float | None = None
    images_per_s: float | None = None
    stage_ms_per_image: dict[str, float] = field(default_factory=dict)
    model_images_per_s: float | None = None
    e2e_over_model: float | None = None
    decoder: str = ""

    @property
    def label(self) -> str:
        return f"{self.engine} {self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def synthetic_jpegs(folder: Path, n: int, image_hw: tuple[int, int]) -> Path:
    """n Carvana-like JPEGs of the benchmark's size (the synthetic data set's images)."""
    write_synthetic(folder, n, (image_hw[1], image_hw[0]), seed=1, progress=False)
    return folder / "train"


@dataclass
class E2EImages:
    """The folder's images as the end-to-end scope sees them, from their headers: those it can time, those it
    leaves out (unreadable), and how many of the readable ones have each model input size (H, W)."""

    readable: list[Path]
    unreadable: list[str]  # "path: reason"
    input_sizes: Counter

    def same_input(self, model_hw: tuple[int, int]) -> bool:
        """True when every image is fed to the model at `model_hw`, the model-only rows' size: only then is
        e2e/model a ratio of like with like."""
        return set(self.input_sizes) == {tuple(model_hw)}

    def describe(self) -> str:
        sizes = ", ".join(f"{w}x{h} ({n})" for (h, w), n in self.input_sizes.most_common(3))
        more = " ..." if len(self.input_sizes) > 3 else ""
        left = f"; {len(self.unreadable)} unreadable, left out" if self.unreadable else ""
        return f"{len(self.readable)} images, model inputs {sizes}{more}{left}"


def survey(images: Path, meta: ModelMeta) -> E2EImages:
    """Read every image's header once, before any timing (a file that cannot be read is named, not timed)."""
    readable: list[Path] = []
    unreadable: list[str] = []
    sizes: Counter = Counter()
    with tempfile.TemporaryDirectory(prefix="unet-bench-e2e-") as scratch:
        items = discover(images, Path(scratch))
    for item in items:
        try:
            w, h = image_size(item.source)
        except UnetkitError as exc:
            unreadable.append(str(exc))
            continue
        readable.append(item.source)
        sizes[input_size(h, w, meta)] += 1
    return E2EImages(readable, unreadable, sizes)


def bench_e2e(
    specs: list[EngineSpec],
    make: Callable[[EngineSpec], Engine],
    images: Path,
    batch: int,
    workers: int,
    model_rows: list[Row],
    device: torch.device,
    found: E2EImages,
    model_hw: tuple[int, int],
) -> list[E2ERow]:
    """Each engine over the readable images of `found`; e2e/model only where their model inputs are the
    model-only rows' `model_hw`."""
    rows = []
    model = {(r.engine, r.precision, r.batch): r for r in model_rows}
    keep = set(found.readable)
    with tempfile.TemporaryDirectory(prefix="unet-bench-e2e-") as scratch:
        items_all = [it for it in discover(images, Path(scratch) / "unused") if it.source in keep]
        for spec in specs:
            row = E2ERow(spec.name, spec.precision, batch, images=len(items_all))
            rows.append(row)
            if not items_all:
                row.status, row.reason = "failed", "no readable image"
                continue
            try:
                engine = make(spec)
            except UnetkitError as exc:
                row.status, row.reason = "unavailable", str(exc)
                continue
            with engine:
                summary = _run(engine, device, images, keep, Path(scratch) / f"{spec.name}-{spec.precision}", batch,
                               workers, row)  # fmt: skip
            if summary is None:
                continue
            row.seconds, row.images_per_s = summary.seconds, summary.images_per_s
            row.decoder = summary.settings["decoder"]
            row.failed = len(summary.failures)
            if summary.written:
                row.stage_ms_per_image = {k: 1000 * v / summary.written for k, v in summary.stages.items()}
            if not summary.written:
                first = summary.failures[0][1] if summary.failures else "nothing written"
                row.status, row.reason = "failed", f"every image failed (first: {first})"
                continue
            ref = model.get((spec.name, spec.precision, batch))
            if ref is not None and ref.images_per_s and found.same_input(model_hw):
                row.model_images_per_s = ref.images_per_s
                row.e2e_over_model = row.images_per_s / ref.images_per_s
    return rows


def _run(
    engine: Engine,
    device: torch.device,
    images: Path,
    keep: set[Path],
    scratch: Path,
    batch: int,
    workers: int,
    row: E2ERow,
) -> RunSummary | None:
    """A warm-up pass over a few images, then the timed pass over all of them (those in `keep`); None (row says
    why) on failure."""
    problem = device_problem(engine, device)
    if problem:
        row.status, row.reason = "unavailable", problem
        return None
    predictor = Predictor.from_engine(engine, InferSettings(batch=batch, workers=workers))
    try:
        pipeline = predictor.pipeline(OutputOptions(progress=False))
        pipeline.run([it for it in discover(images, scratch / "warm") if it.source in keep][: 2 * batch])
        return pipeline.run([it for it in discover(images, scratch / "timed") if it.source in keep])
    except UnetkitError as exc:
        row.status, row.reason = "failed", str(exc)
        return None
    except Exception as exc:  # a backend that fails to compile or run fails its row, not the whole report
        log.debug("%s failed", engine.label, exc_info=True)
        row.status, row.reason = "failed", failure_reason(exc)
        return None
