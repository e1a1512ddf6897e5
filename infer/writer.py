"""Writing a folder run's outputs: each image's mask and the pictures asked for, and the Kaggle CSV.

Runs on the writer threads; every file is written atomically. The CSV is written with the csv module, so a
file name holding a comma, a quote or a newline cannot break a row, and it appears only once the run ends.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from unetkit.core.atomic import atomic_path
from unetkit.core.labels import palette as label_palette
from unetkit.core.meta import ModelMeta
from unetkit.core.postprocess import PostProcess

from .io import Item, write_jpeg, write_png
from .rle import rle_encode
from .settings import OutputOptions
from .transforms import overlay


class OutputWriter:
    """Writes one image's host-side results; says what a finished image has on disk."""

    def __init__(self, meta: ModelMeta, outputs: OutputOptions, postprocess: PostProcess | None = None) -> None:
        self.multi = meta.n_classes > 1
        self.meta, self.outputs, self.postprocess = meta, outputs, postprocess or PostProcess()
        self.palette = label_palette(meta.n_classes, meta.mask_kind) if self.multi and outputs.palette else None

    def write(self, item: Item, host: dict[str, torch.Tensor], done: Any) -> str | None:
        """Wait for the download (`done`), post-process the mask, write the files; returns the mask's RLE when
        the CSV is asked for. With post-processing the overlay is drawn here, over the mask as written."""
        if done is not None:
            done.synchronize()
        mask = self.postprocess.apply(host["mask"].numpy(), self.meta.n_classes, self.meta.mask_kind)
        if "pixels" in host:
            host["overlay"] = overlay(host["pixels"], torch.from_numpy(mask), self.meta.n_classes, self.meta.mask_kind)
        write_png(item.mask, mask if self.multi else mask * np.uint8(255), self.palette)
        if "prob" in host:
            write_png(item.sibling(".prob.png"), host["prob"].numpy())
        if "overlay" in host:
            write_jpeg(item.sibling(".overlay.jpg"), host["overlay"].numpy())
        return rle_encode(mask) if self.outputs.rle else None

    def paths(self, item: Item) -> list[Path]:
        """Every file a finished image has: its mask and the pictures asked for."""
        return [item.mask, *(item.sibling(suffix) for suffix in self.outputs.siblings())]

    def finished(self, item: Item) -> bool:
        """True when every output asked for exists and is complete (what --resume skips)."""
        return all(is_complete_picture(path) for path in self.paths(item))

    def existing_rle(self, item: Item) -> str:
        """The RLE of a mask an earlier run wrote (for --resume with --rle)."""
        with Image.open(item.mask) as img:
            return rle_encode(np.asarray(img.convert("L")) > 127)

    @contextlib.contextmanager
    def rle_file(self) -> Iterator[Any]:
        """The CSV's row writer for the length of a run (None without --rle); renamed into place at the end."""
        if self.outputs.rle is None:
            yield None
            return
        with atomic_path(self.outputs.rle) as tmp:
            f = open(tmp, "w", newline="")  # noqa: SIM115  # closed by hand: a failing close must not hide an error
            try:
                rows = csv.writer(f, lineterminator="\n")
                rows.writerow(["img", "rle_mask"])
                yield rows
            except BaseException:
                with contextlib.suppress(OSError):  # the run's own error (disk full) is the one to report
                    f.close()
                raise
            f.close()


def is_complete_picture(path: Path) -> bool:
    """A non-empty file whose image header decodes: outputs are written atomically, so this tells a finished
    output from a missing, truncated-to-nothing or foreign one without decoding every pixel."""
    try:
        if path.stat().st_size == 0:
            return False
        with Image.open(path):
            return True
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False
