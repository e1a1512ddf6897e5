"""ONNX Runtime: the CUDA provider with I/O bound to torch CUDA tensors when onnxruntime-gpu is installed,
else the CPU provider (then the engine's device is the CPU, whatever was asked for, and one line says why)."""

from __future__ import annotations

import contextlib
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.core.device import canonical_device

from ..artifacts import ArtifactError, decode_metadata
from .base import Engine, EngineUnavailable

log = logging.getLogger(__name__)
CUDA_PROVIDER = "CUDAExecutionProvider"
INSTALL_HINT = "pip install 'unetkit[cpu]' (or 'unetkit[gpu]' for its CUDA provider)"


def onnxruntime_missing() -> str | None:
    """Why ONNX Runtime cannot be used here, or None."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return f"ONNX Runtime is not installed: {INSTALL_HINT}"
    return None


def conflicting_runtimes(installed: set[str]) -> str | None:
    """A warning when both ONNX Runtime packages are installed: they ship the same module and overwrite each
    other's files, so which provider works depends on which was installed last."""
    if {"onnxruntime", "onnxruntime-gpu"} <= installed:
        return (
            "both onnxruntime and onnxruntime-gpu are installed and overwrite each other's files; keep one: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
        )
    return None


def cuda_fallback_reason(
    wants_cuda: bool,
    available: list[str],
    session_providers: list[str] | None,
    provider_error: str | None = None,
    torch_cuda: str | None = None,
) -> str | None:
    """Why a session asked to run on CUDA does not, or None when it does (or CUDA was not asked for).

    `available` is `onnxruntime.get_available_providers()`, which lists CUDA whenever onnxruntime-gpu is
    installed, even when its libraries cannot load; only the session's own `get_providers()` says whether
    the provider was created (ORT otherwise falls back to the CPU with a log line). `session_providers` is
    None before a session exists; `provider_error` is the first line of the error the CUDA provider raised,
    and `torch_cuda` the CUDA version PyTorch was built for (onnxruntime-gpu needs the same major).
    """
    if not wants_cuda:
        return None
    if CUDA_PROVIDER not in available:
        return "onnxruntime-gpu is not installed (pip install 'unetkit[gpu]')"
    if provider_error:
        return f"onnxruntime-gpu's CUDA provider failed: {provider_error}"
    if session_providers is not None and CUDA_PROVIDER not in session_providers:
        built = (
            f"; this PyTorch uses CUDA {torch_cuda}, and onnxruntime-gpu must be built for the same major"
            if torch_cuda
            else ""
        )
        return (
            f"onnxruntime-gpu could not create its CUDA provider (the CUDA or cuDNN libraries it was built for "
            f"did not load{built}; see https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html)"
        )
    return None


def cuda_provider_options(device_index: int, stream: int, tf32: bool = True) -> dict[str, str]:
    """CUDA provider options that put the session on the caller-owned CUDA stream `stream` (a pointer).

    ORT then queues every kernel on that stream, so the engine orders its work against the caller's stream
    with stream waits, as the torch and TensorRT engines do, instead of the host waiting for the device.
    A pointer of 0 (the legacy default stream) would silently turn the option off, so it is refused.
    `tf32`: ORT computes FP32 convolutions in TF32 unless told not to (its default, like cuDNN's in PyTorch);
    export's FP32 verification turns it off to compare with PyTorch in full FP32.
    """
    if not stream:
        raise ValueError("ONNX Runtime needs a non-default CUDA stream for user_compute_stream")
    return {"device_id": str(device_index), "user_compute_stream": str(stream), "use_tf32": "1" if tf32 else "0"}


#: Run option that skips ORT's cudaStreamSynchronize at the end of each run (onnxruntime_run_options_config_keys.h).
NO_SYNC_RUN_OPTION = ("disable_synchronize_execution_providers", "1")
#: ONNX tensor types the engine binds torch tensors to.
ONNX_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}
NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16}


def run_error(label: str, exc: Exception) -> Exception:
    """ORT's run errors are plain RuntimeErrors carrying a C++ message: out of device memory becomes torch's
    OutOfMemoryError (what callers already handle, as for the other engines), anything else one line."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if "allocate memory" in first or "out of memory" in first.lower():
        return torch.cuda.OutOfMemoryError(f"{label}: {first}")
    return EngineUnavailable(f"{label}: ONNX Runtime failed: {first}")


def _installed_runtimes() -> set[str]:
    found = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.add(name)
    return found


def _io_dtype(path: Path, arg: Any) -> torch.dtype:
    dtype = ONNX_TYPES.get(arg.type)
    if dtype is None:
        raise ArtifactError(f"{path}: '{arg.name}' is {arg.type}; the onnx engine takes float or float16 I/O")
    return dtype


class OnnxEngine(Engine):
    name = "onnx"

    def __init__(self, path: Path, device: torch.device, tf32: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineUnavailable(f"ONNX Runtime is not installed: {INSTALL_HINT}") from None
        conflict = conflicting_runtimes(_installed_runtimes())
        if conflict:
            log.warning("warning: %s", conflict)
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: ONNX file not found; run unet-export on the checkpoint first")
        device = canonical_device(device)
        wants_cuda = device.type == "cuda"
        available = ort.get_available_providers()
        use_cuda = cuda_fallback_reason(wants_cuda, available, None) is None and wants_cuda
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.stream: torch.cuda.Stream | None = None
        provider_error = None
        if use_cuda:
            self.stream = torch.cuda.Stream(device)  # the session's stream, ordered by stream waits
            cuda = (CUDA_PROVIDER, cuda_provider_options(device.index, self.stream.cuda_stream, tf32))
            try:
                # Creating the CUDA provider calls cudaSetDevice and never restores it: keep it inside this block.
                # enable_fallback=0: ORT would print a banner and retry on the CPU without saying why here.
                with torch.cuda.device(device):
                    self.session = ort.InferenceSession(
                        str(path), options, providers=[cuda, "CPUExecutionProvider"], enable_fallback=0
                    )
            except Exception as exc:  # the provider, or the model: the CPU session below tells which
                provider_error = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        if not use_cuda or provider_error:
            try:
                self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # ORT raises its own exception types for unreadable models
                raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None
        meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        reason = cuda_fallback_reason(
            wants_cuda, available, self.session.get_providers(), provider_error, torch.version.cuda
        )
        use_cuda = wants_cuda and reason is None
        precision = meta.extra.get("precision", "fp32")
        if use_cuda:
            detail = f"CUDAExecutionProvider (TF32 {'on' if tf32 else 'off'}), I/O bound to torch CUDA tensors"
            if precision == "int8":
                detail += "; its Q/DQ nodes run around float convolutions (the CUDA provider has no INT8 ones)"
        else:
            device, self.stream = torch.device("cpu"), None
            detail = "CPUExecutionProvider" + (f" ({reason})" if reason else "")
            if reason:
                log.warning("warning: onnx engine runs on the CPU: %s", reason)
        inputs, outputs = self.session.get_inputs()[0], self.session.get_outputs()[0]
        super().__init__(device, precision, meta, path, input_dtype=_io_dtype(path, inputs), detail=detail)
        self.input_name, self.output_name = inputs.name, outputs.name
        self.output_dtype = _io_dtype(path, outputs)
        self.use_cuda = use_cuda
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry(*NO_SYNC_RUN_OPTION)

    def close(self) -> None:
        # ORT's CUDA allocator calls cudaSetDevice on every free and never restores it (cuda_allocator.cc):
        # dropping the session inside this block keeps the caller's current device.
        with torch.cuda.device(self.device) if self.use_cuda else contextlib.nullcontext():
            self.__dict__.pop("session", None)
            self.stream = None
        super().close()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        if not self.use_cuda:
            return self._bound(x)
        with torch.cuda.device(self.device):
            return self._run_cuda(x)

    def _bound(self, x: torch.Tensor) -> torch.Tensor:
        """Run with the input and a new output tensor bound in place (no copies), on the CPU or on CUDA; on CUDA
        ORT's kernels are queued on the session's stream, not synchronised."""
        n, _, h, w = x.shape
        out = torch.empty((n, self.n_classes, h, w), dtype=self.output_dtype, device=self.device)  # on `caller`
        binding = self.session.io_binding()
        kind, index = self.device.type, self.device.index or 0
        binding.bind_input(self.input_name, kind, index, NUMPY_TYPES[x.dtype], list(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, kind, index, NUMPY_TYPES[out.dtype], list(out.shape), out.data_ptr())
        try:
            self.session.run_with_iobinding(binding, self.run_options)
        except RuntimeError as exc:
            raise run_error(self.label, exc) from None
        return out

    def _run_cuda(self, x: torch.Tensor) -> torch.Tensor:
        stream = self.stream
        if stream is None:
            raise EngineUnavailable(f"{self.label}: no CUDA stream; the engine runs on the CPU")
        caller = torch.cuda.current_stream(self.device)
        stream.wait_stream(caller)  # the input is complete before ORT's kernels start: no host wait
        out = self._bound(x)
        for tensor in (x, out):  # both are used on the session's stream: the allocator must know
            tensor.record_stream(stream)
        caller.wait_stream(stream)
        return out
