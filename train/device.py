"""Choosing the device and the mixed-precision type, the same way in every command."""

from __future__ import annotations

import torch

from .errors import UnetkitError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks the first CUDA GPU when there is one, else the CPU; an unusable choice is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UnetkitError(f"--device {name}: not a device name (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UnetkitError(f"--device {name}: no CUDA GPU is visible to PyTorch {torch.__version__}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UnetkitError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Training's mixed-precision type: bf16 where the GPU supports it, else fp16; None on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
