"""Starting a run from another checkpoint's weights (`unet-train --init CKPT`): fine-tuning, e.g. a Carvana
model on a few hundred images of one's own.

The network's shape (width, up-sampling, attention gates) and the input normalization come from the checkpoint,
so the weights see the inputs they were trained on; a flag given with another value is an error naming both.
A data set with another class count keeps every weight but the 1x1 head, which starts afresh. Deep
supervision is the new run's choice: its extra heads start afresh too, or are left behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unetkit.core.checkpoint import read_checkpoint
from unetkit.core.errors import UnetkitError
from unetkit.core.model import UNet

#: The TrainConfig settings a checkpoint given to --init decides, with the flag that names each.
INHERITED = {
    "base_channels": "--base-channels", "bilinear": "--bilinear", "attention": "--attention", "mean": "--mean",
    "std": "--std",
}  # fmt: skip
HEAD = "head."
#: Deep supervision's heads (UNet.aux_heads), which a run with it gets new and a run without it leaves out.
AUX = "aux_heads."


def inherited_settings(init: Path, given: dict[str, Any]) -> dict[str, Any]:
    """`given` with the settings `init` decides filled in; a given one that differs is an error."""
    checkpoint = read_checkpoint(init)  # a missing or damaged file is one line naming it
    checkpoint.build_model()  # and so are weights that do not fit its own network
    theirs = {
        "base_channels": checkpoint.config.base_channels,
        "bilinear": checkpoint.config.bilinear,
        "attention": checkpoint.config.attention,
        "mean": tuple(checkpoint.meta.mean),
        "std": tuple(checkpoint.meta.std),
    }
    clashes = [
        f"{flag} {_show(given[key])} (the checkpoint has {_show(theirs[key])})"
        for key, flag in INHERITED.items()
        if given.get(key) is not None and _differs(given[key], theirs[key])
    ]
    if clashes:
        raise UnetkitError(f"--init {init}: {'; '.join(clashes)}; its weights need its own network and inputs")
    return {**given, **{k: v for k, v in theirs.items() if given.get(k) is None}}


def load_init(model: UNet, init: Path) -> str:
    """Copy `init`'s weights into `model` (built with its shape); heads for another class count, and deep
    supervision's heads `init` lacks, are left as initialized. Returns the line that says what was loaded."""
    checkpoint = read_checkpoint(init)
    ours, theirs = model.config.n_classes, checkpoint.config.n_classes
    fresh = (HEAD, AUX) if ours != theirs else (AUX,)  # heads that may start afresh
    left = fresh if ours != theirs or not model.config.deep_supervision else ()  # init's heads not to load
    state = {k: v for k, v in checkpoint.state_dict.items() if not k.startswith(left)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(fresh) for k in missing):
        raise UnetkitError(f"--init {init}: its weights do not fit the network (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]})")  # fmt: skip
    meta = checkpoint.meta
    told = [f"epoch {meta.epoch}"] if meta.epoch is not None else []
    told += [f"validation Dice {meta.val_dice:.4f}"] if meta.val_dice is not None else []
    head = f"; its {theirs}-channel head replaced by a new {ours}-channel one" if ours != theirs else ""
    aux = "; deep supervision's heads start afresh" if any(k.startswith(AUX) for k in missing) else ""
    return f"initialized from {init}" + (f" ({', '.join(told)})" if told else "") + head + aux


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) != len(b) or any(abs(float(x) - float(y)) > 1e-9 for x, y in zip(a, b, strict=False))
    return a != b


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(f"{v:g}" for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)
