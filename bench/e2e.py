"""The end-to-end scope: JPEG files in, masks written, through unet-infer's own pipeline.

Each engine first processes a few images (compilation, cuDNN autotuning, allocator warm-up), then the
whole set is timed. The stage split is busy time per image (decode, upload, compute, download, write);
stages overlap, so it says where the time goes, not how it adds up.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unetkit.core.errors import UnetkitError
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


def bench_e2e(
    specs: list[EngineSpec],
    make: Callable[[EngineSpec], Engine],
    images: Path,
    batch: int,
    workers: int,
    model_rows: list[Row],
    device: torch.device,
) -> list[E2ERow]:
    rows = []
    model = {(r.engine, r.precision, r.batch): r for r in model_rows}
    with tempfile.TemporaryDirectory(prefix="unet-bench-e2e-") as scratch:
        items_all = discover(images, Path(scratch) / "unused")
        for spec in specs:
            row = E2ERow(spec.name, spec.precision, batch, images=len(items_all))
            rows.append(row)
            try:
                engine = make(spec)
            except UnetkitError as exc:
                row.status, row.reason = "unavailable", str(exc)
                continue
            with engine:
                summary = _run(engine, device, images, Path(scratch) / f"{spec.name}-{spec.precision}", batch,
                               workers, row)  # fmt: skip
            if summary is None:
                continue
            row.seconds, row.images_per_s = summary.seconds, summary.images_per_s
            row.decoder = summary.settings["decoder"]
            if summary.written:
                row.stage_ms_per_image = {k: 1000 * v / summary.written for k, v in summary.stages.items()}
            ref = model.get((spec.name, spec.precision, batch))
            if ref is not None and ref.images_per_s:
                row.model_images_per_s = ref.images_per_s
                row.e2e_over_model = row.images_per_s / ref.images_per_s
    return rows


def _run(
    engine: Engine, device: torch.device, images: Path, scratch: Path, batch: int, workers: int, row: E2ERow
) -> RunSummary | None:
    """A warm-up pass over a few images, then the timed pass over all of them; None (row says why) on failure."""
    problem = device_problem(engine, device)
    if problem:
        row.status, row.reason = "unavailable", problem
        return None
    predictor = Predictor.from_engine(engine, InferSettings(batch=batch, workers=workers))
    try:
        pipeline = predictor.pipeline(OutputOptions(progress=False))
        pipeline.run(discover(images, scratch / "warm")[: 2 * batch])
        return pipeline.run(discover(images, scratch / "timed"))
    except UnetkitError as exc:
        row.status, row.reason = "failed", str(exc)
        return None
    except Exception as exc:  # a backend that fails to compile or run fails its row, not the whole report
        log.debug("%s failed", engine.label, exc_info=True)
        row.status, row.reason = "failed", failure_reason(exc)
        return None
