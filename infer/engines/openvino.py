"""OpenVINO on the CPU: reads the exported ONNX files directly (best.onnx, best.int8.onnx), no IR step.

Precision: `auto` runs bf16 only where the CPU executes it natively, else f32; `fp32` (`f32`) and `bf16` are
explicit (bf16 is refused where it is not native, since OpenVINO would silently run f32, or emulate it on an
AVX-512 CPU without AVX512-BF16); an INT8 QDQ file runs its quantized convolutions in int8 and the rest in
the float precision chosen. "Native" is OpenVINO's own capability list: it names BF16 only for AVX512-BF16,
AMX or AVX2-VNNI-2 (its hint check accepts any AVX-512 CPU). OpenVINO picks bf16 by itself on such CPUs, so
f32 is always set explicitly.

Shapes: one compiled model per input height and width (a static compile costs ~0.2-1 s and is the
documented fast path), kept in a small LRU cache. A batch of one runs as one request on every core
(LATENCY); a larger batch is split into single images run in parallel on OpenVINO's CPU streams
(THROUGHPUT), one request per stream, so the batch size itself never costs a compile.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import ArtifactError, decode_metadata, runtime_refusal
from .base import Engine, EngineUnavailable

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'unetkit[openvino]'"
#: Compiled models kept per engine (one per input shape and mode); the oldest is dropped beyond this.
CACHE_SIZE = 6
OV_TYPES = {"fp32": "f32", "bf16": "bf16"}


def openvino_missing() -> str | None:
    """Why the openvino engine cannot run here, or None."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return f"OpenVINO is not installed: {INSTALL_HINT}"
    return None


@dataclass(frozen=True)
class PrecisionChoice:
    label: str  # the engine's precision: fp32, bf16 or int8
    hint: str  # OpenVINO's INFERENCE_PRECISION_HINT for the float parts: f32 or bf16
    why: str  # one phrase for describe() and the report


def native_bf16(capabilities: Iterable[str]) -> bool:
    """OpenVINO's CPU plugin lists BF16 in OPTIMIZATION_CAPABILITIES only where bf16 is native."""
    return "BF16" in set(capabilities)


def choose_precision(requested: str, file_precision: str, capabilities: Iterable[str]) -> PrecisionChoice:
    """The precision an OpenVINO engine runs, from what was asked, the file and the CPU's capability list.

    `requested` is auto, fp32 (f32), bf16 or int8; `file_precision` is the ONNX file's own (fp32, fp16,
    int8). Raises EngineUnavailable, in one line, for a request this CPU or file cannot honour.
    """
    caps = list(capabilities)
    native = native_bf16(caps)
    requested = {"f32": "fp32"}.get(requested, requested)
    if requested not in ("auto", "fp32", "bf16", "int8"):
        raise EngineUnavailable(f"openvino runs auto, fp32, bf16 or int8, not '{requested}'")
    if requested == "bf16" and not native:
        raise EngineUnavailable(
            f"bf16 is not native on this CPU (OpenVINO's capabilities: {', '.join(caps)}; no AVX512-BF16 or AMX), "
            "where OpenVINO would run f32 or emulate bf16; use --precision fp32 or auto"
        )
    if requested == "int8" and file_precision != "int8":
        raise EngineUnavailable(f"int8 needs the INT8 QDQ file (best.int8.onnx, from unet-export --int8), not a "
                                f"{file_precision} ONNX file")  # fmt: skip
    if requested == "auto":
        hint = "bf16" if native else "f32"
        why = "bf16 native on this CPU" if native else "f32: bf16 is not native on this CPU"
    else:
        hint = "bf16" if requested == "bf16" else "f32"
        why = f"{hint} as asked"
    if file_precision == "int8":
        return PrecisionChoice("int8", hint, f"int8 QDQ convolutions, the rest {why}")
    return PrecisionChoice("bf16" if hint == "bf16" else "fp32", hint, why)


def compile_config(hint: str, throughput: bool, threads: int) -> dict[str, Any]:
    """CPU plugin properties: the float precision always explicit, LATENCY (one stream on every core) or
    THROUGHPUT (OpenVINO's streams, one request each), and a thread count when one is asked for."""
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": hint,
        "PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY",
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenVinoEngine(Engine):
    name = "openvino"
    static_shapes = False  # batch sizes cost no compile: batches of 2+ run as single images on the streams
    compiled_sizes = CACHE_SIZE

    def __init__(
        self, path: Path, device: torch.device, precision: str = "auto", threads: int = 0, verify_only: bool = False
    ) -> None:
        """`verify_only` skips the refusal of a file OpenVINO failed at export: it is unet-export's own check."""
        try:
            import openvino as ov
        except ImportError:
            raise EngineUnavailable(f"OpenVINO is not installed: {INSTALL_HINT}") from None
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: ONNX file not found; run unet-export on the checkpoint first")
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line messages
            raise ArtifactError(f"{path}: OpenVINO cannot read it ({str(exc).strip().splitlines()[-1]})") from None
        meta = decode_metadata(self._metadata(), path)
        refusal = None if verify_only else runtime_refusal(dict(meta.extra), "openvino")
        if refusal:
            raise EngineUnavailable(f"{path.name}: {refusal}; run it with the onnx engine, or re-export with "
                                    "--int8-scheme cpu")  # fmt: skip
        caps = self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.choice = choose_precision(precision, str(meta.extra.get("precision", "fp32")), caps)
        if torch.device(device).type != "cpu":
            log.warning("warning: the openvino engine runs on the CPU (OpenVINO's CPU plugin), not on %s", device)
        self.threads = threads  # 0: OpenVINO's own choice (every core it may use)
        self.input_name = self.model.inputs[0].get_any_name()
        self._compiled: collections.OrderedDict[tuple[Any, ...], tuple[Any, list[Any]]] = collections.OrderedDict()
        self.runtime: dict[str, Any] = {}
        cpu = self.core.get_property("CPU", "FULL_DEVICE_NAME")
        self._base_detail = f"OpenVINO {ov.__version__.split('-')[0]} CPU ({cpu}), {self.choice.why}"
        super().__init__(torch.device("cpu"), self.choice.label, meta, path, detail=self._base_detail)

    def _metadata(self) -> dict[str, str]:
        """unetkit's ONNX metadata_props, which OpenVINO's ONNX reader keeps in rt_info['framework']."""
        if not self.model.has_rt_info(["framework"]):
            return {}
        entries = self.model.get_rt_info(["framework"]).astype(dict)
        return {key: value.astype(str) for key, value in entries.items()}

    def _compile(self, shape: tuple[int, ...], throughput: bool) -> tuple[Any, list[Any]]:
        key = (shape, throughput)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        model = self.model.clone()
        model.reshape({self.input_name: list(shape)})
        compiled = self.core.compile_model(model, "CPU", compile_config(self.choice.hint, throughput, self.threads))
        n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if throughput else 1
        if throughput and "streams" not in self.runtime:
            self.runtime["streams"] = int(compiled.get_property("NUM_STREAMS"))
            if "conv_precisions" in self.runtime:
                self._describe_runtime()
        entry = (compiled, [compiled.create_infer_request() for _ in range(n)])
        self._compiled[key] = entry
        while len(self._compiled) > CACHE_SIZE:
            self._compiled.popitem(last=False)
        if "conv_precisions" not in self.runtime:
            self._read_runtime(compiled)
        return entry

    def _read_runtime(self, compiled: Any) -> None:
        """What OpenVINO actually runs: its float precision and each convolution's runtime precision."""
        convs: collections.Counter[str] = collections.Counter()
        for op in compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) in ("Convolution", "Deconvolution"):
                convs[info["runtimePrecision"].astype(str)] += 1
        self.runtime.update(
            inference_precision=compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            conv_precisions=dict(convs),
            threads=int(compiled.get_property("INFERENCE_NUM_THREADS")),
        )
        self._describe_runtime()

    def _describe_runtime(self) -> None:
        r = self.runtime
        counts = ", ".join(f"{n} {p}" for p, n in sorted(r["conv_precisions"].items()))
        streams = f"; batches of 2+ on {r['streams']} streams" if "streams" in r else ""
        threads = f"{r['threads']} threads{streams}"
        self.detail = f"{self._base_detail}; runs {r['inference_precision']}, convolutions {counts}; {threads}"

    def close(self) -> None:
        self._compiled.clear()
        for name in ("model", "core"):
            self.__dict__.pop(name, None)
        super().close()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.numpy())
        if array.shape[0] == 1:
            _, [request] = self._compile(tuple(array.shape), throughput=False)
            request.infer({0: array}, share_inputs=True)
            return torch.from_numpy(np.array(request.get_output_tensor(0).data))
        _, requests = self._compile((1, *array.shape[1:]), throughput=True)
        outputs: list[np.ndarray] = []
        for start in range(0, len(array), len(requests)):  # one image per request, every stream busy
            chunk = list(zip(requests, range(start, min(start + len(requests), len(array))), strict=False))
            for request, i in chunk:
                request.start_async({0: array[i : i + 1]}, share_inputs=True)
            for request, _ in chunk:
                request.wait()
                outputs.append(np.array(request.get_output_tensor(0).data))
        return torch.from_numpy(np.concatenate(outputs))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "openvino": {"precision_hint": self.choice.hint, **self.runtime}}
