"""unetkit.core: the contract every stage shares.

Errors, atomic writes, device choice, CLI helpers, image reading, the U-Net, the checkpoint and its typed
`ModelMeta`, preprocessing and labels. It imports nothing else of unetkit and nothing training-only, so
inference deploys with it alone.
"""

from .checkpoint import Checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from .errors import CheckpointError, DataError, UnetkitError
from .meta import ModelMeta
from .model import UNet, UNetConfig, fuse_batchnorm

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
]
