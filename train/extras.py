"""The training stack is an extra (`unetkit[train]`): inference deploys without it, and a training command
run without it says so in one line before any work."""

from __future__ import annotations

import importlib

from unetkit.core.errors import UnetkitError

#: Module -> the package that provides it, for everything `unet-train` needs beyond unetkit's own needs.
TRAINING_MODULES = {"cv2": "opencv-python-headless", "tensorboard": "tensorboard"}
#: What augmentation needs on top (a run with --no-augment trains without it).
AUGMENT_MODULES = {"albumentations": "albumentations"}


def require_training_stack(augment: bool) -> None:
    """Raise UnetkitError naming the extra when a package this training needs cannot be imported."""
    missing = []
    for module, package in {**(AUGMENT_MODULES if augment else {}), **TRAINING_MODULES}.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise UnetkitError(
            f"training needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            "pip install 'unetkit[train]'"
        )
