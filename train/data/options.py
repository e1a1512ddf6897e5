"""Command-line options that say where a data set is and how to read it, shared by unet-train (training and
--eval) and unet-data check, so each flag means the same in every command."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from unetkit.core.cli import parse_pair
from unetkit.core.errors import UnetkitError

from .layouts import FolderSpec, folder_root

#: Class ids run 0..N-1 below IGNORE_INDEX (255), which marks pixels without a label.
MAX_CLASSES = 255


def parse_hw(text: str) -> tuple[int, int]:
    """'256x384' -> (256, 384): height then width, as export's and the benchmark's --shape."""
    try:
        return parse_pair(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not HEIGHTxWIDTH, e.g. 640x960") from None


def parse_rgb(text: str) -> tuple[float, float, float]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5): a per-channel value in [0, 1] units (pixel / 255), R, G, B."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"'{text}' is not three numbers R,G,B, e.g. 0.5,0.5,0.5")
    return values[0], values[1], values[2]


def parse_floats(text: str) -> tuple[float, ...]:
    """'1,2.5,4' -> (1.0, 2.5, 4.0)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not comma-separated numbers, e.g. 1,3,3") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"'{text}' is not comma-separated finite numbers")
    return values


def parse_classes(text: str) -> tuple[str, ...]:
    """'4' -> ('class 0', ..., 'class 3'); 'background,road,car' -> those names, in class-id order."""
    text = text.strip()
    if text.isdigit():
        names = tuple(f"class {i}" for i in range(int(text)))
    else:
        names = tuple(n.strip() for n in text.split(","))
    if len(names) < 2 or len(names) > MAX_CLASSES or not all(names) or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"'{text}' is neither a class count N (2-{MAX_CLASSES}) nor two or more "
                                         "distinct comma-separated class names, e.g. background,polyp")  # fmt: skip
    return names


def parse_exts(text: str) -> tuple[str, ...]:
    """'png,gif' -> ('.png', '.gif')."""
    return tuple("." + e.strip().lstrip(".").lower() for e in text.split(",") if e.strip())


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """--images/--masks (with suffixes and mask formats), --mask-threshold and --group-by; defaults None."""
    p.add_argument("--images", type=Path, metavar="DIR", help="image folder of a data set in two named folders "
                   "(with --masks; relative to the data folder when one is given)")  # fmt: skip
    p.add_argument("--masks", type=Path, metavar="DIR", help="mask folder: a mask pairs with the image of the "
                   "same name after the suffixes are removed")  # fmt: skip
    p.add_argument("--image-suffix", metavar="S", help="end of the image names that the masks lack (default none)")
    p.add_argument("--mask-suffix", metavar="S", help="end of the mask names, e.g. _mask or _manual1 (default: "
                   "the image's name)")  # fmt: skip
    p.add_argument("--mask-ext", type=parse_exts, metavar="EXT[,EXT]", help="mask formats to read from --masks, "
                   "e.g. png,gif (default: every mask format)")  # fmt: skip
    p.add_argument("--classes", type=parse_classes, metavar="N|NAMES", help="masks hold class ids: N classes "
                   "(0..N-1, 255 ignored), or their names in id order, e.g. background,polyp,instrument; for "
                   "--images/--masks data sets (default: binary masks)")  # fmt: skip
    p.add_argument("--mask-threshold", type=int, metavar="T", help="binarise lossless masks that hold other values "
                   "than 0/1 and 0/255 (stray grey values): T and above is foreground (default: such masks are an "
                   "error); lossy (JPEG) masks use T instead of 128")  # fmt: skip
    p.add_argument("--group-by", metavar="RULE", help="keep samples of one group on one side of the split: auto "
                   "(Carvana <car>_<NN> names by car, else per image), none (per image), or a regular expression "
                   "searched in each image name whose first group is the key (default auto)")  # fmt: skip


def absolute(path: Path) -> Path:
    """`path` made absolute and normalised ('..' removed) without following links, as a run folder records it."""
    return Path(os.path.abspath(path))


def resolve_folders(args: argparse.Namespace) -> tuple[Path | None, FolderSpec | None]:
    """(data folder, folder spec) from --data/--images/--masks; the data folder of a spec without --data is
    the folder both are under. Relative --images/--masks are taken inside --data when it is given. The paths are
    made absolute here, so a run folder that records them still finds the data from another working folder."""
    if (args.images is None) != (args.masks is None):
        raise UnetkitError("--images and --masks go together (an image folder and a mask folder)")
    if args.images is None:
        resuming = getattr(args, "resume", None)  # a resumed run recorded its folders: --resume compares the rest
        if not resuming and (args.image_suffix or args.mask_suffix or args.mask_ext or args.classes):
            raise UnetkitError("--image-suffix, --mask-suffix, --mask-ext and --classes need --images and --masks "
                               "(the built-in layouts define their masks)")  # fmt: skip
        return (None if args.data is None else absolute(args.data)), None
    if args.classes and args.mask_threshold is not None:
        raise UnetkitError("--mask-threshold binarises masks; masks of --classes hold class ids: give one of the two")
    base = absolute(args.data if args.data is not None else Path())
    spec = FolderSpec(base / args.images, base / args.masks, args.image_suffix or "", args.mask_suffix or "",
                      args.mask_ext or (), args.classes or ())  # fmt: skip
    return (base if args.data is not None else folder_root(spec)), spec
