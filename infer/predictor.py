"""The Python API and the one owner of inference settings: `Predictor(...).predict(image)` and
`.predict_folder(folder)`. `unet-infer` and `unet-bench`'s end-to-end scope are built on it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from unetkit.core.checkpoint import DEFAULT_CHECKPOINT
from unetkit.core.cli import DEFAULT_WORKERS
from unetkit.core.errors import DataError
from unetkit.core.imageio import read_image
from unetkit.core.labels import to_labels
from unetkit.core.meta import ModelMeta
from unetkit.core.postprocess import PostProcess
from unetkit.core.preprocess import model_input

from .batching import BatchRunner, Job, run_all
from .engines import Engine, create_engine
from .engines.ensemble import EnsembleEngine
from .io import default_out_dir, discover, output_paths
from .pipeline import Pipeline, RunSummary
from .record import claim_out_dir, model_identity
from .settings import InferSettings, OutputOptions
from .transforms import to_size

ImageLike = str | os.PathLike | np.ndarray | Image.Image


def engine_for(source: Path, engine: str | None) -> str:
    """The engine a source implies: .onnx -> onnx, .engine/.plan -> trt, a checkpoint -> torch."""
    if engine:
        return engine
    return {".onnx": "onnx", ".engine": "trt", ".plan": "trt"}.get(source.suffix.lower(), "torch")


class Predictor:
    """Masks from a checkpoint or an exported artifact, with any engine.

    `Predictor("runs/x/best.pth", engine="trt")` finds best.fp16.engine beside the checkpoint;
    `Predictor("deploy/best.onnx")` runs that file; a list of sources runs them as one model, their
    probabilities averaged (`EnsembleEngine`: k-fold runs, as nnU-Net ensembles its folds). Masks are uint8
    arrays of the image's own size: 0/1 for binary models, class indices for multi-class ones. The settings
    are checked before the engine loads.
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike] = DEFAULT_CHECKPOINT,
        engine: str | None = None,
        device: str | torch.device = "auto",
        precision: str | None = None,
        tile: int = 0,
        overlap: int | None = None,
        batch: int | None = None,
        blend: str = "gaussian",
        compile_mode: str | None = None,
        workers: int = DEFAULT_WORKERS,
        decoder: str = "auto",
        tta: bool = False,
        keep_largest: bool = PostProcess.keep_largest,
        min_area: int = PostProcess.min_area,
        fill_holes: bool = PostProcess.fill_holes,
    ) -> None:
        settings = InferSettings(tile, overlap, blend, batch, workers, decoder, tta, keep_largest, min_area, fill_holes)
        sources = [Path(s) for s in source] if isinstance(source, (list, tuple)) else [Path(cast(str, source))]
        built: list[Engine] = []
        try:
            for path in sources:
                is_checkpoint = path.suffix.lower() not in (".onnx", ".engine", ".plan")
                built.append(create_engine(
                    engine_for(path, engine),
                    checkpoint=path if is_checkpoint else None,
                    model=None if is_checkpoint else path,
                    device=device,
                    precision=precision,
                    compile_mode=compile_mode,
                ))  # fmt: skip
            one = (
                built[0]
                if len(built) == 1
                else EnsembleEngine(built, [model_identity(e)["checkpoint_sha256"] for e in built])
            )
            self._adopt(one, settings)  # post-processing this model's masks cannot take fails here
        except BaseException:
            for e in built:
                e.close()
            raise

    @classmethod
    def from_engine(cls, engine: Engine, settings: InferSettings | None = None) -> Predictor:
        """A Predictor around an engine that already exists (the benchmark builds its own)."""
        predictor = cls.__new__(cls)
        predictor._adopt(engine, settings or InferSettings())
        return predictor

    def _adopt(self, engine: Engine, settings: InferSettings) -> None:
        settings.postprocess.check(engine.meta.n_classes, engine.meta.mask_kind)
        self.engine = engine
        self.settings = settings.for_device(engine.device.type)

    @property
    def meta(self) -> ModelMeta:
        return self.engine.meta

    @property
    def batch(self) -> int:
        return self.settings.batch_size

    @staticmethod
    def _pixels(image: ImageLike) -> np.ndarray:
        if isinstance(image, Image.Image):
            pixels = np.asarray(image.convert("RGB"))
        elif isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
                raise DataError(f"expected a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
            pixels = image[:, :, :3]
        else:
            return read_image(image)
        if pixels.shape[0] == 0 or pixels.shape[1] == 0:
            raise DataError(f"the image has no pixels ({pixels.shape[1]}x{pixels.shape[0]})")
        return pixels

    @torch.inference_mode()
    def predict(
        self, images: ImageLike | Sequence[ImageLike], return_prob: bool = False
    ) -> np.ndarray | list[np.ndarray]:
        """Mask(s) for one image or a list: paths, uint8 RGB arrays or PIL images, post-processed as the
        settings say. With `return_prob`, float32 probabilities (C, H, W) instead (never post-processed)."""
        single = not isinstance(images, (list, tuple))
        batch = list(images) if isinstance(images, (list, tuple)) else [cast(ImageLike, images)]
        jobs = []
        for i, image in enumerate(batch):
            pixels = torch.tensor(self._pixels(image), device=self.engine.device).permute(2, 0, 1)
            x = model_input(pixels, self.meta, self.engine.input_dtype)
            jobs.append(Job(i, x, {"size": tuple(pixels.shape[-2:])}))
        results = []
        for job in run_all(BatchRunner.for_engine(self.engine, self.settings), jobs):
            assert job.prob is not None  # the runner hands back finished jobs only
            prob = to_size(job.prob, job.extra["size"])
            if return_prob:
                results.append(prob.cpu().numpy())
            else:
                labels = to_labels(prob, self.meta.threshold).cpu().numpy()
                results.append(self.settings.postprocess.apply(labels, self.meta.n_classes, self.meta.mask_kind))
        return results[0] if single else results

    def pipeline(self, outputs: OutputOptions | None = None) -> Pipeline:
        """The folder pipeline with these settings; its checks run now, before any image is read."""
        return Pipeline(self.engine, self.settings, outputs or OutputOptions())

    def predict_folder(
        self,
        folder: str | os.PathLike,
        out: str | os.PathLike | None = None,
        recursive: bool = False,
        **outputs: Any,
    ) -> RunSummary:
        """Masks for every image in `folder`, written under `out` (default <folder>_predictions beside it);
        `outputs` are OutputOptions' fields (save_prob, overlay, palette, rle, resume, progress); see unet-infer.
        Every output path is checked before any image is read."""
        options = OutputOptions(**outputs)
        pipeline = self.pipeline(options)
        target = Path(out) if out is not None else default_out_dir(folder)
        items = discover(folder, target, recursive, options.siblings())
        output_paths(target, options.rle)
        claim_out_dir(target, model_identity(self.engine), pipeline.settings, options, items)
        return pipeline.run(items)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
