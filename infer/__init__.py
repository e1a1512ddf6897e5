"""unetkit.infer: the engines (torch, onnx, trt), tiling and the `unet-infer` pipeline.

The names below load on first use (PEP 562): `python -m unetkit.infer` (torchrun's way in) imports this
package before its entry point, which must start before torch loads (core/launch.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engines import ENGINE_NAMES, Engine, EngineShapeError, EngineUnavailable, create_engine

__all__ = ["ENGINE_NAMES", "Engine", "EngineShapeError", "EngineUnavailable", "create_engine"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".engines", __name__), name)
    globals()[name] = value
    return value
