"""unetkit.infer: the engines (torch, onnx, trt), tiling and the `unet-infer` pipeline."""

from .engines import ENGINE_NAMES, Engine, EngineShapeError, EngineUnavailable, create_engine

__all__ = ["ENGINE_NAMES", "Engine", "EngineShapeError", "EngineUnavailable", "create_engine"]
