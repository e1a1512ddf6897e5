"""unetkit.train: the U-Net, its self-describing checkpoint, the data layer and `unet-train`.

Only the artifact contract is imported here (model, checkpoint, preprocessing, errors), so inference code
that imports this package never pulls in training-only dependencies such as albumentations or TensorBoard.
"""

from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .errors import CheckpointError, DataError, UnetkitError
from .model import UNet, UNetConfig, fuse_batchnorm

__all__ = [
    "CheckpointError",
    "DataError",
    "UNet",
    "UNetConfig",
    "UnetkitError",
    "fuse_batchnorm",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
