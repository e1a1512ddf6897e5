"""The Python API for services and notebooks: `Predictor(...).predict(image)` and `.predict_folder(folder)`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from unetkit.train.imageio import read_image

from .batching import BatchRunner, Job, run_all
from .engines import create_engine
from .io import default_out_dir, discover
from .pipeline import InferOptions, Pipeline, RunSummary
from .transforms import model_input, to_labels, to_size

ImageLike = str | os.PathLike | np.ndarray | Image.Image


def engine_for(source: Path, engine: str | None) -> str:
    """The engine a source implies: .onnx -> onnx, .engine/.plan -> trt, a checkpoint -> torch."""
    if engine:
        return engine
    return {".onnx": "onnx", ".engine": "trt", ".plan": "trt"}.get(source.suffix.lower(), "torch")


class Predictor:
    """Masks from a checkpoint or an exported artifact, with any engine.

    `Predictor("runs/x/best.pth", engine="trt")` finds best.fp16.engine beside the checkpoint;
    `Predictor("deploy/best.onnx")` runs that file. Masks are uint8 arrays of the image's own size: 0/1 for
    binary models, class indices for multi-class ones.
    """

    def __init__(
        self,
        source: str | os.PathLike = "best.pth",
        engine: str | None = None,
        device: str | torch.device = "auto",
        precision: str | None = None,
        tile: int = 0,
        overlap: int | None = None,
        batch: int | None = None,
        blend: str = "gaussian",
        compile_mode: str | None = None,
    ) -> None:
        source = Path(source)
        name = engine_for(source, engine)
        is_checkpoint = source.suffix.lower() not in (".onnx", ".engine", ".plan")
        self.engine = create_engine(
            name,
            checkpoint=source if is_checkpoint else None,
            model=None if is_checkpoint else source,
            device=device,
            precision=precision,
            compile_mode=compile_mode,
        )
        self.tile, self.overlap, self.blend = tile, overlap, blend
        self.batch = batch or (8 if self.engine.device.type == "cuda" else 2)

    @property
    def meta(self) -> dict[str, Any]:
        return self.engine.meta

    def _runner(self) -> BatchRunner:
        e = self.engine
        return BatchRunner(
            e, e.n_classes, self.batch, self.tile, self.overlap, self.blend, e.static_shapes, check=e.check
        )

    @staticmethod
    def _pixels(image: ImageLike) -> np.ndarray:
        if isinstance(image, Image.Image):
            return np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
                raise ValueError(f"expected a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
            return image[:, :, :3]
        return read_image(image)

    @torch.inference_mode()
    def predict(
        self, images: ImageLike | Sequence[ImageLike], return_prob: bool = False
    ) -> np.ndarray | list[np.ndarray]:
        """Mask(s) for one image or a list: paths, uint8 RGB arrays or PIL images. With `return_prob`,
        float32 probabilities (C, H, W) instead."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        jobs = []
        for i, image in enumerate(batch):
            pixels = torch.tensor(self._pixels(image), device=self.engine.device)
            pixels = pixels.permute(2, 0, 1)
            x = model_input(pixels, self.meta, self.engine.input_dtype)
            jobs.append(Job(i, x, {"size": tuple(pixels.shape[-2:])}))
        results = []
        for job in run_all(self._runner(), jobs):
            prob = to_size(job.prob, job.extra["size"])
            out = prob if return_prob else to_labels(prob, float(self.meta["threshold"]))
            results.append(out.cpu().numpy())
        return results[0] if single else results

    def predict_folder(
        self, folder: str | os.PathLike, out: str | os.PathLike | None = None, recursive: bool = False, **options: Any
    ) -> RunSummary:
        """Masks for every image in `folder`, written under `out` (default <folder>_masks); see unet-infer."""
        out = Path(out) if out is not None else default_out_dir(folder)
        items = discover(folder, out, recursive)
        opts = InferOptions(tile=self.tile, overlap=self.overlap, blend=self.blend, batch=self.batch, **options)
        return Pipeline(self.engine, opts).run(items)
