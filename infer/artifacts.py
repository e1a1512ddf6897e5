"""Where artifacts live and what they say about themselves.

`unet-export best.pth` writes, beside the checkpoint: best.onnx (FP32), best.fp16.onnx and
best.fp16.engine with its sidecar best.fp16.engine.json; with --int8 also best.int8.onnx (QDQ) and
best.int8.engine. Inference finds them by these names. Metadata is
JSON text, read back with `json.loads`, never evaluated.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from unetkit.core.errors import UnetkitError
from unetkit.core.meta import MetaError, ModelMeta

SUFFIXES = {
    "onnx": ".onnx",
    "onnx-fp16": ".fp16.onnx",
    "onnx-int8": ".int8.onnx",
    "trt": ".fp16.engine",
    "trt-int8": ".int8.engine",
}
METADATA_PREFIX = "unetkit."
REQUIRED_META = ("n_classes", "scale", "mean", "std", "threshold")


class ArtifactError(UnetkitError):
    """An artifact is missing, unreadable or lacks unetkit's metadata."""


def artifact_path(checkpoint: str | os.PathLike, kind: str) -> Path:
    """best.pth -> best.onnx ('onnx'), best.fp16.onnx ('onnx-fp16'), best.int8.onnx ('onnx-int8'),
    best.fp16.engine ('trt'), best.int8.engine ('trt-int8')."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIXES[kind])


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{engine}.json")


def sha256_file(path: str | os.PathLike) -> str:
    """The file's SHA-256; computed once per version of the file (path, size, modification time), as a
    benchmark or `--engine fastest` asks about one checkpoint for every engine."""
    st = os.stat(path)
    return _sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_metadata(meta: ModelMeta, **artifact: Any) -> dict[str, str]:
    """Flat `unetkit.<key>` -> JSON text entries for ONNX metadata_props: the model's description and what
    the artifact itself is (precision, exporter, source checkpoint, ...)."""
    values = {**meta.to_dict(), **artifact}
    return {METADATA_PREFIX + key: json.dumps(value, sort_keys=True) for key, value in values.items()}


def decode_metadata(props: dict[str, str], source: str | os.PathLike) -> ModelMeta:
    """The inverse of `encode_metadata`; an artifact without unetkit's description is an ArtifactError."""
    try:
        values = {k[len(METADATA_PREFIX) :]: json.loads(v) for k, v in props.items() if k.startswith(METADATA_PREFIX)}
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{source}: damaged unetkit metadata ({exc})") from None
    if not values:
        raise ArtifactError(f"{source}: no unetkit metadata; export it with unet-export")
    return meta_from(values, source)


def meta_from(values: dict[str, Any], source: str | os.PathLike) -> ModelMeta:
    """A ModelMeta from an artifact's stored values, or an ArtifactError naming the file."""
    try:
        return ModelMeta.from_dict(values)
    except MetaError as exc:
        raise ArtifactError(f"{source}: {exc}; re-export it with unet-export") from None


def stale_problem(artifact: Path, extra: dict[str, Any], checkpoint: Path) -> str | None:
    """Why the artifact found beside `checkpoint` must not stand in for it: it records the digest of another
    checkpoint (the run was re-trained, or a re-export failed and left the old file), or None. An artifact
    that records no digest, or a checkpoint that is not on this machine, cannot be compared."""
    recorded = extra.get("source_sha256")
    if not isinstance(recorded, str) or not checkpoint.is_file() or recorded == sha256_file(checkpoint):
        return None
    return (
        f"{artifact}: exported from another checkpoint than {checkpoint} (its source digest {recorded[:12]}); "
        f"re-export it with `unet-export {checkpoint}`"
    )


def runtime_refusal(extra: dict[str, Any], runtime: str) -> str | None:
    """Why `runtime` must not run an artifact: it failed the artifact's verification at export (the verdicts
    unet-export records per runtime in `runtime_checks`), or None."""
    checks = extra.get("runtime_checks")
    if not isinstance(checks, dict):
        return None
    verdict = checks.get(runtime)
    if not isinstance(verdict, dict) or verdict.get("passed", True):
        return None
    where = checks.get("cpu") or "the exporting CPU"
    return (f"{runtime} failed this file's verification at export on {where} (mask agreement "
            f"{verdict.get('image_dice')}, needs {verdict.get('criterion')})")  # fmt: skip


def read_sidecar(engine: str | os.PathLike) -> dict[str, Any]:
    """The JSON written beside a TensorRT engine: versions, GPU, profile, precision, model meta."""
    path = sidecar_path(engine)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: sidecar not found; re-export the engine with unet-export") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable sidecar ({exc})") from None
