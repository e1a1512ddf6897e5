"""Reading images and masks by one documented rule, shared by training and inference.

Images become 8-bit RGB arrays (H, W, 3):
- EXIF orientation is applied, so the array is what a viewer shows;
- grayscale is replicated to three channels; palette and CMYK images are converted to RGB;
- an alpha channel is dropped (the colour channels are used as they are);
- 16-bit images are scaled to 8 bit (value / 257, rounded).
Masks become (H, W) uint8 arrays of raw values; turning them into labels is `binary_mask`'s or a
layout's job. Any failure is a `DataError` naming the file.

Very large images: Pillow guards against decompression bombs. Above its warning limit (89.5 megapixels) an
image is decoded with one warning line naming the file (logged once per file; the CLIs silence Pillow's
own multi-line warning); above twice that (179 megapixels) Pillow refuses it, and the image fails with a
DataError naming the file and its size.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import write_bytes_atomic
from .errors import DataError
from .labels import IGNORE_INDEX

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
MASK_EXTENSIONS = frozenset({".gif", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
#: Lossy formats: their masks are thresholded at 128, never trusted as exact values.
LOSSY_EXTENSIONS = frozenset({".jpg", ".jpeg", ".webp"})
#: A lossy mask whose brightest value is below this holds 0/1 labels blurred by compression, not 0/255: the
#: 128 threshold would erase every label, so it is an error with the remedy.
FAINT_LOSSY = 32
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, UnidentifiedImageError, Image.DecompressionBombError)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
#: The remedy a mask-value error names: the flag that turns stray grey values into a binary mask.
MASK_THRESHOLD_HINT = "--mask-threshold 128"
#: Masks whose values other than 0 and 255 are all below this look like class ids, not stray greys.
CLASS_ID_LIMIT = 64
#: Finds the class count in `_remedy`'s advice for such a mask (for the data check's summary).
CLASS_IDS_HINT = re.compile(r"class ids\? --classes (\d+)")
log = logging.getLogger(__name__)


def readable_pixels() -> int | None:
    """The most pixels an image may have and still be read: Pillow refuses twice its decompression-bomb warning
    limit (None: the guard is off)."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None


def _open(path: Path) -> Image.Image:
    """Open and fully decode `path` with EXIF orientation applied."""
    try:
        with Image.open(path) as img:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.width * img.height > limit:
                _warn_large(str(path), img.width, img.height, limit)
            img.load()
            return ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read image ({_describe(exc)})") from None


@functools.lru_cache(maxsize=256)
def _warn_large(path: str, width: int, height: int, limit: int) -> None:
    """One line per large file, however often it is read (training reads a file every epoch)."""
    log.warning("warning: %s: %dx%d is %.0f megapixels, above Pillow's decompression-bomb warning limit of %.0f; "
                "decoding it anyway", path, width, height, width * height / 1e6, limit / 1e6)  # fmt: skip


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file, or an unsupported format"
    pixels = re.search(r"\((\d+) pixels\)", msg)
    if isinstance(exc, Image.DecompressionBombError) and pixels and Image.MAX_IMAGE_PIXELS:
        return (
            f"{int(pixels.group(1)) / 1e6:.0f} megapixels is over Pillow's decompression-bomb limit of "
            f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f}; downscale or split it first"
        )
    return msg


def _to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float32)
        gray = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        raise DataError(f"{path}: unsupported pixel format (32-bit float); save it as 8- or 16-bit")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into an (H, W, 3) uint8 RGB array by the module's rule."""
    path = Path(path)
    return np.ascontiguousarray(_to_rgb(_open(path), path))


def read_mask(path: str | os.PathLike, class_ids: bool = False) -> np.ndarray:
    """Decode a mask file into an (H, W) uint8 array of raw values.

    With `class_ids` (masks declared to hold class ids, `--classes`) a palette image always reads as its
    indices: deciding grey-or-colour per image would read an image whose used entries happen to be black and
    white as 0/255 and another of the same data set as 0/1/2.

    A value is a class (or 0/255 foreground), so colours are never turned into luminance where that would
    change the classes: a palette image whose palette is grey up to its highest index (Carvana's GIFs) reads
    as its greys, one with colours there (Pascal VOC's PNGs) as its indices; an RGB mask whose pixels are all
    grey reads as that grey, and a lossless colour-coded one is an error naming the file. Lossy (JPEG) RGB
    masks, whose greys carry colour noise, read as luminance and are thresholded later.
    """
    path = Path(path)
    img = _open(path)
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img)
        if arr.max(initial=0) > 255 and np.isin(arr, (0, 65535)).all():
            return (arr // 257).astype(np.uint8)  # a 16-bit 0/65535 mask: 0/255
        if arr.max(initial=0) > 255:
            raise DataError(f"{path}: 16-bit mask values above 255 are not supported (other than 0/65535)")
        return arr.astype(np.uint8)
    if img.mode == "P":
        indices = np.array(img, dtype=np.uint8)
        if class_ids:
            return indices
        colours = np.array(img.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
        top = int(indices.max(initial=0))
        # The palette up to the highest index used, not only the used entries: a VOC mask of background and
        # car alone (black and grey entries) still belongs to a colour palette.
        entries = colours[: top + 1] if len(colours) > top else colours[:0]
        if len(entries) and not (entries == entries[:, :1]).all():
            return indices  # a colour palette: the indices are the classes
    if img.mode in ("RGB", "RGBA"):
        rgb = np.array(img.convert("RGB"), dtype=np.uint8)
        spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
        lossy = path.suffix.lower() in LOSSY_EXTENSIONS
        # A JPEG's greys carry a little colour noise; a colour mask's pixels differ by far more, and often.
        if (float((spread > 64).mean()) > 0.01) if lossy else bool(spread.any()):
            raise DataError(
                f"{path}: a colour mask; masks hold one value per pixel (0/1, 0/255 or class ids), as a greyscale "
                "or palette PNG: convert the colours to those values first"
            )
        return np.array(img.convert("L"), dtype=np.uint8) if lossy else np.ascontiguousarray(rgb[..., 0])
    if img.mode != "L":
        img = img.convert("L")
    return np.array(img, dtype=np.uint8)


def binary_mask(raw: np.ndarray, path: str | os.PathLike, threshold: int | None = None) -> np.ndarray:
    """Turn raw mask values into {0, 1}: 0/1 and 0/255 are exact; lossy formats are thresholded at 128.

    A lossless mask with other values is an error unless `threshold` is given: then values >= threshold are
    foreground (lossy masks use it too), for masks saved with a few stray grey values.
    """
    path = Path(path)
    values = np.unique(raw)
    if np.isin(values, (0, 1)).all():
        return raw.astype(np.uint8)
    lossy = path.suffix.lower() in LOSSY_EXTENSIONS
    if lossy and threshold is None and values[-1] < FAINT_LOSSY:
        kind = path.suffix.lstrip(".").upper()
        raise DataError(f"{path}: a {kind} mask whose values reach only {values[-1]}: a 0/1 mask saved as {kind}, "
                        f"which the {kind} threshold (128) would read as empty; --mask-threshold 1 reads values >= 1 "
                        "as foreground, or save the masks as PNG")  # fmt: skip
    if threshold is not None or lossy:
        return (raw >= (128 if threshold is None else threshold)).astype(np.uint8)
    if np.isin(values, (0, 255)).all():
        return (raw == 255).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    raise DataError(f"{path}: binary mask has values {{{shown}}}; expected 0/1 or 0/255 ({_remedy(values)})")


def class_id_mask(raw: np.ndarray, path: str | os.PathLike, n_classes: int) -> np.ndarray:
    """A mask of class ids 0..n_classes-1 (IGNORE_INDEX: no label), checked: a value beyond them, or a lossy
    file (JPEG changes the ids at every edge), is a DataError naming the file."""
    path = Path(path)
    if path.suffix.lower() in LOSSY_EXTENSIONS:
        raise DataError(f"{path}: class ids in a {path.suffix.lstrip('.').upper()} file are changed at every edge by "
                        "lossy compression; use PNG masks")  # fmt: skip
    values = np.unique(raw)
    beyond = values[(values >= n_classes) & (values != IGNORE_INDEX)]
    if len(beyond):
        shown = ", ".join(str(v) for v in beyond[:6]) + (", ..." if len(beyond) > 6 else "")
        raise DataError(f"{path}: values {shown} are no class ids of --classes {n_classes} (0-{n_classes - 1}; "
                        f"{IGNORE_INDEX} is ignored)")  # fmt: skip
    return raw.astype(np.uint8, copy=False)


def _remedy(values: np.ndarray) -> str:
    """What to do about a binary mask's other values: the threshold that keeps its labelled pixels, or
    --classes where they look like class ids (binarising would merge the classes into one)."""
    found = set(values.tolist())
    labels = found - {0, IGNORE_INDEX}
    if len(labels) > 1 and max(labels) < CLASS_ID_LIMIT:
        n = max(labels) + 1
        return (f"class ids? --classes {n} reads 0-{n - 1} as {n} classes; --mask-threshold would merge them "
                "into one foreground")  # fmt: skip
    if len(found) == 2 and 0 in found:  # 0 and one label, e.g. a Pascal VOC class index
        return f"--mask-threshold {max(found)} makes {max(found)} foreground"
    if IGNORE_INDEX in found and found - {IGNORE_INDEX} <= {0, 1}:  # 255: void, as Pascal VOC marks it
        return "255 marks a void border, as in Pascal VOC; binary masks have none: set those pixels to 0 or 1 first"
    return f"{MASK_THRESHOLD_HINT} binarises it"


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as `read_image` would return it, from the header alone (EXIF rotation included)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read image ({_describe(exc)})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def save_image(path: str | os.PathLike, image: Image.Image, format: str, **params: object) -> None:
    """Encode `image` in memory, then write the file atomically.

    Pillow's encoders write straight to the file descriptor and ignore a short write, so on a full disk they
    can leave a truncated picture without an error; Python's own file writes raise ENOSPC instead.
    """
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    write_bytes_atomic(path, buffer.getvalue())
