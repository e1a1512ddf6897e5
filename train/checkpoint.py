"""The self-describing checkpoint: weights plus everything inference needs, in plain types only.

A checkpoint is a dict saved with `torch.save` and read with `torch.load(weights_only=True)`, so opening one
someone sent you cannot execute code. Layout:

    {"format": "unetkit.checkpoint", "format_version": 1,
     "model": UNetConfig as a dict, "state_dict": {...}, "meta": {...},
     "training": {...}}            # last.pth only: optimizer, scheduler, early stopping, RNG states

`meta` holds at least n_classes, class_names, scale, mean, std, threshold, ignore_index, the validation
Dice and IoU, the epoch, the training arguments and the versions that wrote it.
"""

from __future__ import annotations

import os
import pickle
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .errors import CheckpointError
from .model import UNet, UNetConfig

FORMAT = "unetkit.checkpoint"
FORMAT_VERSION = 1
REQUIRED_META = ("n_classes", "scale", "mean", "std", "threshold")


def versions() -> dict[str, str]:
    """Versions recorded in every artifact, so a user can tell what produced it."""
    try:
        unetkit = metadata.version("unetkit")
    except metadata.PackageNotFoundError:
        unetkit = "unknown"
    return {"unetkit": unetkit, "torch": str(torch.__version__), "python": platform.python_version()}


def save_checkpoint(
    path: str | os.PathLike,
    model: UNet,
    meta: dict[str, Any],
    training: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (temp file + rename)."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": _unwrap(model).config.to_dict(),
        "state_dict": state,
        "meta": {**meta, "model": _unwrap(model).config.to_dict(), "versions": versions()},
    }
    if training is not None:
        payload["training"] = training
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint dict; every failure is a `CheckpointError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a .pth checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # a pickled class or function: loading it could run code
            raise CheckpointError(
                f"{path}: holds Python objects that could run code when loaded; unetkit only opens "
                "checkpoints of plain data (torch.load(weights_only=True))"
            ) from None
        raise CheckpointError(f"{path}: truncated or not a PyTorch file (unreadable pickle data)") from None
    except Exception as exc:  # garbage makes the unpickler fail in many ways (KeyError, EOFError, ...)
        raise CheckpointError(f"{path}: truncated or not a PyTorch file ({_first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = ""
        if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            hint = "; it looks like a bare state_dict without the model config"
        raise CheckpointError(f"{path}: not a unetkit checkpoint{hint}")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer unetkit (format {payload['format_version']}); upgrade unetkit to read it"
        )
    for key in ("model", "state_dict", "meta"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path}: damaged checkpoint, '{key}' is missing")
    missing = [k for k in REQUIRED_META if k not in payload["meta"]]
    if missing:
        raise CheckpointError(f"{path}: damaged checkpoint, meta lacks {', '.join(missing)}")
    return payload


def build_model(payload: dict[str, Any], path: str | os.PathLike = "checkpoint") -> UNet:
    """Rebuild the network described by a checkpoint dict and load its weights (eval mode)."""
    try:
        model = UNet(UNetConfig(**payload["model"]))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not match the stored model config ({_first_line(exc)})") from None
    return model.eval()


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[UNet, dict[str, Any]]:
    """Return `(model, meta)`: the model rebuilt in eval mode on `device`, and meta as a plain dict."""
    payload = read_checkpoint(path)
    return build_model(payload, path).to(device), payload["meta"]


def _unwrap(model: torch.nn.Module) -> UNet:
    """The UNet inside a torch.compile wrapper, so saved keys never carry '_orig_mod.'."""
    return getattr(model, "_orig_mod", model)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
