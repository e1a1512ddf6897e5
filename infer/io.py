"""Files in and out of unet-infer: finding images, naming outputs, decoding, writing pictures atomically."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unetkit.core.errors import DataError, UnetkitError
from unetkit.core.imageio import IMAGE_EXTENSIONS, image_size, read_image, save_image
from unetkit.core.meta import ModelMeta
from unetkit.core.outputs import FILE, FOLDER, check_outputs
from unetkit.core.preprocess import input_size

JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg"})
#: unet-infer's default output folder is `<folder>` + this, beside the input: never a data layout's mask folder
#: (Kaggle's train/ has its ground truth in train_masks/).
DEFAULT_OUT_SUFFIX = "_predictions"
#: Image headers read to learn a folder's model-input sizes (--engine fastest, --tile).
SIZE_SAMPLE = 1000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One input image and where its outputs go."""

    source: Path
    relative: Path  # source relative to the input folder
    mask: Path  # <out>/<relative>.png

    def sibling(self, suffix: str) -> Path:
        """Another output beside the mask: '.prob.png', '.overlay.jpg'."""
        return self.mask.with_name(self.mask.stem + suffix)


def default_out_dir(folder: str | os.PathLike) -> Path:
    """`<folder>_predictions` beside the input folder (for one image, beside the folder it is in: where a run
    of its whole folder writes its mask)."""
    folder = Path(folder).resolve()
    if folder.is_file():
        folder = folder.parent
    if folder == folder.parent:
        raise DataError(f"{folder}: has no parent folder to put {DEFAULT_OUT_SUFFIX[1:]} beside; give --out")
    return folder.with_name(folder.name + DEFAULT_OUT_SUFFIX)


def _subfolders_with_images(folder: Path, out_resolved: Path) -> list[Path]:
    """The folder's immediate subfolders (not hidden, not the output) that hold an image directly."""
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.resolve() == out_resolved:
            continue
        try:
            if any(f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() for f in sub.iterdir()):
                found.append(sub)
        except OSError:  # unreadable: nothing to point at
            continue
    return found


def discover(
    folder: str | os.PathLike, out: str | os.PathLike, recursive: bool = False, siblings: Sequence[str] = ()
) -> list[Item]:
    """Every image under `folder` (sorted), paired with its mask path under `out`; outputs are never inputs,
    and no two images may share an output: the mask or one of the `siblings` written beside it ('a.jpg' with
    '.prob.png' and 'a.prob.jpg' would both write 'a.prob.png').

    With `recursive`, symlinked folders are followed; a folder reached twice (a link loop, or two links to
    one folder) is searched once and the others are counted in a warning.
    """
    folder, out = Path(folder), Path(out)
    if not folder.exists():
        what = "file" if folder.suffix.lower() in IMAGE_EXTENSIONS else "folder"
        raise DataError(f"{folder}: {what} not found")
    if folder.is_file():
        return _one_image(folder, out, siblings)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    out_resolved = out.resolve()
    if out_resolved == folder.resolve():
        raise DataError(f"--out {out}: is the input folder {folder}; masks would land among the images (choose "
                        "another folder; the default is <folder>_predictions beside it)")  # fmt: skip
    candidates = _walk(folder, out_resolved) if recursive else folder.iterdir()
    sources = sorted(
        p
        for p in candidates
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not p.name.startswith(".")
        and p.is_file()
        and out_resolved not in p.resolve().parents
    )
    if not sources:
        hint = ""
        if not recursive and any(p.is_dir() for p in folder.iterdir()):
            hint = "; it has subfolders: add --recursive to search them"
        kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise DataError(f"{folder}: no images found ({kinds}){hint}")
    if not recursive:
        below = _subfolders_with_images(folder, out_resolved)
        if below:
            shown = ", ".join(f"{d.name}/" for d in below[:3]) + (" ..." if len(below) > 3 else "")
            log.info("note: %s holds images in subfolders too (%s), left out; add --recursive to include them",
                     folder, shown)  # fmt: skip
    items: list[Item] = []
    owner: dict[Path, Path] = {}
    for src in sources:
        rel = src.relative_to(folder)
        item = Item(src, rel, out / rel.with_suffix(".png"))
        for path in (item.mask, *(item.sibling(suffix) for suffix in siblings)):
            if path in owner:
                raise DataError(f"{src} and {owner[path]} would both write {path}; rename one of them")
            owner[path] = src
        items.append(item)
    return items


def _one_image(path: Path, out: Path, siblings: Sequence[str]) -> list[Item]:
    """A single image given instead of a folder: its mask goes under `out` by its name, as a folder run's does."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise DataError(f"{path}: not an image file ({kinds}) nor a folder of them")
    if out.resolve() == path.parent.resolve():
        raise DataError(f"--out {out}: is the image's own folder; its mask would land among the images (choose "
                        "another folder; the default is <folder>_predictions beside it)")  # fmt: skip
    rel = Path(path.name)
    return [Item(path, rel, out / rel.with_suffix(".png"))]


def output_paths(out: Path, rle: Path | None) -> None:
    """A folder run's outputs checked before any work: the mask folder and the CSV."""
    check_outputs([("--out", out, FOLDER), ("--rle", rle, FILE)])


def _walk(folder: Path, skip: Path) -> list[Path]:
    """Files under `folder`, following symlinked folders; each folder (by device and inode) is searched once,
    and `skip` (the output folder) not at all."""
    files: list[Path] = []
    seen = {_identity(folder)}
    repeated: list[str] = []
    unreadable: list[str] = []
    for root, dirs, names in os.walk(folder, followlinks=True, onerror=lambda e: unreadable.append(str(e.filename))):
        keep = []
        for name in sorted(dirs):
            path = Path(root, name)
            key = _identity(path)
            if key in seen or path.resolve() == skip:
                if key in seen:
                    repeated.append(str(path))
                continue
            seen.add(key)
            keep.append(name)
        dirs[:] = keep
        files += (Path(root, name) for name in names)
    if repeated:
        log.warning("warning: %d folder(s) reached again through a symlink were searched once: %s",
                    len(repeated), ", ".join(repeated[:3]) + (" ..." if len(repeated) > 3 else ""))  # fmt: skip
    if unreadable:
        log.warning("warning: %d folder(s) could not be searched: %s", len(unreadable), ", ".join(unreadable[:3]))
    return files


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def decode_to_tensor(path: Path, pin: bool = False) -> torch.Tensor:
    """Decode by unetkit's reading rule into a uint8 (H, W, 3) tensor, in pinned memory for a CUDA upload."""
    array = torch.from_numpy(read_image(path))
    if not pin:
        return array
    pinned = torch.empty(array.shape, dtype=torch.uint8, pin_memory=True)
    return pinned.copy_(array)


def write_png(path: Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """A uint8 (H, W) picture as PNG, atomically; with a (256, 3) palette it is written in palette mode."""
    image = Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette.reshape(-1).tolist())  # an L image becomes P with its values as indices
    save_image(path, image, "PNG", compress_level=1)


def write_jpeg(path: Path, chw: np.ndarray, quality: int = 90) -> None:
    save_image(path, Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))), "JPEG", quality=quality)


def folder_sizes(images: Sequence[Path], meta: ModelMeta, limit: int = SIZE_SAMPLE) -> list[tuple[int, int]]:
    """The model-input sizes of up to `limit` of the images, from their headers (unreadable ones left out: the
    run reports them)."""
    sizes = []
    for path in images[:limit]:
        try:
            width, height = image_size(path)
        except UnetkitError:
            continue
        sizes.append(input_size(height, width, meta))
    return sizes
