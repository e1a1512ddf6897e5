"""Files in and out of unet-infer: finding images, naming outputs, decoding, writing pictures atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unetkit.core.atomic import atomic_path
from unetkit.core.errors import DataError
from unetkit.core.imageio import IMAGE_EXTENSIONS, read_image

JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg"})


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
    folder = Path(folder).resolve()
    return folder.with_name(folder.name + "_masks")


def discover(folder: str | os.PathLike, out: str | os.PathLike, recursive: bool = False) -> list[Item]:
    """Every image under `folder` (sorted), paired with its mask path under `out`; outputs are never inputs."""
    folder, out = Path(folder), Path(out)
    if not folder.exists():
        raise DataError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    out_resolved = out.resolve()
    candidates = folder.rglob("*") if recursive else folder.glob("*")
    sources = sorted(
        p
        for p in candidates
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not p.name.startswith(".")
        and out_resolved not in p.resolve().parents
    )
    if not sources:
        hint = ""
        if not recursive and any(p.is_dir() for p in folder.iterdir()):
            hint = "; it has subfolders: add --recursive to search them"
        kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise DataError(f"{folder}: no images found ({kinds}){hint}")
    items: list[Item] = []
    owner: dict[Path, Path] = {}
    for src in sources:
        rel = src.relative_to(folder)
        mask = out / rel.with_suffix(".png")
        if mask in owner:
            raise DataError(f"{src} and {owner[mask]} would both write {mask}; rename one of them")
        owner[mask] = src
        items.append(Item(src, rel, mask))
    return items


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
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)


def write_jpeg(path: Path, chw: np.ndarray, quality: int = 90) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(tmp, format="JPEG", quality=quality)
