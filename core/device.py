"""Choosing the device and the mixed-precision type, the same way in every command.

Every CUDA device unetkit holds carries an explicit index (`cuda:0`, never bare `cuda`): a CUDA tensor's
`.device` always has one, and `torch.device` equality compares the index, so `torch.device("cuda")` never
equals a tensor's device. `canonical_device` is the one place that adds it and `same_device` the one
comparison.
"""

from __future__ import annotations

import torch

from .errors import UnetkitError


def canonical_device(device: str | torch.device, current_index: int | None = None) -> torch.device:
    """`device` with an explicit index for CUDA: bare 'cuda' becomes the current CUDA device.

    `current_index` is the index bare 'cuda' stands for; by default the process's current CUDA device
    (asked only when needed, so CPU devices never touch CUDA).
    """
    device = torch.device(device)
    if device.type != "cuda" or device.index is not None:
        return device
    index = torch.cuda.current_device() if current_index is None else current_index
    return torch.device("cuda", index)


def same_device(a: str | torch.device, b: str | torch.device, current_index: int | None = None) -> bool:
    """True when `a` and `b` name the same device once both carry an explicit index."""
    return canonical_device(a, current_index) == canonical_device(b, current_index)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' picks the current CUDA GPU when there is one, else the CPU; an unusable choice is an error.

    CUDA devices come back with their index (`cuda:0`), see `canonical_device`.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return canonical_device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UnetkitError(f"--device {name}: not a device name (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UnetkitError(f"--device {name}: unetkit runs on cpu or cuda (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UnetkitError(f"--device {name}: no CUDA GPU is visible to PyTorch {torch.__version__}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UnetkitError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return canonical_device(device)


def use_device(device: torch.device) -> None:
    """Make a CUDA `device` the process's current one, so that everything that follows the current device
    (DataLoader pin threads, events and streams created without a device, library calls) uses it too, not
    cuda:0. Commands call it once after choosing the device; the CPU leaves CUDA untouched."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


#: The first compute capability with bf16 tensor cores (Ampere). Older GPUs (Volta, Turing) only emulate bf16,
#: which `torch.cuda.is_bf16_supported()` still answers True for by default (`including_emulation=True`).
BF16_SINCE = (8, 0)


def bf16_native_capability(capability: tuple[int, int]) -> bool:
    """True when a GPU of this compute capability computes bf16 natively: (8, 0) and later."""
    return tuple(capability) >= BF16_SINCE


def cuda_bf16_native(device: torch.device) -> bool:
    """Whether the CUDA `device` itself (not the current one) has bf16 tensor cores."""
    return bf16_native_capability(torch.cuda.get_device_capability(device))


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Training's mixed-precision type: bf16 where the GPU computes it natively, else fp16; None on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if cuda_bf16_native(device) else torch.float16
