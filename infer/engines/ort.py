"""ONNX Runtime: the CUDA provider with I/O bound to torch CUDA tensors when onnxruntime-gpu is installed,
else the CPU provider (then the engine's device is the CPU, whatever was asked for)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..artifacts import ArtifactError, decode_metadata
from .base import Engine, EngineUnavailable


class OnnxEngine(Engine):
    name = "onnx"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineUnavailable(
                "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: ONNX file not found; run unet-export on the checkpoint first")
        device = torch.device(device)
        wants_cuda = device.type == "cuda"
        use_cuda = wants_cuda and "CUDAExecutionProvider" in ort.get_available_providers()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        if use_cuda:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable models
            raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None
        meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        if use_cuda:
            detail = "CUDAExecutionProvider, I/O bound to torch CUDA tensors"
        else:
            device = torch.device("cpu")
            detail = "CPUExecutionProvider" + (" (onnxruntime-gpu is not installed)" if wants_cuda else "")
        super().__init__(device, meta.get("precision", "fp32"), meta, path, detail=detail)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.use_cuda = use_cuda

    def run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        if not self.use_cuda:
            return torch.from_numpy(self.session.run([self.output_name], {self.input_name: x.numpy()})[0])
        n, _, h, w = x.shape
        out = torch.empty((n, self.n_classes, h, w), dtype=torch.float32, device=self.device)
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input(self.input_name, "cuda", index, np.float32, list(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", index, np.float32, list(out.shape), out.data_ptr())
        # ORT runs on its own stream: the input must be complete before it starts.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return out
