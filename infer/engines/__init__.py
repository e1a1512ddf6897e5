"""Engines by name: `create_engine("trt", checkpoint="runs/x/best.pth")` finds best.fp16.engine beside it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from unetkit.core import load_checkpoint
from unetkit.core.checkpoint import DEFAULT_CHECKPOINT
from unetkit.core.device import resolve_device

from ..artifacts import ArtifactError, artifact_path, stale_problem
from .base import DTYPES, PRECISIONS, Engine, EngineShapeError, EngineUnavailable, ShapeRange, canonical_precision
from .eager import EagerEngine

ENGINE_NAMES = ("torch", "compile", "onnx", "trt", "openvino")
#: The artifact each file-based engine reads for a precision (any other precision reads the FP32 file).
ONNX_ARTIFACTS = {"fp16": "onnx-fp16", "int8": "onnx-int8"}
#: The precisions of the files unet-export writes, which the onnx engine runs (it has no precision of its own).
ONNX_PRECISIONS = ("fp32", "fp16", "int8")
TRT_ARTIFACTS = {"fp16": "trt", "int8": "trt-int8"}

__all__ = [
    "DTYPES",
    "ENGINE_NAMES",
    "PRECISIONS",
    "Engine",
    "EngineShapeError",
    "EngineUnavailable",
    "ShapeRange",
    "create_engine",
]


def default_precision(name: str, device: torch.device) -> str:
    """FP16 where it is fast (CUDA; TensorRT engines are FP16), FP32 on the CPU, where FP16 only adds casts;
    OpenVINO decides from the CPU's capabilities (bf16 only where native)."""
    if name == "openvino":
        return "auto"
    return "fp16" if device.type == "cuda" or name == "trt" else "fp32"


def create_engine(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    precision: str | None = None,
    compile_mode: str | None = None,
) -> Engine:
    """Build engine `name` from an explicit artifact (`model`) or from the artifacts beside `checkpoint`.

    torch and compile run the checkpoint itself; onnx, openvino and trt find best.onnx / best.fp16.onnx /
    best.int8.onnx / best.fp16.engine / best.int8.engine beside it by precision, unless `model` names the
    artifact. Precision `f32` is read as `fp32`.
    """
    dev = resolve_device(device)
    if name not in ENGINE_NAMES:
        raise EngineUnavailable(f"unknown engine '{name}'; choose one of: {', '.join(ENGINE_NAMES)}")
    asked = canonical_precision(precision) if precision and precision.lower() != "auto" else None
    precision = asked or ("auto" if name == "openvino" else default_precision(name, dev))
    if name in ("torch", "compile"):
        source = Path(model or checkpoint or DEFAULT_CHECKPOINT)
        net, meta = load_checkpoint(source)
        if name == "torch":
            return EagerEngine(net, meta, dev, precision, source)
        from .compiled import CompiledEngine

        return CompiledEngine(net, meta, dev, precision, compile_mode, source)
    ckpt = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if name == "onnx":
        from .ort import OnnxEngine

        if precision not in ONNX_PRECISIONS:
            raise EngineUnavailable(f"onnx runs the files unet-export writes ({', '.join(ONNX_PRECISIONS)}), not "
                                    f"{precision}; bf16 runs in the torch and openvino engines")  # fmt: skip
        path = Path(model) if model else artifact_path(ckpt, ONNX_ARTIFACTS.get(precision, "onnx"))
        _require(path, None if model else ckpt, precision)
        return _as_asked(_current(OnnxEngine(path, dev), path, None if model else ckpt), asked)
    if name == "openvino":
        from .openvino import OpenVinoEngine, openvino_missing

        missing = openvino_missing()  # before the file: an engine that cannot run here says so first
        if missing:
            raise EngineUnavailable(missing)
        path = Path(model) if model else artifact_path(ckpt, "onnx-int8" if precision == "int8" else "onnx")
        _require(path, None if model else ckpt, precision)
        engine = _current(OpenVinoEngine(path, dev, precision), path, None if model else ckpt)
        if engine.meta.extra.get("precision") == "fp16":  # OpenVINO would run it at its own precision, unsaid
            engine.close()
            raise EngineUnavailable(f"{path}: an fp16 file; openvino runs best.onnx (fp32, bf16) or best.int8.onnx")
        return engine
    from .trt import TrtEngine  # says first whether TensorRT can run here at all, then whether the file exists

    if model is None and precision not in TRT_ARTIFACTS:
        built = ", ".join(TRT_ARTIFACTS)
        raise EngineUnavailable(f"trt runs the engines unet-export builds ({built}), not {precision}")
    path = Path(model) if model else artifact_path(ckpt, TRT_ARTIFACTS.get(precision, "trt"))
    return _as_asked(_current(TrtEngine(path, dev), path, None if model else ckpt), asked)


def _as_asked(engine: Engine, asked: str | None) -> Engine:
    """`engine`, unless a precision was asked for and its file computes in another (closed, then refused): an
    `--model` file decides the precision, and a run labelled fp16 must not be an int8 file's."""
    if asked is not None and engine.precision != asked:
        engine.close()
        raise EngineUnavailable(f"{engine.source}: computes in {engine.precision}, not the {asked} asked for; give "
                                f"the {asked} file or leave out the precision")  # fmt: skip
    return engine


def _current(engine: Engine, path: Path, checkpoint: Path | None) -> Engine:
    """`engine`, unless it was found beside `checkpoint` but exported from another one (closed, then refused)."""
    problem = checkpoint and stale_problem(path, dict(engine.meta.extra), checkpoint)
    if problem:
        engine.close()
        raise ArtifactError(problem)
    return engine


def _require(path: Path, checkpoint: str | os.PathLike | None, precision: str) -> None:
    if not path.is_file():
        flag = " --int8" if precision == "int8" else ""
        hint = (f"run `unet-export {checkpoint}{flag}` first (an export that did run refused the file when it "
                "failed its verification: its output says why)" if checkpoint else "check the path")  # fmt: skip
        raise ArtifactError(f"{path}: not found; {hint}")
