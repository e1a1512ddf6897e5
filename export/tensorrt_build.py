"""FP16 or INT8 QDQ ONNX -> TensorRT engine (TensorRT 10.x and 11.x), checked for its precision after building.

Written from NVIDIA's TensorRT Python API documentation and samples; not run here, where TensorRT's
builder cannot be installed. Key facts it follows:
- TensorRT 11 networks are always strongly typed and BuilderFlag.FP16 no longer exists, so precision comes
  from the FP16 ONNX. The STRONGLY_TYPED creation flag is required for that on 10.x and ignored on 11.x;
  EXPLICIT_BATCH is gone from 11.x and never used.
- A strongly typed FP32 graph silently builds an FP32 engine, so the built engine's layer formats are read
  back with the engine inspector and an engine whose convolutions are not FP16 is refused.
- The timing cache is loaded before and saved after each build; set_timing_cache takes both arguments.
- INT8 is explicit quantization: the network is strongly typed and its int8 comes from best.int8.onnx's Q/DQ
  pairs; NVIDIA's "Explicit Quantization" guide: precision build flags are not needed and not set, and the
  implicit-quantization calibrators are deprecated since 10.1. The parser takes int8 Q/DQ with zero points
  of 0 and no int32 bias dequantization, which the file is checked for first; the layers the file leaves in
  float (the logits, padding, cropping) run in FP32. Not yet run on a GPU (no TensorRT here).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from unetkit.core.atomic import write_bytes_atomic
from unetkit.core.meta import ModelMeta
from unetkit.infer.artifacts import sha256_file
from unetkit.infer.engines import ShapeRange
from unetkit.infer.engines.trt import INSTALL_HINT, gpu_identity, trt_logger

from .onnx_export import ExportError
from .quantize import qdq_problems_for_tensorrt

log = logging.getLogger(__name__)
#: Share of convolution (or compute) layers that must run in FP16 for an engine to count as FP16.
MIN_FP16_SHARE = 0.9
#: The same for INT8: every convolution's inputs are quantized, but the last one's output (the logits) and
#: those TensorRT chooses to keep in float for speed report another format.
MIN_INT8_SHARE = 0.75
MIN_SHARE = {"fp16": MIN_FP16_SHARE, "int8": MIN_INT8_SHARE}
#: Which tensor of a layer says the precision it ran in (see layer_precisions).
SHARE_SIDE = {"fp16": "Outputs", "int8": "Inputs"}


@dataclass(frozen=True)
class BuildSettings:
    profile: ShapeRange
    workspace_gib: float | None = None  # None: TensorRT's default (the device's memory)
    timing_cache: Path | None = None
    optimization_level: int | None = None  # None: TensorRT's default (3)
    progress: bool = True
    precision: str = "fp16"  # fp16 (from best.fp16.onnx) or int8 (from best.int8.onnx): the graph sets it


def default_timing_cache(trt_version: str, gpu: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unetkit"
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu}-trt{trt_version}").strip("-")
    return base / f"timing-{slug}.cache"


def tensorrt_unavailable() -> str | None:
    """Why no engine can be built here, or None when TensorRT and a CUDA GPU are both present."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"TensorRT is not installed ({exc}); to build engines: {INSTALL_HINT}"
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU, and none is visible to PyTorch"
    return None


def engine_skip_reason(device: torch.device, unavailable: str | None) -> str | None:
    """Why this export builds no TensorRT engine, or None: TensorRT must be usable here and the verification
    device a CUDA GPU, since an engine can only be built and verified on one (never after a build)."""
    if unavailable:
        return unavailable
    if device.type != "cuda":
        return (
            f"--device {device.type}: a TensorRT engine is built and verified on a CUDA GPU; "
            "export with --device cuda (or auto) to build it"
        )
    return None


def precision_of(text: str) -> str:
    """Map an inspector data type or format string ('Half', 'Row major linear FP16 format', ...) to a name."""
    t = text.lower()
    if "bfloat16" in t or "bf16" in t:  # before "float": TensorRT writes "Row major linear BFloat16 format"
        return "bf16"
    if "fp16" in t or "half" in t:
        return "fp16"
    if "int8" in t:
        return "int8"
    if "fp32" in t or "float" in t:
        return "fp32"
    return "unknown"


#: Where a layer's output precision is spelled: TensorRT 10 writes "Format/Datatype" ("Row major linear FP16
#: format", or just "Half" in Myelin's layers); TensorRT 11 split it into "DataType" ("Half") and "Format",
#: and NVIDIA's own 11.x tooling spells the first "Datatype". The data type is read first when present.
PRECISION_KEYS = ("DataType", "Datatype", "Format/Datatype", "Format")
#: Layers that only move or convert data at the engine's boundary (the FP32 input and output casts).
_IO_LAYER = re.compile(r"reformat|copynode|(?<![a-z])cast|shuffle", re.IGNORECASE)  # not "broadcast"
_CONV = re.compile(r"conv", re.IGNORECASE)


def tensor_precision(tensor: dict[str, Any]) -> str:
    """The precision of one inspector tensor entry, in either TensorRT's 10.x or 11.x spelling."""
    for key in PRECISION_KEYS:
        precision = precision_of(str(tensor.get(key, "")))
        if precision != "unknown":
            return precision
    return "unknown"


def layer_precisions(engine_info: str | dict[str, Any] | list[Any], side: str = "Outputs") -> tuple[Counter, str]:
    """Precisions of the convolution layers in engine-inspector JSON (DETAILED verbosity), read from each
    layer's first tensor on `side`: "Outputs" for FP16, "Inputs" for INT8. An INT8 convolution reads INT8,
    but writes INT8 only when the next layer is quantized too (NVIDIA's QAT ResNet dump: 21 of 21
    convolutions read INT8, 8 of them write it), so its output says little about how it ran.

    A layer is convolution-like when its ParameterType or LayerType says so ("Convolution",
    "CaskConvolution", "CaskDeconvolution") or, for kernels Myelin generated from fused ONNX nodes (LayerType
    "kgen"), when its Name or Metadata names an ONNX Conv node. Layers that only reformat or cast at the
    engine's boundary are never counted: the FP32 input and output casts of an FP16 graph are not a sign of
    an FP32 engine. If no layer is convolution-like, the other compute layers are counted; the second value
    says which were counted.
    """
    data = json.loads(engine_info) if isinstance(engine_info, str) else engine_info
    found = data if isinstance(data, list) else data.get("Layers", [])  # NVIDIA's own tools accept both shapes
    layers = [layer for layer in found if isinstance(layer, dict) and not _is_io(layer)]

    def count(selected: list[dict[str, Any]]) -> Counter:
        counts: Counter = Counter()
        for layer in selected:
            tensors = layer.get(side) or [{}]
            counts[tensor_precision(tensors[0])] += 1
        counts.pop("unknown", None)
        return counts

    convs = count([layer for layer in layers if _CONV.search(_describe(layer))])
    if convs:
        return convs, "convolution layers"
    return count(layers), "layers"


def _kind(layer: dict[str, Any]) -> str:
    return f"{layer.get('ParameterType', '')} {layer.get('LayerType', '')}"


def _describe(layer: dict[str, Any]) -> str:
    return f"{_kind(layer)} {layer.get('Name', '')} {layer.get('Metadata', '')}"


def _is_io(layer: dict[str, Any]) -> bool:
    """A boundary reformat or cast: its kind or name says so and it names no convolution."""
    text = f"{_kind(layer)} {layer.get('Name', '')}"
    return bool(_IO_LAYER.search(text)) and not _CONV.search(_describe(layer))


def _progress_monitor(trt: Any) -> Any:
    """A tqdm bar per build phase, through TensorRT's IProgressMonitor (TensorRT >= 10)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, tqdm] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.bars[phase_name] = tqdm(total=num_steps, desc=f"TensorRT: {phase_name}", leave=False)

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.n = step + 1  # steps count from 0
                bar.refresh()
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()


def build_engine(
    onnx_path: Path, engine_path: Path, settings: BuildSettings, meta: ModelMeta, device: torch.device
) -> dict[str, Any]:
    """Build and write `engine_path` on `device` (a plain plan, no header, so trtexec and Triton load it) and
    return the sidecar dict. Callers pass a temporary path and rename it once the engine is verified."""
    with torch.cuda.device(device):  # TensorRT builds for the current CUDA device: make it the one asked for
        return _build(onnx_path, engine_path, settings, meta, device)


def _build(
    onnx_path: Path, engine_path: Path, settings: BuildSettings, meta: ModelMeta, device: torch.device
) -> dict[str, Any]:
    import tensorrt as trt

    start = time.perf_counter()
    if settings.precision == "int8":
        refuse_non_tensorrt_qdq(onnx_path)
    logger = trt_logger()
    builder = trt.Builder(logger)
    # Required on 10.x for FP16 from the graph, retained and ignored on 11.x (always strongly typed).
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    input_name = network.get_input(0).name
    config = builder.create_builder_config()
    if settings.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gib * (1 << 30)))
    if settings.optimization_level is not None:
        config.builder_optimization_level = settings.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # lets the inspector report layer formats
    profile = builder.create_optimization_profile()
    p = settings.profile
    profile.set_shape(input_name, p.min, p.opt, p.max)
    if config.add_optimization_profile(profile) < 0:  # -1: TensorRT found the profile invalid (and logged why)
        raise ExportError(f"TensorRT refused the optimization profile {p.describe()}")
    cache_bytes = (
        settings.timing_cache.read_bytes() if settings.timing_cache and settings.timing_cache.exists() else b""
    )
    cache = config.create_timing_cache(cache_bytes)
    if cache is None or not config.set_timing_cache(cache, False):  # another GPU's or TensorRT's cache
        log.warning("timing cache %s does not fit this GPU/TensorRT; starting a new one", settings.timing_cache)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    if settings.progress and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"{onnx_path}: TensorRT could not build an engine (see its messages above)")
    engine_path.write_bytes(bytes(plan))
    timing = config.get_timing_cache()
    if settings.timing_cache and timing is not None:
        write_bytes_atomic(settings.timing_cache, bytes(timing.serialize()))
    report = inspect_engine(trt, logger, engine_path, input_name, p.opt, settings.precision)
    return {
        "format_version": 1,
        "tensorrt_version": trt.__version__,
        **gpu_identity(device),
        "precision": settings.precision,
        "profile": {"input": input_name, **p.to_dict()},
        "workspace_gib": settings.workspace_gib,
        "source_onnx": onnx_path.name,
        "source_onnx_sha256": sha256_file(onnx_path),
        "build_seconds": round(time.perf_counter() - start, 1),
        **report,
        "meta": meta.to_dict(),
    }


def refuse_non_tensorrt_qdq(onnx_path: Path) -> None:
    """ExportError, before a build, for a QDQ file TensorRT's parser would refuse (see qdq_problems_for_tensorrt)."""
    import onnx

    problems = qdq_problems_for_tensorrt(onnx.load(str(onnx_path), load_external_data=False))
    if problems:
        more = f" and {len(problems) - 2} more" if len(problems) > 2 else ""
        raise ExportError(f"{onnx_path.name}: not a TensorRT INT8 file: {'; '.join(problems[:2])}{more}; export "
                          "it with --int8-scheme symmetric")  # fmt: skip


def precision_share(counts: Counter, precision: str) -> tuple[float, str | None]:
    """The share of counted layers in `precision`, and why that is too low to keep the engine (or None)."""
    total = sum(counts.values())
    share = counts[precision] / total if total else 0.0
    if share >= MIN_SHARE[precision]:
        return share, None
    if not total:
        return share, "the engine inspector reports no layer precisions"
    return share, f"only {counts[precision]} of {total} counted layers run in {precision.upper()} ({dict(counts)})"


def inspect_engine(
    trt: Any, logger: Any, engine_path: Path, input_name: str, opt: tuple[int, ...], precision: str = "fp16"
) -> dict[str, Any]:
    """I/O dtypes and convolution precisions of a built engine; refuses an engine not in `precision`."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise ExportError(f"{engine_path}: the engine just built does not deserialize")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    io_dtypes = {n: engine.get_tensor_dtype(n).name.lower() for n in names}
    context = engine.create_execution_context()
    # With the input shape set, formats are reported instead of "N/A due to dynamic shapes".
    if context is None or not context.set_input_shape(input_name, tuple(opt)):
        raise ExportError(f"{engine_path}: cannot create an execution context at the profile's optimum shape")
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    counts, what = layer_precisions(info, SHARE_SIDE[precision])
    share, problem = precision_share(counts, precision)
    if problem:
        name = precision.upper()
        raise ExportError(
            f"{engine_path.name}: {problem} ({what}); {name} is not confirmed, so the engine was not kept"
        )
    return {"io_dtypes": io_dtypes, "layer_precisions": {"counted": what, **counts},
            f"{precision}_share": round(share, 4)}  # fmt: skip
