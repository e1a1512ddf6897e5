"""ONNX Runtime: the CUDA provider with I/O bound to torch CUDA tensors when onnxruntime-gpu is installed,
else the CPU provider (then the engine's device is the CPU, whatever was asked for, and one line says why)."""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

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


def cuda_fallback_reason(wants_cuda: bool, available: list[str], session_providers: list[str] | None) -> str | None:
    """Why a session asked to run on CUDA does not, or None when it does (or CUDA was not asked for).

    `available` is `onnxruntime.get_available_providers()`, which lists CUDA whenever onnxruntime-gpu is
    installed, even when its libraries cannot load; only the session's own `get_providers()` says whether
    the provider was created (ORT otherwise falls back to the CPU with a log line). `session_providers` is
    None before a session exists.
    """
    if not wants_cuda:
        return None
    if CUDA_PROVIDER not in available:
        return "onnxruntime-gpu is not installed (pip install 'unetkit[gpu]')"
    if session_providers is not None and CUDA_PROVIDER not in session_providers:
        return (
            "onnxruntime-gpu could not create its CUDA provider (the CUDA or cuDNN libraries it was built for "
            "did not load; see https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html)"
        )
    return None


def cuda_provider_options(device_index: int, stream: int) -> dict[str, str]:
    """CUDA provider options that put the session on the caller-owned CUDA stream `stream` (a pointer).

    ORT then queues every kernel on that stream, so the engine orders its work against the caller's stream
    with stream waits, as the torch and TensorRT engines do, instead of the host waiting for the device.
    A pointer of 0 (the legacy default stream) would silently turn the option off, so it is refused.
    """
    if not stream:
        raise ValueError("ONNX Runtime needs a non-default CUDA stream for user_compute_stream")
    return {"device_id": str(device_index), "user_compute_stream": str(stream)}


#: Run option that skips ORT's cudaStreamSynchronize at the end of each run (onnxruntime_run_options_config_keys.h).
NO_SYNC_RUN_OPTION = ("disable_synchronize_execution_providers", "1")


def _installed_runtimes() -> set[str]:
    found = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.add(name)
    return found


class OnnxEngine(Engine):
    name = "onnx"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
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
        if threads:
            options.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        self.stream: torch.cuda.Stream | None = None
        if use_cuda:
            self.stream = torch.cuda.Stream(device)  # the session's own stream, ordered by stream waits
            providers.insert(0, (CUDA_PROVIDER, cuda_provider_options(device.index, self.stream.cuda_stream)))
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable models
            raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None
        meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        reason = cuda_fallback_reason(wants_cuda, available, self.session.get_providers())
        use_cuda = wants_cuda and reason is None
        if use_cuda:
            detail = "CUDAExecutionProvider on its own stream, I/O bound to torch CUDA tensors"
        else:
            device, self.stream = torch.device("cpu"), None
            detail = "CPUExecutionProvider" + (f" ({reason})" if reason else "")
            if reason:
                log.warning("warning: onnx engine runs on the CPU: %s", reason)
        super().__init__(device, meta.extra.get("precision", "fp32"), meta, path, detail=detail)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.use_cuda = use_cuda
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry(*NO_SYNC_RUN_OPTION)

    def close(self) -> None:
        self.__dict__.pop("session", None)
        self.stream = None
        super().close()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        if not self.use_cuda:
            return torch.from_numpy(self.session.run([self.output_name], {self.input_name: x.numpy()})[0])
        with torch.cuda.device(self.device):
            return self._run_cuda(x)

    def _run_cuda(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        stream = self.stream
        if stream is None:
            raise EngineUnavailable(f"{self.label}: no CUDA stream; the engine runs on the CPU")
        caller = torch.cuda.current_stream(self.device)
        out = torch.empty((n, self.n_classes, h, w), dtype=torch.float32, device=self.device)  # on `caller`
        binding = self.session.io_binding()
        index = self.device.index
        binding.bind_input(self.input_name, "cuda", index, np.float32, list(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", index, np.float32, list(out.shape), out.data_ptr())
        stream.wait_stream(caller)  # the input is complete before ORT's kernels start: no host wait
        self.session.run_with_iobinding(binding, self.run_options)  # queued on `stream`, not synchronised
        for tensor in (x, out):  # both are used on the session's stream: the allocator must know
            tensor.record_stream(stream)
        caller.wait_stream(stream)
        return out
