"""TensorRT: a serialized engine run with execute_async_v3, torch CUDA tensors as its buffers.

Written from NVIDIA's TensorRT 10/11 Python API documentation and samples (see shared research notes);
`import tensorrt` happens only when a TensorRT engine is created. Inference runs on the caller's current
CUDA stream, or on the engine's own stream when the caller is on the legacy default stream (TensorRT
warns that the default stream costs extra synchronization).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from unetkit.core.device import canonical_device
from unetkit.core.meta import ModelMeta

from ..artifacts import ArtifactError, meta_from, read_sidecar, sidecar_path
from .base import Engine, EngineShapeError, EngineUnavailable, ShapeRange

INSTALL_HINT = "pip install 'unetkit[trt]' (the libraries come from NVIDIA's index, https://pypi.nvidia.com)"


@functools.lru_cache(maxsize=1)
def trt_logger() -> Any:
    """The process's one TensorRT logger: TensorRT keeps the first ILogger it is given for the whole process
    and warns when builders and runtimes are handed different ones."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def context_failure(path: Path, device: torch.device) -> str:
    """The line for an engine TensorRT loaded but could not give an execution context: it allocates the
    activation memory of the profile's largest shape up front, and returns None when the device lacks it."""
    return (f"{path}: TensorRT could not create an execution context on {device} (too little free device memory "
            "for the engine's largest input shape); free device memory, or re-export with a smaller --batch or "
            "--shape")  # fmt: skip


def gpu_identity(device: torch.device) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}


def compatibility_problem(sidecar: dict[str, Any], trt_version: str, gpu: dict[str, Any]) -> str | None:
    """Why an engine built as `sidecar` describes cannot run with this TensorRT on this GPU, or None.

    Plans are tied to the TensorRT version that built them and to the GPU's compute capability.
    """
    built_trt, built_cc = sidecar.get("tensorrt_version"), sidecar.get("compute_capability")
    if built_trt != trt_version or built_cc != gpu["compute_capability"]:
        return (
            f"built with TensorRT {built_trt} for {sidecar.get('gpu')} (compute capability {built_cc}); this is "
            f"TensorRT {trt_version} on {gpu['gpu']} (compute capability {gpu['compute_capability']}). "
            "An engine only runs where it was built: re-export it here with unet-export"
        )
    return None


class TrtEngine(Engine):
    name = "trt"

    def __init__(
        self, path: Path, device: torch.device, meta: ModelMeta | None = None, precision: str = "fp16"
    ) -> None:
        """`precision` names what a plan without a sidecar holds (export verifies a plan before writing it)."""
        path, device = Path(path), torch.device(device)
        if not torch.cuda.is_available():
            raise EngineUnavailable("trt runs on a CUDA GPU, and none is visible to PyTorch")
        if device.type != "cuda":
            raise EngineUnavailable(f"trt runs on a CUDA GPU, not on the {device.type} that was asked for")
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise EngineUnavailable(f"TensorRT is not installed ({exc}): {INSTALL_HINT}") from None
        if not path.is_file():
            raise ArtifactError(f"{path}: not found; build it with unet-export on this machine")
        sidecar = read_sidecar(path) if sidecar_path(path).exists() else {}
        if meta is None:
            if "meta" not in sidecar:
                raise ArtifactError(f"{sidecar_path(path)}: sidecar not found; re-export with unet-export")
            meta = meta_from(sidecar["meta"], sidecar_path(path))
        device = canonical_device(device)
        problem = sidecar and compatibility_problem(sidecar, trt.__version__, gpu_identity(device))
        if problem:
            raise EngineUnavailable(f"{path}: {problem}")
        self._trt = trt
        with torch.cuda.device(device):  # the engine's memory and context live on the device the user named
            self.runtime = trt.Runtime(trt_logger())
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise EngineUnavailable(
                    f"{path}: TensorRT {trt.__version__} cannot load this engine (built by another TensorRT "
                    "version or for another GPU, or damaged); re-export it here with unet-export"
                )
            self.context = self.engine.create_execution_context()
            if self.context is None:  # TensorRT returns None when the profile's activation memory cannot be had
                raise EngineUnavailable(context_failure(path, device))
            self.stream = torch.cuda.Stream(device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"{path}: expected one input and one output, found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        in_dtype = dtypes.get(self.engine.get_tensor_dtype(self.input_name))
        self.out_dtype = dtypes.get(self.engine.get_tensor_dtype(self.output_name))
        if in_dtype is None or self.out_dtype is None:
            raise ArtifactError(f"{path}: unsupported I/O data types; re-export with unet-export")
        lo, opt, hi = (tuple(d) for d in self.engine.get_tensor_profile_shape(self.input_name, 0))
        super().__init__(
            device, sidecar.get("precision", precision), meta, path, input_dtype=in_dtype,
            shapes=ShapeRange(lo, opt, hi), detail=f"TensorRT {trt.__version__}",
        )  # fmt: skip
        self._out: torch.Tensor | None = None
        self._out_stream = 0  # the stream the output buffer was allocated on

    def close(self) -> None:
        with torch.cuda.device(self.device):  # frees happen on the engine's device, whatever the current one is
            for name in ("context", "engine", "runtime"):  # the context before the engine before the runtime
                self.__dict__.pop(name, None)
            self._out = None
        super().close()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device(self.device):  # execute on the engine's GPU whatever the caller's current one is
            return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        if x.data_ptr() % 256:  # TensorRT requires 256-byte aligned buffers
            x = x.clone()
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise EngineShapeError(f"{self.label}: TensorRT refused input shape {tuple(x.shape)}")
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        caller = torch.cuda.current_stream(self.device)
        if self._out is None or tuple(self._out.shape) != shape or self._out_stream != caller.cuda_stream:
            # A new buffer when the caller's stream changes: the old one may still be read on the old stream,
            # which the allocator orders correctly only for the stream a block was allocated on.
            self._out = torch.empty(shape, dtype=self.out_dtype, device=self.device)  # allocated on `caller`
            self._out_stream = caller.cuda_stream
        for name, tensor in ((self.input_name, x), (self.output_name, self._out)):
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise RuntimeError(f"{self.label}: TensorRT refused the address of tensor '{name}'")
        stream = self.stream if caller.cuda_stream == 0 else caller
        if stream is not caller:
            stream.wait_stream(caller)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.label}: execute_async_v3 failed")
        if stream is not caller:
            # The caching allocator only knows the stream a block was allocated on: tell it about the engine's
            # own stream, or a later free could recycle the input or the output while the engine still uses it.
            x.record_stream(stream)
            self._out.record_stream(stream)
            caller.wait_stream(stream)
        return self._out
