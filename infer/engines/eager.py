"""PyTorch eager: FP32 as PyTorch runs it by default (the reference), or FP16/BF16 channels_last."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from unetkit.core import UNet, fuse_batchnorm
from unetkit.core.meta import ModelMeta

from .base import DTYPES, Engine, EngineUnavailable


def prepare_model(model: UNet, device: torch.device, precision: str) -> torch.nn.Module:
    """The network as an engine runs it: FP32 untouched; FP16/BF16 with BatchNorm folded, cast, channels_last."""
    if precision not in DTYPES:
        raise EngineUnavailable(f"precision '{precision}' is not one of {', '.join(DTYPES)}")
    if precision == "fp32":
        return copy.deepcopy(model).eval().to(device)
    net = fuse_batchnorm(model).to(device=device, dtype=DTYPES[precision])
    return net.to(memory_format=torch.channels_last) if device.type == "cuda" else net  # type: ignore[call-overload]  # torch's stub lacks memory_format


class EagerEngine(Engine):
    name = "torch"

    def __init__(
        self,
        model: UNet,
        meta: ModelMeta,
        device: torch.device,
        precision: str = "fp32",
        source: Path | None = None,
    ) -> None:
        super().__init__(device, precision, meta, source, input_dtype=DTYPES.get(precision, torch.float32))
        self.model = prepare_model(model, self.device, precision)
        self.channels_last = precision != "fp32" and self.device.type == "cuda"
        if precision == "fp32" and self.device.type == "cuda":
            tf32 = "on" if torch.backends.cudnn.allow_tf32 else "off"
            self.detail = f"TF32 for convolutions {tf32} (PyTorch's default is on)"

    def close(self) -> None:
        self.__dict__.pop("model", None)
        super().close()

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)
