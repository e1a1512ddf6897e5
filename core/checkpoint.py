"""The self-describing checkpoint: weights plus everything inference needs, in plain types only.

A checkpoint is a dict saved with `torch.save` and read with `torch.load(weights_only=True)`, so opening one
someone sent you cannot execute code. Format 2 (3 when the network has an architecture option on: attention
gates or deep supervision, which a format-2 reader could not rebuild, so it asks for an upgrade instead):

    {"format": "unetkit.checkpoint", "format_version": 2,
     "model": UNetConfig as a dict, "state_dict": {...},
     "meta": ModelMeta.to_dict(),  # n_classes, scale, mean, std, threshold, ... and extra (versions, ...)
     "training": {...}}            # last.pth only: optimizer, scheduler, early stopping, RNG states

Format 1 (the first releases) had the same layout with a free-form meta dict; `_meta_v1` reads it.
"""

from __future__ import annotations

import os
import pickle
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any, cast

import torch

from .atomic import atomic_path
from .errors import CheckpointError
from .meta import MetaError, ModelMeta
from .model import UNet, UNetConfig

FORMAT = "unetkit.checkpoint"
#: The newest format this release reads; it writes PLAIN_VERSION for a network without architecture options.
FORMAT_VERSION = 3
PLAIN_VERSION = 2
#: What every command reads when no checkpoint is named: the best one of the run in this folder.
DEFAULT_CHECKPOINT = Path("best.pth")


@dataclass
class Checkpoint:
    """A checkpoint as read from disk: the network's config and weights, its ModelMeta, and for last.pth
    the training state."""

    path: Path
    config: UNetConfig
    state_dict: dict[str, torch.Tensor]
    meta: ModelMeta
    training: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def build_model(self) -> UNet:
        """The network rebuilt with its weights, in eval mode."""
        try:
            model = UNet(self.config)
            model.load_state_dict(self.state_dict)
        except (TypeError, RuntimeError) as exc:
            raise CheckpointError(
                f"{self.path}: weights do not match the stored model config ({_load_problem(exc)})"
            ) from None
        return model.eval()


def versions() -> dict[str, str]:
    """Versions recorded in every artifact, so a user can tell what produced it."""
    try:
        unetkit = metadata.version("unetkit")
    except metadata.PackageNotFoundError:
        unetkit = "unknown"
    return {"unetkit": unetkit, "torch": str(torch.__version__), "python": platform.python_version()}


def save_checkpoint(
    path: str | os.PathLike, model: UNet, meta: ModelMeta, training: dict[str, Any] | None = None
) -> None:
    """Write a checkpoint atomically (temp file + rename); a failed write is an OSError naming `path` and the
    file system's reason (torch.save itself only says "unexpected pos" when a disk fills up)."""
    net = _unwrap(model)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if net.config.options else PLAIN_VERSION,
        "model": net.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "meta": meta.replace(versions=versions()).to_dict(),
    }
    if training is not None:
        payload["training"] = training
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        sink = _RecordingWriter(f)
        try:
            torch.save(payload, cast(IO[bytes], sink))  # torch only calls write() and flush()
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None


class _RecordingWriter:
    """A file for torch.save that remembers the OSError behind a failed write: torch turns it into a
    RuntimeError without the errno, which says whether the disk is full."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and validate a checkpoint; every failure is a `CheckpointError` naming the file."""
    path = Path(path)
    payload = _load(path, map_location)
    version = payload.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer unetkit (format {version}); upgrade unetkit to read it")
    for key in ("model", "state_dict", "meta"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path}: damaged checkpoint, '{key}' is missing")
    try:
        config = UNetConfig(**payload["model"])
        meta = _meta_v1(payload["meta"]) if version < 2 else ModelMeta.from_dict(payload["meta"])
    except (TypeError, ValueError, MetaError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint, {exc}") from None
    disagree = [f"{key} {getattr(meta, key)} in its description, {getattr(config, key)} in the network"
                for key in ("n_classes", "in_channels") if getattr(meta, key) != getattr(config, key)]  # fmt: skip
    if disagree:
        raise CheckpointError(f"{path}: damaged checkpoint, {'; '.join(disagree)}")
    return Checkpoint(path, config, payload["state_dict"], meta, payload.get("training"), version)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[UNet, ModelMeta]:
    """Return `(model, meta)`: the model rebuilt in eval mode on `device`, and its ModelMeta."""
    checkpoint = read_checkpoint(path)
    return checkpoint.build_model().to(device), checkpoint.meta


def _meta_v1(raw: dict[str, Any]) -> ModelMeta:
    """Format 1's meta: the same keys, plus a copy of the model config that format 2 keeps only once."""
    return ModelMeta.from_dict({k: v for k, v in raw.items() if k != "model"})


def _load(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a .pth checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # torch names the pickled class or function it refused ("unsupported GLOBAL ...")
            raise CheckpointError(
                f"{path}: holds Python objects that a weights-only load does not allow (loading them could run "
                "code); unetkit only opens checkpoints of plain data"
            ) from None
        raise CheckpointError(f"{path}: truncated or not a PyTorch file (unreadable pickle data)") from None
    except (KeyError, EOFError, IndexError):  # garbage's byte values as a key or index say nothing to a user
        raise CheckpointError(f"{path}: truncated or not a PyTorch file") from None
    except Exception as exc:  # garbage makes the unpickler fail in many ways
        raise CheckpointError(f"{path}: truncated or not a PyTorch file ({_first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = ""
        if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            hint = "; it looks like a bare state_dict without the model config"
        raise CheckpointError(f"{path}: not a unetkit checkpoint{hint}")
    return payload


def _unwrap(model: torch.nn.Module) -> UNet:
    """The UNet inside a torch.compile or DistributedDataParallel wrapper, so saved keys carry no prefix."""
    inner: Any = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    if not isinstance(inner, UNet):
        raise TypeError(f"save_checkpoint takes a unetkit UNet, got {type(inner).__name__}")
    return inner


def _load_problem(exc: BaseException, limit: int = 240) -> str:
    """load_state_dict's multi-line report in one line: which keys are missing or unexpected, which shapes
    differ (its first line only says that there were errors)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = " ".join(lines) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
