"""Each artifact against PyTorch FP32, through the same engine objects unet-infer uses.

Inputs: real images of the model's own kind (up to VERIFY_IMAGES of the checkpoint's training data, or of
--calib), resized by the checkpoint's rule, which is what a model is fed; a synthetic 1918x1280 car scene
only where no such images are on this machine (and the report says so); and a random batch of two at an odd
size, which is what the graph must survive.

Criteria (the mask agreement is Dice of the foreground for a binary model, and for a multi-class model
Dice pooled over every pixel's class, so one class covering a few pixels cannot decide it alone):
- FP32 ONNX: probabilities within 1e-4 of PyTorch's on every input.
- FP16 artifacts: masks agree with PyTorch's at >= 0.999 over the images, and no probability is off
  by more than 0.05 on any input. On random noise many pixels sit at the decision threshold in FP32 itself,
  so flipped pixels there say nothing about the artifact; their agreement is reported, the gap is gated.
- INT8 artifacts: masks agree at >= 0.99 over the images. Calibrated ranges are meant for images, so
  on noise an int8 model may be far off; its figures there are reported, not gated.
The reference runs in true FP32 (TF32 off), on the candidate's device.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.core import UNet
from unetkit.core.errors import UnetkitError
from unetkit.core.imageio import read_image
from unetkit.core.labels import probabilities, to_labels
from unetkit.core.meta import ModelMeta
from unetkit.core.metrics import FP16_MIN_DICE, INT8_MIN_DICE, agreement_counts
from unetkit.core.preprocess import input_size, normalize, resize_pixels
from unetkit.infer.engines import Engine, ShapeRange
from unetkit.infer.engines.eager import EagerEngine
from unetkit.train.data.synth import random_car, render

from .calibration import CalibrationSource, calibration_source

FP32_MAX_ABS = 1e-4
FP16_MAX_ABS = 0.05
SAMPLE_HW = (1280, 1918)
VERIFY_IMAGES = 4
log = logging.getLogger(__name__)


@dataclass
class Sample:
    name: str
    x: torch.Tensor  # normalized float32 batch on the CPU
    realistic: bool  # an image the model is meant for, rather than noise


@dataclass
class Verification:
    exact: bool
    per_input: list[dict[str, Any]] = field(default_factory=list)  # name, realistic, max_abs_diff, dice, counts
    int8: bool = False  # INT8's criterion (exact must be False)

    @property
    def gated(self) -> list[dict[str, Any]]:
        """The entries the criterion applies to (another runtime's are reported, see `merged`)."""
        return [r for r in self.per_input if r.get("gated", True)]

    @property
    def max_abs_diff(self) -> float:
        return max(r["max_abs_diff"] for r in self.gated)

    @property
    def image_dice(self) -> float:
        """Mask agreement pooled over the gated images (tp, fp, fn summed, then one Dice)."""
        tp, fp, fn = (sum(r["counts"][k] for r in self.gated if r["realistic"]) for k in range(3))
        return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)

    @property
    def criterion(self) -> str:
        if self.exact:
            return f"max |dp| <= {FP32_MAX_ABS:g}"
        if self.int8:
            return f"mask agreement over the images >= {INT8_MIN_DICE}"
        return f"mask agreement over the images >= {FP16_MIN_DICE}, max |dp| <= {FP16_MAX_ABS:g}"

    @property
    def passed(self) -> bool:
        if self.exact:
            return self.max_abs_diff <= FP32_MAX_ABS
        if self.int8:
            return self.image_dice >= INT8_MIN_DICE
        return self.image_dice >= FP16_MIN_DICE and self.max_abs_diff <= FP16_MAX_ABS

    def summary(self) -> str:
        """One line: the images' pooled agreement (per runtime) and each random input's, with the criterion."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in self.per_input:
            groups.setdefault(_short(r), []).append(r)
        parts = []
        for name, rows in groups.items():
            tp, fp, fn = (sum(r["counts"][k] for r in rows) for k in range(3))
            agree = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
            dp = max(r["max_abs_diff"] for r in rows)
            parts.append(f"{name}: agreement {agree:.5f} |dp| {dp:.1e}")
        note = " (* reported, not gated)" if len(self.gated) < len(self.per_input) else ""
        return f"{'; '.join(parts)}  [{self.criterion}]{note} {'ok' if self.passed else 'FAILED'}"

    @property
    def hint(self) -> str:
        """Why a reduced-precision file failed where the reason is the model rather than the file: its
        probabilities stayed within the gap gate, yet masks differ, so many pixels sit at the decision
        threshold (a model trained briefly); "" otherwise."""
        if self.passed or self.exact or self.int8 or self.max_abs_diff > FP16_MAX_ABS:
            return ""
        return (f"the probabilities moved at most {self.max_abs_diff:.1e}, yet masks differ: many pixels sit at "
                "the decision threshold, as in a model trained briefly; train it further, or keep the file "
                "unchecked with --no-verify")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "passed": self.passed, "inputs": self.per_input}

    def merged(self, other: Verification) -> Verification:
        """This verification with `other`'s inputs added as reported, not gated: one artifact checked in a
        second runtime, whose verdict the artifact records for that runtime instead of being discarded."""
        return Verification(self.exact, [*self.per_input, *({**r, "gated": False} for r in other.per_input)], self.int8)


def _short(entry: dict[str, Any]) -> str:
    """'images' or 'random/openvino*': the input's kind, and the runtime where more than one checked it."""
    runtime = entry.get("runtime")
    kind = "images" if entry["realistic"] else entry["name"].split()[0]
    return kind + (f"/{runtime}" if runtime else "") + ("" if entry.get("gated", True) else "*")


def _fit(hw: tuple[int, int], shapes: ShapeRange | None) -> tuple[int, int]:
    if shapes is None:
        return hw
    (h0, w0), (h1, w1) = shapes.min[2:], shapes.max[2:]
    return min(max(hw[0], h0), h1), min(max(hw[1], w0), w1)


def _image_sample(name: str, image: np.ndarray, meta: ModelMeta, shapes: ShapeRange | None) -> Sample:
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    hw = _fit(input_size(image.shape[0], image.shape[1], meta), shapes)  # the model's input rule, in the profile
    return Sample(f"{name} 1x{hw[1]}x{hw[0]}", normalize(resize_pixels(pixels, hw), meta.mean, meta.std), True)


def sample_inputs(
    meta: ModelMeta,
    shapes: ShapeRange | None = None,
    seed: int = 0,
    images: Sequence[tuple[str, np.ndarray]] = (),
) -> list[Sample]:
    """The images (`(name, pixels)`, e.g. from `verification_images`; a synthetic car when there are none)
    and the random batch, sized to fit `shapes` when an engine has limits."""
    if not images:
        rng = np.random.default_rng(seed)
        car, _ = render(random_car(rng), rng, SAMPLE_HW[1], SAMPLE_HW[0])
        images = [("synthetic-car", car)]
    samples = [_image_sample(name, image, meta, shapes) for name, image in images]
    hw = tuple(samples[0].x.shape[-2:])
    batch = 2 if shapes is None else min(max(2, shapes.min[0]), shapes.max[0])
    odd = _fit((hw[0] * 3 // 4 + 1, hw[1] * 3 // 4 + 3), shapes)
    noise = torch.randn(batch, 3, *odd, generator=torch.Generator().manual_seed(seed))
    return [*samples, Sample(f"random {batch}x{odd[1]}x{odd[0]}", noise, realistic=False)]


def verification_images(source: CalibrationSource, count: int = VERIFY_IMAGES, seed: int = 0) -> list[
    tuple[str, np.ndarray]
]:  # fmt: skip
    """Up to `count` readable images of `source`, picked by `seed` (none from a synthetic source): what the
    artifacts are checked on, so a polyp or street model is judged on polyps or streets, not on a car."""
    if source.synthetic:
        return []
    picked: list[tuple[str, np.ndarray]] = []
    order = np.random.default_rng([seed, 7]).permutation(len(source.images))
    for i in order[: 4 * count]:  # a folder of unreadable files ends the search instead of reading them all
        path = source.images[int(i)]
        try:
            picked.append((path.name, read_image(path)))
        except UnetkitError as exc:
            log.warning("warning: verification skips %s", exc)
        if len(picked) == count:
            break
    return picked


def verification_source(calib: Path | None, meta: ModelMeta) -> CalibrationSource:
    """Where the images every artifact is checked on come from: the checkpoint's training data when it is on
    this machine (the model's own kind of image, whatever --calib holds: a calibration on the wrong images
    must fail here, not check itself), else --calib's images, else the synthetic car."""
    trained = calibration_source(None, meta)
    return trained if not trained.synthetic or calib is None else calibration_source(calib, meta)


def verification_line(source: CalibrationSource, found: int) -> str:
    """What the artifacts are checked on, in one line of unet-export's output."""
    if found:
        return f"verification: {found} images from {source.description}, and random noise"
    return f"verification: a synthetic car image, from {source.description}, and random noise"


class Reference:
    """PyTorch FP32 probabilities for the sample inputs, computed once per input and device; `images` are
    the real images every artifact is checked on (`verification_images`; empty: the synthetic car)."""

    def __init__(self, model: UNet, meta: ModelMeta, images: Sequence[tuple[str, np.ndarray]] = ()) -> None:
        self.model, self.meta, self.images = model, meta, list(images)
        self._engines: dict[str, Engine] = {}
        self._cache: dict[tuple[str, str, tuple[int, ...]], torch.Tensor] = {}

    def __call__(self, sample: Sample, device: torch.device) -> torch.Tensor:
        key = (sample.name, str(device), tuple(sample.x.shape))
        if key not in self._cache:
            if str(device) not in self._engines:
                self._engines[str(device)] = EagerEngine(self.model, self.meta, device, "fp32")
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
                out = self._engines[str(device)](sample.x.to(device))
            self._cache[key] = probabilities(out).cpu()
        return self._cache[key]


def verify(
    candidate: Engine, reference: Reference, samples: list[Sample], exact: bool, int8: bool = False, runtime: str = ""
) -> Verification:
    """Compare `candidate` with the FP32 reference on every sample; `exact` selects the FP32 criterion, `int8`
    the INT8 one; `runtime` names the engine in the report when an artifact is checked in several."""
    threshold = candidate.meta.threshold
    result = Verification(exact, int8=int8)
    for sample in samples:
        ref = reference(sample, candidate.device)
        out = probabilities(candidate(sample.x.to(candidate.device))).cpu()
        counts = agreement_counts(to_labels(out, threshold), to_labels(ref, threshold), candidate.n_classes)
        tp, fp, fn = counts
        result.per_input.append(
            {
                "name": sample.name,
                "realistic": sample.realistic,
                "max_abs_diff": float((out - ref).abs().max()),
                "dice": 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
                "counts": counts,
                **({"runtime": runtime} if runtime else {}),
            }
        )
    return result
