"""The one engine interface shared by unet-infer, unet-export's verification and unet-bench.

An engine takes a normalized float batch (N, 3, H, W) on its device and returns the model's logits
(N, n_classes, H, W) on the same device. It says what it accepts (device, precision, input dtype, shape
range) and refuses anything else with one clear line. The returned tensor may be a buffer the engine
reuses, so it is valid until the next call: consume it (or clone it) before calling again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from unetkit.core.device import canonical_device, same_device
from unetkit.core.errors import UnetkitError
from unetkit.core.meta import ModelMeta

#: Precision names and the torch dtypes they compute in: one table for every engine and the benchmark.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Every precision an engine can run: the float ones above, and int8 (quantized artifacts, float I/O).
PRECISIONS = (*DTYPES, "int8")
PRECISION_ALIASES = {"f32": "fp32", "f16": "fp16"}


def canonical_precision(name: str) -> str:
    """'f32' -> 'fp32' (OpenVINO's spelling); other names unchanged, checked by the engine that runs them."""
    return PRECISION_ALIASES.get(name.lower(), name.lower())


class EngineUnavailable(UnetkitError):
    """An engine cannot run here (no CUDA, no TensorRT, no onnxruntime-gpu, a stale engine file)."""


class EngineShapeError(UnetkitError):
    """An input shape the engine cannot take (outside a TensorRT profile, wrong channels)."""


@dataclass(frozen=True)
class ShapeRange:
    """Accepted (N, C, H, W) range, inclusive, and the shape the engine was tuned for."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 4 and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True))

    def describe(self) -> str:
        (n0, _, h0, w0), (n1, _, h1, w1) = self.min, self.max
        return f"batch {n0}..{n1}, height {h0}..{h1}, width {w0}..{w1}"

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


class Engine(ABC):
    """Base class: subclasses set `name` and implement `run`; `__call__` checks the input first.

    `close()` (or a `with` block) releases what the engine holds on the device right away, instead of
    whenever the garbage collector gets to it.
    """

    name: ClassVar[str]
    #: True when every new input shape costs a recompile, so callers should keep batch shapes fixed.
    static_shapes: ClassVar[bool] = False
    #: How many input sizes the engine keeps compiled (a size beyond them is compiled again); None: no limit.
    compiled_sizes: ClassVar[int | None] = None

    def __init__(
        self,
        device: torch.device,
        precision: str,
        meta: ModelMeta,
        source: Path | None,
        input_dtype: torch.dtype = torch.float32,
        shapes: ShapeRange | None = None,
        detail: str = "",
    ) -> None:
        self.device = canonical_device(device)  # cuda -> cuda:N, as a tensor's .device says
        self.precision = precision
        self.meta = meta
        self.source = source
        self.input_dtype = input_dtype
        self.shapes = shapes
        self.detail = detail
        self.closed = False

    @property
    def n_classes(self) -> int:
        return self.meta.n_classes

    @property
    def label(self) -> str:
        """Short name for tables and logs, e.g. 'onnx fp16' or 'torch bf16'."""
        return f"{self.name} {self.precision}"

    def check(self, shape: tuple[int, ...]) -> None:
        """Raise EngineShapeError unless a batch of `shape` can run."""
        channels = self.meta.in_channels
        if len(shape) != 4 or shape[1] != channels:
            raise EngineShapeError(f"{self.label}: expected (N, {channels}, H, W) input, got {tuple(shape)}")
        if self.shapes is not None and not self.shapes.contains(tuple(shape)):
            where = f" ({self.source})" if self.source else ""
            raise EngineShapeError(
                f"{self.label}{where} accepts {self.shapes.describe()}; got batch {shape[0]}, height {shape[2]}, "
                f"width {shape[3]}: re-export with a wider --batch/--shape, or use --tile/--batch that fit"
            )

    def check_batch(self, batch: int) -> None:
        """Raise EngineShapeError unless batches of 1 to `batch` inputs fit the engine's batch range."""
        if self.shapes is None or (self.shapes.min[0] <= 1 and batch <= self.shapes.max[0]):
            return
        where = f" ({self.source})" if self.source else ""
        raise EngineShapeError(
            f"--batch {batch}: {self.label}{where} accepts {self.shapes.describe()}; use --batch "
            f"{min(batch, self.shapes.max[0])} or re-export with --batch 1:{batch}:{batch}"
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.closed:
            raise EngineUnavailable(f"{self.label}: the engine was closed")
        self.check(tuple(x.shape))
        if not same_device(x.device, self.device):
            raise EngineShapeError(f"{self.label}: input is on {x.device}, the engine runs on {self.device}")
        return self.run(x.to(self.input_dtype))

    @abstractmethod
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a checked batch already on the engine's device in its input dtype."""

    def close(self) -> None:
        """Release the engine's model, session or context (subclasses drop their own references first); a
        closed engine refuses to run. Closing twice is harmless."""
        self.closed = True
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "precision": self.precision,
            "device": str(self.device),
            "input_dtype": str(self.input_dtype).replace("torch.", ""),
            "shapes": self.shapes.to_dict() if self.shapes else None,
            "source": str(self.source) if self.source else None,
            "detail": self.detail,
        }
