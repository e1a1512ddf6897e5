"""torch.compile: the FP16 (BatchNorm-folded, channels_last) network compiled by Inductor.

Shapes are static (dynamic=False): each new input shape compiles once, which is why unet-infer pads the
last batch to full size. On CUDA the default mode, "reduce-overhead", replays CUDA graphs; "max-autotune"
also autotunes kernels (much longer first compile). The first call per shape is slow; warm up before timing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from unetkit.core import UNet
from unetkit.core.meta import ModelMeta

from .base import DTYPES, Engine
from .eager import prepare_model

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
log = logging.getLogger(__name__)


def recompile_limit() -> int:
    """How many shapes Dynamo compiles a function for before it runs the rest eagerly (torch >= 2.6 names the
    setting `recompile_limit`, earlier releases `cache_size_limit`)."""
    config = torch._dynamo.config
    return int(getattr(config, "recompile_limit", getattr(config, "cache_size_limit", 8)))


def shapes_warning(n_shapes: int, limit: int) -> str | None:
    """The one warning for the shape that goes past Dynamo's limit: from then on new shapes run uncompiled."""
    if n_shapes != limit + 1:
        return None
    return (f"compile: {n_shapes} different input shapes, more than torch.compile's limit of {limit}: new shapes "
            "now run eagerly (slower); give every image the same shape with --tile, --size or --max-side")  # fmt: skip


class CompiledEngine(Engine):
    name = "compile"
    static_shapes = True

    def __init__(
        self,
        model: UNet,
        meta: ModelMeta,
        device: torch.device,
        precision: str = "fp16",
        mode: str | None = None,
        source: Path | None = None,
    ) -> None:
        super().__init__(device, precision, meta, source, input_dtype=DTYPES.get(precision, torch.float32))
        mode = mode or ("reduce-overhead" if self.device.type == "cuda" else "default")
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode '{mode}' is not one of {', '.join(COMPILE_MODES)}")
        self.channels_last = precision != "fp32" and self.device.type == "cuda"
        self.model = torch.compile(prepare_model(model, self.device, precision), mode=mode, dynamic=False)
        self.detail = f"torch.compile mode={mode}, static shapes"
        self.shapes_seen: set[tuple[int, ...]] = set()

    def close(self) -> None:
        self.__dict__.pop("model", None)
        if self.device.type == "cuda":  # CUDA graphs keep a memory pool of their own until Dynamo is reset
            torch._dynamo.reset()
        super().close()

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        # One memory format whatever decoded the pixels, or each layout compiles a graph of its own.
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()
        if tuple(x.shape) not in self.shapes_seen:
            self.shapes_seen.add(tuple(x.shape))
            warning = shapes_warning(len(self.shapes_seen), recompile_limit())
            if warning:
                log.warning("warning: %s", warning)
        return self.model(x)
