"""Where images of a model's own kind are: in a folder or a data set root, and in the training data a
checkpoint records. Export calibrates and verifies on them; the benchmark measures mask agreement on one.

A folder is read as images directly in it, or in a data set layout's image folder (imgs/, train/, images/,
leftImg8bit/train/), so a data set root works as well as a plain folder of images.
"""

from __future__ import annotations

from pathlib import Path

from .imageio import IMAGE_EXTENSIONS
from .meta import ModelMeta

#: Image folders of the data set layouts unet-train reads (README's table), searched below a data set root.
LAYOUT_IMAGE_DIRS = ("imgs", "train", "images", "leftImg8bit/train")


def find_images(folder: Path) -> list[Path]:
    """Images directly in `folder`, else in the first layout image folder below it that has any (recursive
    for Cityscapes' city folders)."""
    for sub, recursive in (("", False), *((d, d.startswith("leftImg8bit")) for d in LAYOUT_IMAGE_DIRS)):
        where = folder / sub if sub else folder
        if not where.is_dir():
            continue
        pattern = "**/*" if recursive else "*"
        found = sorted(
            p for p in where.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            and not p.name.startswith(".")
        )  # fmt: skip
        if found:
            return found
    return []


def recorded_data(meta: ModelMeta) -> str | None:
    """The training images' folder the checkpoint records: a named-folders run's image folder, else its data
    set root; None when it records none."""
    train_args = meta.extra.get("train_args")
    if not isinstance(train_args, dict):
        return None
    data = train_args.get("images") or train_args.get("data")
    return str(data) if data else None


def training_images(meta: ModelMeta) -> list[Path]:
    """The images of the run's data set, where it is on this machine, without the masks where a named-folders
    run kept both in one folder (told apart by --mask-suffix); [] when none is recorded or found."""
    data = recorded_data(meta)
    if data is None or not Path(data).is_dir():
        return []
    train_args = meta.extra["train_args"]
    folder = Path(data)
    found = find_images(folder)
    suffix = train_args.get("mask_suffix") or ""
    masks = train_args.get("masks")
    if suffix and masks and Path(masks).resolve() == folder.resolve():
        found = [p for p in found if not p.stem.endswith(suffix)]
    return found
