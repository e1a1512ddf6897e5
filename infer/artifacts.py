"""Where artifacts live and what they say about themselves.

`unet-export best.pth` writes, beside the checkpoint: best.onnx (FP32), best.fp16.onnx and
best.fp16.engine with its sidecar best.fp16.engine.json. Inference finds them by these names. Metadata is
JSON text, read back with `json.loads`, never evaluated.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from unetkit.train.errors import UnetkitError

SUFFIXES = {"onnx": ".onnx", "onnx-fp16": ".fp16.onnx", "trt": ".fp16.engine"}
METADATA_PREFIX = "unetkit."
REQUIRED_META = ("n_classes", "scale", "mean", "std", "threshold")


class ArtifactError(UnetkitError):
    """An artifact is missing, unreadable or lacks unetkit's metadata."""


def artifact_path(checkpoint: str | os.PathLike, kind: str) -> Path:
    """best.pth -> best.onnx ('onnx'), best.fp16.onnx ('onnx-fp16'), best.fp16.engine ('trt')."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIXES[kind])


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{engine}.json")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_metadata(values: dict[str, Any]) -> dict[str, str]:
    """Flat `unetkit.<key>` -> JSON text entries for ONNX metadata_props."""
    return {METADATA_PREFIX + key: json.dumps(value, sort_keys=True) for key, value in values.items()}


def decode_metadata(props: dict[str, str], source: str | os.PathLike) -> dict[str, Any]:
    """The inverse of `encode_metadata`; an artifact without unetkit's keys is an ArtifactError."""
    try:
        meta = {k[len(METADATA_PREFIX) :]: json.loads(v) for k, v in props.items() if k.startswith(METADATA_PREFIX)}
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{source}: damaged unetkit metadata ({exc})") from None
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ArtifactError(f"{source}: no unetkit metadata ({', '.join(missing)} missing); export it with unet-export")
    return meta


def read_sidecar(engine: str | os.PathLike) -> dict[str, Any]:
    """The JSON written beside a TensorRT engine: versions, GPU, profile, precision, model meta."""
    path = sidecar_path(engine)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: sidecar not found; re-export the engine with unet-export") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable sidecar ({exc})") from None
