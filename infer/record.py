"""Which model an output folder's masks come from, so one folder never mixes two models' outputs.

A folder run writes `unetkit-infer.json` into its output folder: the model's checkpoint digest and the
precision. A later run (with or without --resume) into the same folder must be of the same model: another
model's masks, probability maps or overlays would sit beside its own, and with --resume the folder would end
up half one model, half the other. Parts of one sharded run write the same record, so they agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unetkit.core.atomic import write_text_atomic
from unetkit.core.errors import OutputError

from .artifacts import sha256_file
from .engines import Engine

RECORD_NAME = "unetkit-infer.json"


def model_identity(engine: Engine) -> dict[str, Any]:
    """What makes two runs' masks the same model's: the checkpoint's digest (an exported file's is the one
    it records from its export) and the precision; the engine running it does not count."""
    recorded = engine.meta.extra.get("source_sha256")
    if isinstance(recorded, str):
        digest = recorded
    elif engine.source is not None and engine.source.is_file():
        digest = sha256_file(engine.source)
    else:
        digest = "unknown"
    model = engine.source.name if engine.source is not None else "in-memory model"
    return {"model": model, "checkpoint_sha256": digest, "precision": engine.precision}


def claim_out_dir(out: Path, identity: dict[str, Any]) -> None:
    """Record `identity` in `out`, or OutputError when `out` already holds another model's outputs."""
    path = out / RECORD_NAME
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise OutputError(f"{path}: unreadable ({exc}); delete it if the folder's masks may be replaced") from None
        if not isinstance(earlier, dict):
            earlier = {}
        if any(earlier.get(k) != identity[k] for k in ("checkpoint_sha256", "precision")):
            raise OutputError(
                f"--out {out}: holds the outputs of another model ({_describe(earlier)}); this run is "
                f"{_describe(identity)}, and one folder must not mix two models: give another --out, or empty it"
            )
        return
    write_text_atomic(path, json.dumps(identity, indent=1, sort_keys=True) + "\n")


def _describe(identity: dict[str, Any]) -> str:
    return (f"{identity.get('model')} {identity.get('precision')}, checkpoint "
            f"{str(identity.get('checkpoint_sha256'))[:12]}")  # fmt: skip
