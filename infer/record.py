"""Which model an output folder's masks come from, so one folder never mixes two models' outputs.

A folder run writes `unetkit-infer.json` into its output folder: the model's checkpoint digest (and, for
information, the file that first wrote there). A later run (with or without --resume) into the same folder must
be of the same checkpoint: another model's masks, probability maps or overlays would sit beside its own, and
with --resume the folder would end up half one model, half the other. The precision may differ (--engine
fastest and openvino choose theirs per machine). Parts of one sharded run record the same checkpoint, so
they agree; the record is created exclusively, so two different models starting at once cannot both claim it.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unetkit.core.atomic import temp_path, write_text_atomic
from unetkit.core.errors import OutputError
from unetkit.core.postprocess import PostProcess

from .artifacts import sha256_file
from .engines import Engine
from .engines.ensemble import EnsembleEngine
from .io import Item
from .settings import SIBLINGS, InferSettings, OutputOptions

RECORD_NAME = "unetkit-infer.json"


def model_identity(engine: Engine) -> dict[str, Any]:
    """The checkpoint's digest (an exported file's is the one it records from its export), with the file that
    ran for the record's reader (the precision is not recorded: runs at several may share the folder)."""
    recorded = engine.meta.extra.get("source_sha256")
    if isinstance(recorded, str):
        digest = recorded
    elif engine.source is not None and engine.source.is_file():
        digest = sha256_file(engine.source)
    else:
        digest = "unknown"
    if isinstance(engine, EnsembleEngine):
        model = "ensemble of " + ", ".join(_short(m.source) for m in engine.members)
    else:
        model = engine.source.name if engine.source is not None else "in-memory model"
    return {"model": model, "checkpoint_sha256": digest}


def _short(source: Path | None) -> str:
    """A member's file with its folder (fold runs all write best.pth)."""
    return f"{source.parent.name}/{source.name}" if source is not None else "in-memory model"


def mask_settings(settings: InferSettings) -> dict[str, Any]:
    """What decides a mask besides the model and its precision: whole images, or the tiling (edge, overlap,
    blend), test-time augmentation and post-processing. A --resume with other ones would leave the folder's
    masks half one way, half the other."""
    extra: dict[str, Any] = {"tta": True} if settings.tta else {}  # absent when off, as older folders record
    if settings.postprocess.active:
        extra["postprocess"] = settings.postprocess.record()
    if not settings.tile:
        return {"tile": 0, **extra}
    overlap = settings.overlap if settings.overlap is not None else settings.tile // 4
    return {"tile": settings.tile, "overlap": overlap, "blend": settings.blend, **extra}


def kept_masks(out: Path, items: Sequence[Item]) -> list[Path]:
    """The masks in `out` that a run over `items` does not rewrite (another part's, the rest of a folder when
    one image is run): they stay as they were made."""
    rewritten = {it.mask for it in items}
    found = (p for p in out.rglob("*.png") if not any(p.name.endswith(s) for s in SIBLINGS))
    return sorted(p for p in found if p not in rewritten)


def stale_siblings(items: Sequence[Item], outputs: OutputOptions) -> list[Path]:
    """Probability maps and overlays an earlier run wrote beside masks this run rewrites without them: they
    would no longer match the masks beside them. With --resume only images without a mask are rewritten (the
    others keep their mask and its files, made with the same settings)."""
    unwritten = [suffix for suffix in SIBLINGS if suffix not in outputs.siblings()]
    redone = [it for it in items if not (outputs.resume and it.mask.exists())]
    return [it.sibling(suffix) for it in redone for suffix in unwritten if it.sibling(suffix).exists()]


def claim_out_dir(
    out: Path,
    identity: dict[str, Any],
    settings: InferSettings | None = None,
    outputs: OutputOptions | None = None,
    items: Sequence[Item] = (),
) -> None:
    """Record `identity` (and the mask settings) in `out`, or OutputError when `out` already holds another
    checkpoint's outputs, a --resume would use other mask settings than its masks were made with, or the run
    would leave an earlier run's probability maps or overlays beside masks it rewrites."""
    path = out / RECORD_NAME
    wanted = mask_settings(settings) if settings is not None else None
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:
            tmp.write_text(json.dumps({**identity, "settings": wanted}, indent=1, sort_keys=True) + "\n")
            os.link(tmp, path)  # creates `path` only where none exists, atomically
        except FileExistsError:
            pass  # another part (or another model) was first: compared below
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            os.replace(tmp, path)  # a file system without hard links: written whole, not exclusively
        finally:
            tmp.unlink(missing_ok=True)
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputError(f"{path}: unreadable ({exc}); delete it if the folder's masks may be replaced") from None
    if not isinstance(earlier, dict) or earlier.get("checkpoint_sha256") != identity["checkpoint_sha256"]:
        earlier = earlier if isinstance(earlier, dict) else {}
        raise OutputError(
            f"--out {out}: holds the outputs of another model ({_describe(earlier)}); this run is "
            f"{_describe(identity)}, and one folder must not mix two models: give another --out, or empty it"
        )
    if outputs is None or wanted is None:
        return
    before = earlier.get("settings")
    if outputs.resume and isinstance(before, dict) and before != wanted:
        raise OutputError(f"--out {out}: its masks were made with {_settings(before)}, this run uses "
                          f"{_settings(wanted)}; --resume with the same, or give another --out")  # fmt: skip
    kept = kept_masks(out, items) if isinstance(before, dict) and before != wanted else []
    if kept and isinstance(before, dict):  # a run of part of the folder (one image, one part) would leave it mixed
        raise OutputError(f"--out {out}: holds {len(kept)} mask(s) made with {_settings(before)} (e.g. "
                          f"{kept[0].name}) that this run, with {_settings(wanted)}, would not rewrite; use the "
                          "same settings, or another --out")  # fmt: skip
    stale = stale_siblings(items, outputs)
    if stale:
        flags = [flag for suffix, flag in ((".prob.png", "--save-prob"), (".overlay.jpg", "--overlay"))
                 if any(p.name.endswith(suffix) for p in stale)]  # fmt: skip
        raise OutputError(f"--out {out}: holds {len(stale)} file(s) of an earlier run that this run would not "
                          f"replace (e.g. {stale[0].name}), which would no longer match its masks; add "
                          f"{' and '.join(flags)}, or give another --out")  # fmt: skip
    if before != wanted:
        write_text_atomic(path, json.dumps({**earlier, "settings": wanted}, indent=1, sort_keys=True) + "\n")


def _settings(values: dict[str, Any]) -> str:
    recorded = values.get("postprocess")
    post = PostProcess.from_record(recorded).flags() if isinstance(recorded, dict) else ""
    rest = (" with --tta" if values.get("tta") else " without --tta") + (f", post-processing {post}" if post else "")
    if not values.get("tile"):
        return "whole images" + rest
    return f"--tile {values['tile']} --overlap {values.get('overlap')} --blend {values.get('blend')}{rest}"


def _describe(identity: dict[str, Any]) -> str:
    return f"{identity.get('model')}, checkpoint {str(identity.get('checkpoint_sha256'))[:12]}"
