"""Data set layouts: finding image/mask pairs on disk.

    carvana         imgs/ + masks/            mask = image stem + "_mask" (any mask format), as in the seed
    kaggle-carvana  train/ + train_masks/     <id>.jpg + <id>_mask.gif, Kaggle's competition files
    kvasir          images/ + masks/          same file stem in both folders (Kvasir-SEG)
    cityscapes      leftImg8bit/ + gtFine/    <split>/<city>/<name>_leftImg8bit.png +
                                              <name>_gtFine_labelIds.png, mapped to the 19 train classes

The first three are binary (one foreground class); Cityscapes is multi-class with 255 ignored and keeps its
official train/val split.

Any other data set is read from two named folders (`FolderSpec`: `--images DIR --masks DIR`), paired by file
stem after removing an optional image suffix and mask suffix (DRIVE: `21_training.tif` + `21_manual1.gif` is
`--image-suffix _training --mask-suffix _manual1`): binary, or with `--classes` masks of class ids.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetkit.core.errors import DataError
from unetkit.core.imageio import IMAGE_EXTENSIONS, LOSSY_EXTENSIONS, MASK_EXTENSIONS
from unetkit.core.labels import IGNORE_INDEX

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
#: Cityscapes labelIds of the 19 evaluated classes, in train-id order (cityscapesScripts' labels.py).
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def cityscapes_lut() -> np.ndarray:
    """256-entry table from labelIds to train ids; every other id maps to IGNORE_INDEX."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[list(CITYSCAPES_LABEL_IDS)] = np.arange(len(CITYSCAPES_LABEL_IDS), dtype=np.uint8)
    return lut


#: Cityscapes' labelIds run from 0 (unlabeled) to 33 (bicycle); license plates (-1) are never drawn, and 255
#: is read as void too, as tools that write labelIds mark unlabelled pixels with it.
CITYSCAPES_MAX_LABEL_ID = 33
TRAIN_ID_VALUES = frozenset({*range(19), IGNORE_INDEX})  # what a Cityscapes trainIds mask holds
#: The train ids of labelIds 19-33, which a trainIds mask (values 0-18) read as labelIds never yields: a data
#: set whose masks hold none of them is one of trainIds masks, though no single mask need show it.
BEYOND_TRAIN_ID_RANGE = tuple(i for i, v in enumerate(CITYSCAPES_LABEL_IDS) if v >= len(CITYSCAPES_CLASSES))


def cityscapes_train_ids(raw: np.ndarray, source: str | os.PathLike) -> np.ndarray:
    """A `_gtFine_labelIds` mask -> train ids (void classes IGNORE_INDEX). Values 34-254 are no labelIds, a
    mask of train ids (0-18 with 255) in a labelIds file's name would be read as the wrong classes, and a mask
    of void classes only scores nothing, and a JPEG has changed the ids at every edge: each is a DataError
    naming the file, before any training."""
    if Path(source).suffix.lower() in LOSSY_EXTENSIONS:
        raise DataError(f"{source}: class ids in a lossy (JPEG) file are changed at every edge; use the PNG")
    counts = np.bincount(raw.ravel(), minlength=256)
    present = set(np.flatnonzero(counts).tolist())
    foreign = sorted(v for v in present if CITYSCAPES_MAX_LABEL_ID < v < IGNORE_INDEX)
    train_ids = present <= TRAIN_ID_VALUES
    remedy = "; use the *_gtFine_labelIds.png files, not trainIds or colour masks"
    if foreign:
        shown = ", ".join(map(str, foreign[:6])) + (" ..." if len(foreign) > 6 else "")
        raise DataError(f"{source}: values {shown} are not Cityscapes labelIds (0-{CITYSCAPES_MAX_LABEL_ID}, "
                        f"void 255){remedy}")  # fmt: skip
    if train_ids and IGNORE_INDEX in present:
        raise DataError(f"{source}: holds only 0-18 and 255, as a trainIds mask does (labelIds run to "
                        f"{CITYSCAPES_MAX_LABEL_ID}){remedy}")  # fmt: skip
    if not counts[list(CITYSCAPES_LABEL_IDS)].any():
        raise DataError(f"{source}: every pixel is a void class (none of the 19 trained labelIds), so the mask "
                        "scores nothing")  # fmt: skip
    return cityscapes_lut()[raw]


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    split: str | None = None  # "train"/"val" where the data set defines an official split


@dataclass
class DatasetIndex:
    """What a layout found: the pairs, what could not be paired, and what the masks mean."""

    root: Path
    layout: str
    pairs: list[Pair]
    class_names: list[str]
    mask_kind: str  # "binary", "multiclass" (class-id masks) or "cityscapes" (labelIds)
    unmatched_images: list[Path] = field(default_factory=list)
    unmatched_masks: list[Path] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        """Output channels of the model: 1 for binary (sigmoid), else one per class (softmax)."""
        return 1 if self.mask_kind == "binary" else len(self.class_names)


def _files(folder: Path, extensions: frozenset[str], recursive: bool = False) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")
    )


def _pair_by_key(
    root: Path,
    images: list[Path],
    masks: list[Path],
    image_key: Callable[[Path], str],
    mask_key: Callable[[Path], str | None],
) -> tuple[list[Pair], list[Path], list[Path]]:
    by_key: dict[str, Path] = {}
    for m in masks:
        key = mask_key(m)
        if key is None:
            continue
        if key in by_key:
            raise DataError(f"{root}: two masks for one image: {by_key[key]} and {m}")
        by_key[key] = m
    pairs, unmatched = [], []
    taken: dict[str, Pair] = {}  # key -> the pair whose image took its mask
    for img in images:
        key = image_key(img)
        if key in taken:  # a.jpg and a.png: which one the mask labels is not for sort order to decide
            raise DataError(f"{root}: two images for one mask ({taken[key].mask}): {taken[key].image} and {img}; "
                            "keep one")  # fmt: skip
        mask = by_key.pop(key, None)
        if mask is None:
            unmatched.append(img)
        else:
            taken[key] = Pair(img, mask)
            pairs.append(taken[key])
    return pairs, unmatched, sorted(by_key.values())


def _strip_suffix(name: str, suffix: str) -> str | None:
    """`name` without `suffix`, None when it does not end in it (an empty suffix strips nothing)."""
    if not suffix:
        return name
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else None


def _carvana(root: Path, img_dir: str, mask_dir: str, layout: str) -> DatasetIndex:
    pairs, ui, um = _pair_by_key(
        root,
        _files(root / img_dir, IMAGE_EXTENSIONS),
        _files(root / mask_dir, MASK_EXTENSIONS),
        lambda p: p.stem,
        lambda p: _strip_suffix(p.stem, "_mask"),
    )  # fmt: skip
    return DatasetIndex(root, layout, pairs, ["car"], "binary", ui, um)


def _kvasir(root: Path) -> DatasetIndex:
    pairs, ui, um = _pair_by_key(
        root,
        _files(root / "images", IMAGE_EXTENSIONS),
        _files(root / "masks", MASK_EXTENSIONS),
        lambda p: p.stem,
        lambda p: p.stem,
    )  # fmt: skip
    return DatasetIndex(root, "kvasir", pairs, ["polyp"], "binary", ui, um)


def _city_key(path: Path, base: Path, suffix: str) -> str:
    """'<city>/<name>' for '<base>/<city>/<name><suffix>.png': the part image and label share."""
    return str(path.relative_to(base).with_name(path.stem[: -len(suffix)]))


def _cityscapes(root: Path) -> DatasetIndex:
    pairs: list[Pair] = []
    unmatched_images: list[Path] = []
    unmatched_masks: list[Path] = []
    # The test split has no public labels, so only train and val are used.
    for split in ("train", "val"):
        img_root, gt_root = root / "leftImg8bit" / split, root / "gtFine" / split
        if not img_root.is_dir():
            continue
        found, ui, um = _pair_by_key(
            root,
            [p for p in _files(img_root, IMAGE_EXTENSIONS, recursive=True) if p.stem.endswith("_leftImg8bit")],
            [p for p in _files(gt_root, MASK_EXTENSIONS, recursive=True) if p.stem.endswith("_gtFine_labelIds")],
            functools.partial(_city_key, base=img_root, suffix="_leftImg8bit"),
            functools.partial(_city_key, base=gt_root, suffix="_gtFine_labelIds"),
        )  # fmt: skip
        pairs += [Pair(p.image, p.mask, split) for p in found]
        unmatched_images += ui
        unmatched_masks += um
    return DatasetIndex(
        root, "cityscapes", pairs, list(CITYSCAPES_CLASSES), "cityscapes", unmatched_images, unmatched_masks
    )


#: Layout name -> (folders that identify it, indexer). Detection tries them in this order.
LAYOUTS: dict[str, tuple[tuple[str, str], Callable[[Path], DatasetIndex]]] = {
    "cityscapes": (("leftImg8bit", "gtFine"), _cityscapes),
    "kaggle-carvana": (("train", "train_masks"), lambda r: _carvana(r, "train", "train_masks", "kaggle-carvana")),
    "carvana": (("imgs", "masks"), lambda r: _carvana(r, "imgs", "masks", "carvana")),
    "kvasir": (("images", "masks"), _kvasir),
}


@dataclass(frozen=True)
class FolderSpec:
    """A data set in two folders of any name: images/<key><image_suffix>.* and masks/<key><mask_suffix>.<mask_ext>;
    binary masks, or with `classes` masks of class ids (0..N-1, 255 ignored)."""

    images: Path
    masks: Path
    image_suffix: str = ""
    mask_suffix: str = ""
    mask_exts: tuple[str, ...] = ()  # e.g. (".png", ".gif"); empty: every mask format
    classes: tuple[str, ...] = ()  # class names in id order (--classes); empty: binary

    @property
    def mask_kind(self) -> str:
        return "multiclass" if self.classes else "binary"

    def extensions(self) -> frozenset[str]:
        if not self.mask_exts:
            return MASK_EXTENSIONS
        wanted = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in self.mask_exts)
        unknown = sorted(wanted - MASK_EXTENSIONS)
        if unknown:
            raise DataError(
                f"--mask-ext {', '.join(unknown)}: not a mask format ({', '.join(sorted(MASK_EXTENSIONS))})"
            )
        return wanted


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def suggest_suffixes(image_stems: Sequence[str], mask_stems: Sequence[str]) -> tuple[str, str] | None:
    """The (image suffix, mask suffix) that would pair most of these unpaired names, if one pair of suffixes
    does: each image is matched with the mask sharing its longest prefix, the prefix cut back to before a
    trailing separator ('21_training' + '21_manual1' -> ('_training', '_manual1'))."""
    if not image_stems or not mask_stems:
        return None
    votes: Counter[tuple[str, str]] = Counter()
    for stem in image_stems[:200]:
        best = max(mask_stems, key=lambda m: _common_prefix(stem, m))
        n = _common_prefix(stem, best)
        while n > 0 and stem[n - 1] in "_-. ":
            n -= 1
        if n > 0:
            votes[(stem[n:], best[n:])] += 1
    if not votes:
        return None
    ((suffixes, count),) = votes.most_common(1)
    return suffixes if count * 2 >= min(len(image_stems), 200) and suffixes != ("", "") else None


def _folders(spec: FolderSpec, root: Path) -> DatasetIndex:
    for what, folder in (("--images", spec.images), ("--masks", spec.masks)):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} folder not found" if not folder.exists() else f"{folder}: not a folder")
    images = _files(spec.images, IMAGE_EXTENSIONS)
    masks = _files(spec.masks, spec.extensions())
    if spec.images.resolve() == spec.masks.resolve():
        if not spec.mask_suffix:
            raise DataError(f"{spec.images}: images and masks share a folder; name the masks with --mask-suffix")
        images = [p for p in images if _strip_suffix(p.stem, spec.mask_suffix) is None]
        masks = [m for m in masks if _strip_suffix(m.stem, spec.mask_suffix) is not None]
    strays = [m for m in masks if _strip_suffix(m.stem, spec.mask_suffix) is None]
    if strays and len(strays) == len(masks):
        raise DataError(
            f"{spec.masks}: no mask name ends in --mask-suffix '{spec.mask_suffix}' (e.g. {strays[0].name})"
        )
    if not images:
        raise DataError(f"{spec.images}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    if not masks:
        raise DataError(f"{spec.masks}: no mask files ({', '.join(sorted(spec.extensions()))})")
    pairs, ui, um = _pair_by_key(
        root,
        images,
        masks,
        lambda p: _strip_suffix(p.stem, spec.image_suffix) or p.stem,
        lambda p: _strip_suffix(p.stem, spec.mask_suffix),
    )  # fmt: skip
    if not pairs:
        hint = suggest_suffixes([p.stem for p in ui], [p.stem for p in um])
        advice = ""
        if hint is not None:
            advice = "; the names differ by their endings: try" + "".join(
                f" --{what}-suffix '{text}'" for what, text in zip(("image", "mask"), hint, strict=True) if text
            )
        raise DataError(
            f"{root}: no image in {spec.images} pairs with a mask in {spec.masks} "
            f"(e.g. image {images[0].name}, mask {masks[0].name}){advice}"
        )
    names = list(spec.classes) or ["foreground"]
    return DatasetIndex(root, "folders", pairs, names, spec.mask_kind, ui, sorted(um + strays))


def detect_layout(root: str | os.PathLike) -> str:
    """Name of the first layout whose two folders exist under `root`."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    for name, (folders, _) in LAYOUTS.items():
        if all((root / f).is_dir() for f in folders):
            return name
    expected = "; ".join(f"{a}/ + {b}/ ({name})" for name, ((a, b), _) in LAYOUTS.items())
    raise DataError(
        f"{root}: no known data layout; expected one of: {expected}; or name the folders with --images DIR --masks DIR"
    )


def folder_root(spec: FolderSpec) -> Path:
    """The folder both of a FolderSpec's folders are under: what file lists are recorded relative to."""
    return Path(os.path.commonpath([spec.images.absolute(), spec.masks.absolute()]))


def index_dataset(root: str | os.PathLike, layout: str = "auto", folders: FolderSpec | None = None) -> DatasetIndex:
    """Find and pair the files of the data set at `root` (or in `folders`); an empty result is an error."""
    root = Path(root)
    if folders is not None:
        return _folders(folders, root)
    name = detect_layout(root) if layout == "auto" else layout
    if name not in LAYOUTS:
        raise DataError(f"unknown layout '{layout}'; choose auto or one of: {', '.join(LAYOUTS)}")
    needed, indexer = LAYOUTS[name]
    missing = [f for f in needed if not (root / f).is_dir()]
    if missing:
        raise DataError(f"{root}: layout '{name}' needs the folder(s) {', '.join(m + '/' for m in missing)}")
    index = indexer(root)
    if not index.pairs:
        raise DataError(
            f"{root}: no image/mask pairs found for layout '{name}' "
            f"({len(index.unmatched_images)} images and {len(index.unmatched_masks)} masks without a partner)"
        )
    return index
