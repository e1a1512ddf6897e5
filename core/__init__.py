"""unetkit.core: the contract every stage shares.

Errors, atomic writes, device choice, CLI helpers, image reading, the U-Net, the checkpoint and its typed
`ModelMeta`, preprocessing and labels. It imports nothing else of unetkit and nothing training-only, so
inference deploys with it alone. The names below load on first use (PEP 562), so importing the package is
instant: the commands' entry points (`core.launch`) live here and must start before torch loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
    from .errors import CheckpointError, DataError, UnetkitError
    from .meta import ModelMeta
    from .model import UNet, UNetConfig, fuse_batchnorm

_WHERE = {
    "Checkpoint": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "read_checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "CheckpointError": ".errors",
    "DataError": ".errors",
    "UnetkitError": ".errors",
    "ModelMeta": ".meta",
    "UNet": ".model",
    "UNetConfig": ".model",
    "fuse_batchnorm": ".model",
}
__all__ = [
    "Checkpoint",
    "CheckpointError",
    "DataError",
    "ModelMeta",
    "UNet",
    "UNetConfig",
    "UnetkitError",
    "fuse_batchnorm",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]  # the keys of _WHERE


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value
