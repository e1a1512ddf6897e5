"""Each artifact against PyTorch FP32, through the same engine objects unet-infer uses.

Inputs: a realistic sample image (a synthetic 1918x1280 scene, resized by the checkpoint's own rule), which is
what a model is fed, and a random batch of two at an odd size, which is what the graph must survive.

Criteria:
- FP32 ONNX: probabilities within 1e-4 of PyTorch's on every input.
- FP16 artifacts: masks agree with PyTorch's at Dice >= 0.999 on the sample image, and no probability is off
  by more than 0.05 on any input. On random noise many pixels sit at the decision threshold in FP32 itself,
  so flipped pixels there say nothing about the artifact; their Dice is reported, the gap is what is gated.
- INT8 artifacts: masks agree at Dice >= 0.99 on the car image. Calibrated ranges are meant for images, so
  on noise an int8 model may be far off; its figures there are reported, not gated.
The reference runs in true FP32 (TF32 off), on the candidate's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from unetkit.core import UNet
from unetkit.core.labels import probabilities, to_labels
from unetkit.core.meta import ModelMeta
from unetkit.core.metrics import mask_agreement
from unetkit.core.preprocess import input_size, normalize, resize_pixels
from unetkit.infer.engines import Engine, ShapeRange
from unetkit.infer.engines.eager import EagerEngine
from unetkit.train.data.synth import random_car, render

FP32_MAX_ABS = 1e-4
FP16_MIN_DICE = 0.999
FP16_MAX_ABS = 0.05
INT8_MIN_DICE = 0.99
SAMPLE_HW = (1280, 1918)


@dataclass
class Sample:
    name: str
    x: torch.Tensor  # normalized float32 batch on the CPU
    realistic: bool  # an image the model is meant for, rather than noise


@dataclass
class Verification:
    exact: bool
    per_input: list[dict[str, Any]] = field(default_factory=list)  # name, realistic, max_abs_diff, dice
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
        return min((r["dice"] for r in self.gated if r["realistic"]), default=1.0)

    @property
    def criterion(self) -> str:
        if self.exact:
            return f"max |dp| <= {FP32_MAX_ABS:g}"
        if self.int8:
            return f"image mask Dice >= {INT8_MIN_DICE}"
        return f"image mask Dice >= {FP16_MIN_DICE}, max |dp| <= {FP16_MAX_ABS:g}"

    @property
    def passed(self) -> bool:
        if self.exact:
            return self.max_abs_diff <= FP32_MAX_ABS
        if self.int8:
            return self.image_dice >= INT8_MIN_DICE
        return self.image_dice >= FP16_MIN_DICE and self.max_abs_diff <= FP16_MAX_ABS

    def summary(self) -> str:
        parts = [f"{_short(r)}: Dice {r['dice']:.5f} |dp| {r['max_abs_diff']:.1e}" for r in self.per_input]
        note = " (* reported, not gated)" if len(self.gated) < len(self.per_input) else ""
        return f"{'; '.join(parts)}  [{self.criterion}]{note} {'ok' if self.passed else 'FAILED'}"

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "passed": self.passed, "inputs": self.per_input}

    def merged(self, other: Verification) -> Verification:
        """This verification with `other`'s inputs added as reported, not gated: one artifact checked in a
        second runtime, whose verdict the artifact records for that runtime instead of being discarded."""
        return Verification(self.exact, [*self.per_input, *({**r, "gated": False} for r in other.per_input)], self.int8)


def _short(entry: dict[str, Any]) -> str:
    """'sample' or 'sample/openvino': the input's kind, and the runtime where more than one checked it."""
    runtime = entry.get("runtime")
    return entry["name"].split()[0] + (f"/{runtime}" if runtime else "") + ("" if entry.get("gated", True) else "*")


def _fit(hw: tuple[int, int], shapes: ShapeRange | None) -> tuple[int, int]:
    if shapes is None:
        return hw
    (h0, w0), (h1, w1) = shapes.min[2:], shapes.max[2:]
    return min(max(hw[0], h0), h1), min(max(hw[1], w0), w1)


def sample_inputs(meta: ModelMeta, shapes: ShapeRange | None = None, seed: int = 0) -> list[Sample]:
    """The sample image and the random batch, sized to fit `shapes` when an engine has limits."""
    rng = np.random.default_rng(seed)
    image, _ = render(random_car(rng), rng, SAMPLE_HW[1], SAMPLE_HW[0])
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
    hw = _fit(input_size(*SAMPLE_HW, meta), shapes)  # the model's own input rule, within the profile
    image_x = normalize(resize_pixels(pixels, hw), meta.mean, meta.std)
    batch = 2 if shapes is None else min(max(2, shapes.min[0]), shapes.max[0])
    odd = _fit((hw[0] * 3 // 4 + 1, hw[1] * 3 // 4 + 3), shapes)
    noise = torch.randn(batch, 3, *odd, generator=torch.Generator().manual_seed(seed))
    return [
        Sample(f"sample 1x{hw[1]}x{hw[0]}", image_x, realistic=True),
        Sample(f"random {batch}x{odd[1]}x{odd[0]}", noise, realistic=False),
    ]


class Reference:
    """PyTorch FP32 probabilities for the sample inputs, computed once per input and device."""

    def __init__(self, model: UNet, meta: ModelMeta) -> None:
        self.model, self.meta = model, meta
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
        dice = mask_agreement(to_labels(out, threshold), to_labels(ref, threshold), candidate.n_classes)
        result.per_input.append(
            {
                "name": sample.name,
                "realistic": sample.realistic,
                "max_abs_diff": float((out - ref).abs().max()),
                "dice": dice,
                **({"runtime": runtime} if runtime else {}),
            }
        )
    return result
