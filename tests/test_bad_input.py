"""Bad input and faults across the five commands and the Python API, one table (issue 11).

Every case runs the real command as a subprocess and asserts its exit code, the one line that names the input
and the problem, that no traceback was printed, and for faults what is on disk afterwards: no earlier run
destroyed, no half-written or temporary file, every output a success reports complete. Disk-full and read-only
cases use a small tmpfs of their own (as root, where mounting works) and skip with the reason elsewhere.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import pickle
import shutil
import struct
import subprocess
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import error_lines, make_meta, run_cli
from unetkit.core import UNet, UNetConfig, UnetkitError, read_checkpoint, save_checkpoint
from unetkit.core.errors import DataError
from unetkit.core.outputs import FILE, FOLDER, output_problem, write_error_repeats
from unetkit.infer.artifacts import encode_metadata
from unetkit.infer.predictor import Predictor
from unetkit.infer.record import RECORD_NAME
from unetkit.infer.writer import is_complete_picture
from unetkit.train.config import TrainConfig, next_free_run_dir, resume_conflicts, run_files
from unetkit.train.data.synth import write_synthetic

CPU = ("--device", "cpu", "--no-progress")


# ---- what the cases are made of -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """8 Carvana-like pairs of 64x48, 4 cars of 2 views (a split by car needs 2 cars at least)."""
    root = tmp_path_factory.mktemp("tiny_data")
    write_synthetic(root, 8, (64, 48), seed=3, progress=False, views=2)
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_data) -> Path:
    """A finished one-epoch run of a base-2 U-Net (best.pth, last.pth, history.jsonl, tb/)."""
    from unetkit.train.fit import fit

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    fit(TrainConfig(data=tiny_data, out=out, epochs=1, base_channels=2, lr=1e-3, workers=0, progress=False,
                    device="cpu"))  # fmt: skip
    return out


@pytest.fixture
def small_disk(tmp_path):
    """mount(size, readonly=False) -> a fresh tmpfs under tmp_path; every mount is undone afterwards."""
    mounted: list[Path] = []

    def mount(size: str, readonly: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a small full disk needs a tmpfs mount, which needs root")
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], capture_output=True)  # busy: detach it anyway


class Ctx:
    """What a case may use; each piece is made on first use, in the case's own tmp_path."""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path) -> None:
        self.request, self.tmp = request, tmp

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)

    @functools.cached_property
    def ckpt(self) -> Path:
        return self.fixture("random_checkpoint")

    @functools.cached_property
    def data(self) -> Path:
        return self.fixture("tiny_data")

    @functools.cached_property
    def run(self) -> Path:
        """A copy of a finished run, with what it held when the case started (to compare afterwards)."""
        run = self.tmp / "run"
        shutil.copytree(self.fixture("tiny_run"), run)
        self.run_before = snapshot(run)
        return run

    @functools.cached_property
    def images(self) -> Path:
        folder = self.tmp / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for name in ("a", "b", "c"):
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{name}.png")
        return folder

    @functools.cached_property
    def regular_file(self) -> Path:
        path = self.tmp / "notes.txt"
        path.write_text("a regular file")
        return path

    def disk(self, size: str, readonly: bool = False) -> Path:
        return self.fixture("small_disk")(size, readonly)

    def checkpoint_with(self, name: str, **meta) -> Path:
        """The random checkpoint with its stored description changed (as a damaged or hand-edited one)."""
        payload = torch.load(self.ckpt, weights_only=True)
        payload["meta"].update(meta)
        path = self.tmp / name
        torch.save(payload, path)
        return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.rglob(".*") if p.is_file()], "a temporary file was left behind"


def all_complete(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and path.name != RECORD_NAME:  # the JSON saying which model the masks are from
            with Image.open(path) as img:
                img.load()  # every output that exists decodes to its end


def nothing_written(*paths: Path) -> Callable[[], None]:
    def check() -> None:
        for path in paths:
            assert not path.exists(), f"{path} was written"

    return check


@dataclass
class Spec:
    args: list  # the command: CLI name first
    expect: str  # in the one error line (exit 2), or in stdout (exit 0 and 1); it names the input
    after: Callable[[], None] | None = None  # what must be on disk afterwards
    cwd: Path | None = None


@dataclass(frozen=True)
class Case:
    id: str
    code: int
    make: Callable[[Ctx], Spec]
    slow: bool = False


# ---- unet-train ---------------------------------------------------------------------------------------------
def train_out_holds_a_run(c: Ctx) -> Spec:
    return Spec(["unet-train", "--data", c.data, "--out", c.run, "--workers", "0", *CPU],
                f"--out {c.run}: holds an earlier run (best.pth, last.pth, history.jsonl, tb); continue it with "
                "--resume, or choose a new folder", lambda: _run_intact(c))  # fmt: skip


def _run_intact(c: Ctx) -> None:
    assert snapshot(c.run) == c.run_before, "the earlier run was changed"


def train_default_out_moves_on(c: Ctx) -> Spec:
    c.tmp.joinpath("runs").mkdir()
    shutil.copytree(c.run, c.tmp / "runs" / "unet")
    before = snapshot(c.tmp / "runs" / "unet")

    def after() -> None:
        assert snapshot(c.tmp / "runs" / "unet") == before
        assert read_checkpoint(c.tmp / "runs" / "unet2" / "best.pth").meta.epoch == 1

    return Spec(["unet-train", "--data", c.data, "--epochs", "1", "--base-channels", "2", "--workers", "0", *CPU],
                "runs/unet holds an earlier run: this run goes to runs/unet2", after, cwd=c.tmp)  # fmt: skip


def train_resume_with_other_values(c: Ctx) -> Spec:
    return Spec(["unet-train", "--out", c.run, "--resume", "--lr", "0.5", "--no-augment", "--epochs", "3", *CPU],
                f"--resume {c.run / 'last.pth'}: --lr 0.5: the run was started with 0.001; --no-augment: the run was "
                "started without it (a resumed run may change only --epochs", lambda: _run_intact(c))  # fmt: skip


def train_resume_into_another_folder(c: Ctx) -> Spec:
    other = c.tmp / "other"
    return Spec(["unet-train", "--resume", c.run / "last.pth", "--out", other, *CPU],
                f"--out {other}: --resume {c.run / 'last.pth'} continues the run in {c.run}",
                nothing_written(other))  # fmt: skip


def train_out_under_a_file(c: Ctx) -> Spec:
    out = c.regular_file / "run"
    return Spec(["unet-train", "--data", c.data, "--out", out, "--workers", "0", *CPU],
                f"--out {out}: {c.regular_file} is a file, not a folder")  # fmt: skip


def train_disk_full(c: Ctx) -> Spec:
    """Room for epoch 1's files, not for epoch 2's last.pth beside the old one (atomic writes need both)."""
    best, last = (os.path.getsize(c.run / n) for n in ("best.pth", "last.pth"))
    disk = c.disk(f"{(2 * best + last + last // 4) // 1024 + 64}k")  # a new best.pth fits, a second last.pth not
    out = disk / "run"

    def after() -> None:
        assert read_checkpoint(out / "last.pth").training["epoch"] == 1  # the last good checkpoint, whole
        read_checkpoint(out / "best.pth")
        assert len((out / "history.jsonl").read_text().splitlines()) == 1
        no_temp_files(out)

    return Spec(["unet-train", "--data", c.data, "--out", out, "--epochs", "4", "--base-channels", "2", "--workers",
                 "0", "--lr", "1e-3", *CPU],
                f"{out / 'last.pth'}: No space left on device; training stopped, {out / 'last.pth'} (epoch 1) is "
                f"intact: continue with `unet-train --out {out} --resume`", after)  # fmt: skip


# ---- unet-infer ---------------------------------------------------------------------------------------------
def infer(c: Ctx, *args) -> list:
    return ["unet-infer", *args, "--checkpoint", c.ckpt, *CPU]


def only_files(folder: Path, *names: str) -> Callable[[], None]:
    def check() -> None:
        assert sorted(p.name for p in folder.iterdir()) == sorted(names)

    return check


def infer_out_is_the_input(c: Ctx) -> Spec:
    return Spec(infer(c, c.images, "--out", c.images), f"--out {c.images}: is the input folder {c.images}",
                only_files(c.images, "a.png", "b.png", "c.png"))  # fmt: skip


def infer_root_folder(c: Ctx) -> Spec:
    return Spec(infer(c, "/"), "/: has no parent folder to put predictions beside; give --out")


def infer_out_under_a_file(c: Ctx) -> Spec:
    out = c.regular_file / "masks"
    return Spec(infer(c, c.images, "--out", out), f"--out {out}: {c.regular_file} is a file, not a folder")


def infer_out_read_only(c: Ctx) -> Spec:
    ro = c.disk("64k", readonly=True)
    return Spec(infer(c, c.images, "--out", ro / "masks"), f"--out {ro / 'masks'}: {ro} is on a read-only file system")


def infer_rle_is_a_folder(c: Ctx) -> Spec:
    out = c.tmp / "out"
    return Spec(infer(c, c.images, "--out", out, "--rle", c.tmp), f"--rle {c.tmp}: is a folder; name a file",
                nothing_written(out))  # fmt: skip


def infer_rle_under_a_file(c: Ctx) -> Spec:
    out, rle = c.tmp / "out", c.regular_file / "sub.csv"
    return Spec(infer(c, c.images, "--out", out, "--rle", rle), f"--rle {rle}: {c.regular_file} is a file, not a "
                "folder", nothing_written(out))  # fmt: skip


def infer_tile_one(c: Ctx) -> Spec:
    return Spec(infer(c, c.images, "--tile", "1"), "--tile 1: must be 0 (whole images) or a tile edge of at least 32")


def infer_overlap_over_half(c: Ctx) -> Spec:
    return Spec(infer(c, c.images, "--tile", "64", "--overlap", "60"), "--overlap 60: must be in [0, 32] for --tile "
                "64 (at most half a tile)")  # fmt: skip


def infer_overlap_without_tile(c: Ctx) -> Spec:
    return Spec(infer(c, c.images, "--overlap", "8"), "--overlap 8: only applies to tiles; give --tile too")


def infer_batch_zero(c: Ctx) -> Spec:
    return Spec(infer(c, c.images, "--batch", "0"), "--batch 0: must be at least 1")


def infer_scale_zero(c: Ctx) -> Spec:
    bad = c.checkpoint_with("scale0.pth", scale=0.0)
    return Spec(["unet-infer", c.images, "--checkpoint", bad, *CPU],
                f"{bad}: damaged checkpoint, invalid model description: scale 0.0 (must be a positive number)",
                nothing_written(c.tmp / "images_predictions"))  # fmt: skip


def infer_nan_threshold(c: Ctx) -> Spec:
    bad = c.checkpoint_with("nan.pth", threshold=float("nan"))
    return Spec(["unet-infer", c.images, "--checkpoint", bad, *CPU], f"{bad}: damaged checkpoint, invalid model "
                "description: threshold nan (must be in (0, 1))")  # fmt: skip


def infer_onnx_scale_zero(c: Ctx) -> Spec:
    """An ONNX file that ONNX Runtime opens, with unetkit's description but scale 0 (hand-edited metadata)."""
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, "H", "W"]) for n in ("image", "logits")]
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g", io[:1], io[1:])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    helper.set_model_props(proto, {**encode_metadata(make_meta(), precision="fp32"), "unetkit.scale": "0"})
    bad = c.tmp / "scale0.onnx"
    onnx.save(proto, str(bad))
    return Spec(["unet-infer", c.images, "--model", bad, *CPU], f"{bad}: invalid model description: scale 0.0")


def infer_pickled_code(c: Ctx) -> Spec:
    evil = c.tmp / "evil.pth"
    torch.save({"format": "unetkit.checkpoint", "run": os.system}, evil, pickle_module=pickle)
    return Spec(["unet-infer", c.images, "--checkpoint", evil, *CPU], f"{evil}: holds Python objects that a "
                "weights-only load does not allow")  # fmt: skip


def infer_bare_state_dict(c: Ctx) -> Spec:
    sd = c.tmp / "sd.pth"
    torch.save(UNet(UNetConfig(base_channels=2)).state_dict(), sd)
    return Spec(["unet-infer", c.images, "--checkpoint", sd, *CPU], f"{sd}: not a unetkit checkpoint; it looks like "
                "a bare state_dict")  # fmt: skip


def infer_disk_full(c: Ctx) -> Spec:
    """Noise images give big overlay JPEGs: the disk fills after a few, and the run stops at the first."""
    folder = c.tmp / "noise"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (192, 256, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    disk = c.disk("256k")
    out, rle = disk / "masks", disk / "sub.csv"

    def after() -> None:
        names = sorted(p.name for p in out.iterdir() if p.name != RECORD_NAME)
        assert 0 < len(names) < 24  # some written, the run stopped well before the end
        all_complete(out)
        no_temp_files(disk)
        assert not rle.exists()  # the CSV appears only when a run finishes

    return Spec(["unet-infer", folder, "--checkpoint", c.ckpt, "--out", out, "--overlay", "--rle", rle, "--batch",
                 "1", "--workers", "1", *CPU],
                "No space left on device; stopped after", after)  # fmt: skip


def infer_resume_needs_every_output(c: Ctx) -> Spec:
    """a: finished; b: its overlay is missing; c: its mask is empty. Only a is skipped."""
    out = c.tmp / "out"
    out.mkdir()
    Image.new("L", (64, 48)).save(out / "a.png")
    Image.new("RGB", (64, 48)).save(out / "a.overlay.jpg")
    Image.new("L", (64, 48)).save(out / "b.png")
    (out / "c.png").write_bytes(b"")
    Image.new("RGB", (64, 48)).save(out / "c.overlay.jpg")
    kept = {n: (out / n).stat().st_mtime_ns for n in ("a.png", "a.overlay.jpg")}

    def after() -> None:
        assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [RECORD_NAME, *(f"{n}{s}" for n in "abc" for s in (".png", ".overlay.jpg"))]
        )
        all_complete(out)

    return Spec(infer(c, c.images, "--out", out, "--resume", "--overlay"),
                "3 images: 2 written, 1 skipped (--resume), 0 failed", after)  # fmt: skip


def infer_rle_odd_file_names(c: Ctx) -> Spec:
    folder, rle = c.tmp / "odd", c.tmp / "sub.csv"
    folder.mkdir()
    names = ["comma,name.png", 'quote"d.png', "new\nline.png"]
    for name in names:
        Image.fromarray(np.random.default_rng(2).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / name)

    def after() -> None:
        with open(rle, newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["img", "rle_mask"] and sorted(r[0] for r in rows[1:]) == sorted(names)
        assert all(len(r) == 2 for r in rows)

    return Spec(infer(c, folder, "--out", c.tmp / "out", "--rle", rle), f"RLE in {rle}", after)


def infer_recursive_symlink_loop(c: Ctx) -> Spec:
    """sub/loop -> .. makes a loop, twin -> sub reaches sub again, ext -> a folder outside is followed."""
    root, outside, out = c.tmp / "tree", c.tmp / "outside", c.tmp / "out"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(root / "sub" / "x.png")
    Image.new("RGB", (64, 48), (10, 200, 10)).save(outside / "y.png")
    (root / "sub" / "loop").symlink_to("..")
    (root / "twin").symlink_to("sub")
    (root / "ext").symlink_to(outside)

    def after() -> None:
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["ext/y.png", "sub/x.png"]

    return Spec(infer(c, root, "--recursive", "--out", out),
                "warning: 2 folder(s) reached again through a symlink were searched once", after)  # fmt: skip


def infer_108_megapixels(c: Ctx) -> Spec:
    folder = c.tmp / "huge"
    folder.mkdir()
    Image.new("L", (12000, 9000), 90).save(folder / "scan.png", compress_level=1)
    ckpt = c.tmp / "small_scale.pth"
    save_checkpoint(ckpt, UNet(UNetConfig(base_channels=2)).eval(), make_meta(scale=0.02))
    out = c.tmp / "out"

    def after() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own check of the mask's size
            with Image.open(out / "scan.png") as mask:
                assert mask.size == (12000, 9000)

    return Spec(["unet-infer", folder, "--checkpoint", ckpt, "--out", out, "--batch", "1", "--workers", "1", *CPU],
                f"warning: {folder / 'scan.png'}: 12000x9000 is 108 megapixels, above Pillow's decompression-bomb "
                "warning limit of 89; decoding it anyway", after)  # fmt: skip


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG that claims a size in its header and holds no pixels: what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def infer_decompression_bomb(c: Ctx) -> Spec:
    png_header(c.images / "bomb.png", 20000, 20000)
    out = c.tmp / "out"
    expect = f"failed: {c.images / 'bomb.png'}: cannot read image (400 megapixels is over Pillow's decompression-bomb"
    return Spec(infer(c, c.images, "--out", out), expect, only_files(out, "a.png", "b.png", "c.png", RECORD_NAME))


# ---- unet-export, unet-bench, unet-data ---------------------------------------------------------------------
def export_scale_zero(c: Ctx) -> Spec:
    bad = c.checkpoint_with("best.pth", scale=0.0)
    return Spec(["unet-export", bad, *CPU], f"{bad}: damaged checkpoint, invalid model description: scale 0.0",
                nothing_written(c.tmp / "best.onnx", c.tmp / "best.fp16.onnx"))  # fmt: skip


def export_nan_threshold(c: Ctx) -> Spec:
    bad = c.checkpoint_with("best.pth", threshold=float("nan"))
    return Spec(["unet-export", bad, *CPU], f"{bad}: damaged checkpoint, invalid model description: threshold nan",
                nothing_written(c.tmp / "best.onnx"))  # fmt: skip


def export_opset_the_exporter_cannot_write(c: Ctx) -> Spec:
    return Spec(["unet-export", c.ckpt, "--opset", "13", "--exporter", "dynamo", "--out-dir", c.tmp, *CPU],
                "--opset 13: the dynamo exporter of torch", nothing_written(c.tmp / "best.onnx"))  # fmt: skip


def export_out_dir_under_a_file(c: Ctx) -> Spec:
    out = c.regular_file / "deploy"
    return Spec(["unet-export", c.ckpt, "--out-dir", out, *CPU], f"--out-dir {out}: {c.regular_file} is a file, not a "
                "folder")  # fmt: skip


def export_triton_flags_without_triton(c: Ctx) -> Spec:
    return Spec(["unet-export", c.ckpt, "--triton-name", "cars", "--triton-instances", "2", "--out-dir", c.tmp, *CPU],
                "--triton-name, --triton-instances: only used with --triton REPO",
                nothing_written(c.tmp / "best.onnx"))  # fmt: skip


def export_negative_workspace(c: Ctx) -> Spec:
    return Spec(["unet-export", c.ckpt, "--workspace", "-1", "--out-dir", c.tmp, *CPU],
                "--workspace -1: must be a positive number of GiB", nothing_written(c.tmp / "best.onnx"))  # fmt: skip


def infer_compile_mode_for_another_engine(c: Ctx) -> Spec:
    out = c.tmp / "out"
    return Spec(infer(c, c.images, "--out", out, "--engine", "onnx", "--compile-mode", "max-autotune"),
                "--compile-mode: only used by --engine compile, not onnx", nothing_written(out))  # fmt: skip


def infer_compile_mode_without_engine(c: Ctx) -> Spec:
    out = c.tmp / "out"
    return Spec(infer(c, c.images, "--out", out, "--compile-mode", "default"), "--compile-mode: only used by --engine "
                "compile (the engine here follows the file type)", nothing_written(out))  # fmt: skip


def bench(c: Ctx, *args) -> list:
    return ["unet-bench", "--checkpoint", c.ckpt, "--device", "cpu", "--shape", "64x96", *args]


def bench_zero_e2e_images(c: Ctx) -> Spec:
    return Spec(bench(c, "--e2e-images", "0"), "--e2e-images 0: must be at least 1")


def bench_json_under_a_file(c: Ctx) -> Spec:
    path = c.regular_file / "b.json"
    return Spec(bench(c, "--json", path), f"--json {path}: {c.regular_file} is a file, not a folder")


def bench_markdown_is_a_folder(c: Ctx) -> Spec:
    return Spec(bench(c, "--markdown", c.tmp), f"--markdown {c.tmp}: is a folder; name a file")


def bench_plot_under_a_file(c: Ctx) -> Spec:
    path = c.regular_file / "b.png"
    return Spec(bench(c, "--plot", path), f"--plot {path}: {c.regular_file} is a file, not a folder")


def bench_scale_zero(c: Ctx) -> Spec:
    bad = c.checkpoint_with("scale0.pth", scale=0.0)
    return Spec(["unet-bench", "--checkpoint", bad, "--device", "cpu"], f"{bad}: damaged checkpoint, invalid model "
                "description: scale 0.0")  # fmt: skip


def data_synth_too_large(c: Ctx) -> Spec:
    out = c.tmp / "synth"
    return Spec(["unet-data", "synth", "--out", out, "--size", "60000x60000"], "--size: size '60000x60000' is too "
                "large; each side at most 16384", nothing_written(out))  # fmt: skip


def data_synth_unreadably_large(c: Ctx) -> Spec:
    out = c.tmp / "synth"
    return Spec(["unet-data", "synth", "--out", out, "--size", "16384x16384"], "--size: size '16384x16384' is 268 "
                "megapixels, more than the 179 an image may have to be read", nothing_written(out))  # fmt: skip


def data_check_scale_zero(c: Ctx) -> Spec:
    return Spec(["unet-data", "check", c.data, "--scale", "0"], "--scale 0: must be in (0, 1]")


def train_eval_without_data(c: Ctx) -> Spec:
    return Spec(["unet-train", "--eval", c.ckpt], f"--eval {c.ckpt}: say which data to score it on: --data DIR")


def train_eval_batch_zero(c: Ctx) -> Spec:
    return Spec(["unet-train", "--eval", c.ckpt, "--data", c.data, "--batch-size", "0"], "--batch-size must be at "
                "least 1")  # fmt: skip


CASES = [
    Case("train: --out holds a run", 2, train_out_holds_a_run),
    Case("train: default out moves on", 0, train_default_out_moves_on),
    Case("train: --resume with other values", 2, train_resume_with_other_values),
    Case("train: --resume FILE --out elsewhere", 2, train_resume_into_another_folder),
    Case("train: --out under a file", 2, train_out_under_a_file),
    Case("train: disk full", 2, train_disk_full),
    Case("train: --eval without data", 2, train_eval_without_data),
    Case("train: --eval --batch-size 0", 2, train_eval_batch_zero),
    Case("infer: --out is the input", 2, infer_out_is_the_input),
    Case("infer: the root folder", 2, infer_root_folder),
    Case("infer: --out under a file", 2, infer_out_under_a_file),
    Case("infer: --out read-only", 2, infer_out_read_only),
    Case("infer: --rle is a folder", 2, infer_rle_is_a_folder),
    Case("infer: --rle under a file", 2, infer_rle_under_a_file),
    Case("infer: --tile 1", 2, infer_tile_one),
    Case("infer: --overlap over half a tile", 2, infer_overlap_over_half),
    Case("infer: --overlap without --tile", 2, infer_overlap_without_tile),
    Case("infer: --batch 0", 2, infer_batch_zero),
    Case("infer: checkpoint with scale 0", 2, infer_scale_zero),
    Case("infer: checkpoint with a NaN threshold", 2, infer_nan_threshold),
    Case("infer: ONNX with scale 0", 2, infer_onnx_scale_zero),
    Case("infer: pickled code", 2, infer_pickled_code),
    Case("infer: bare state_dict", 2, infer_bare_state_dict),
    Case("infer: disk full", 2, infer_disk_full),
    Case("infer: --resume needs every output", 0, infer_resume_needs_every_output),
    Case("infer: --rle with odd file names", 0, infer_rle_odd_file_names),
    Case("infer: --recursive symlink loop", 0, infer_recursive_symlink_loop),
    Case("infer: 108 megapixels", 0, infer_108_megapixels, slow=True),
    Case("infer: decompression bomb", 1, infer_decompression_bomb),
    Case("export: scale 0", 2, export_scale_zero),
    Case("export: NaN threshold", 2, export_nan_threshold),
    Case("export: --opset the exporter cannot write", 2, export_opset_the_exporter_cannot_write),
    Case("export: --out-dir under a file", 2, export_out_dir_under_a_file),
    Case("export: --triton-* without --triton", 2, export_triton_flags_without_triton),
    Case("export: --workspace -1", 2, export_negative_workspace),
    Case("infer: --compile-mode for onnx", 2, infer_compile_mode_for_another_engine),
    Case("infer: --compile-mode without --engine", 2, infer_compile_mode_without_engine),
    Case("bench: --e2e-images 0", 2, bench_zero_e2e_images),
    Case("bench: --json under a file", 2, bench_json_under_a_file),
    Case("bench: --markdown is a folder", 2, bench_markdown_is_a_folder),
    Case("bench: --plot under a file", 2, bench_plot_under_a_file),
    Case("bench: checkpoint with scale 0", 2, bench_scale_zero),
    Case("data: synth --size 60000x60000", 2, data_synth_too_large),
    Case("data: synth --size 16384x16384 (unreadable)", 2, data_synth_unreadably_large),
    Case("data: check --scale 0", 2, data_check_scale_zero),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES])
def test_bad_input_and_faults(case: Case, request, tmp_path):
    spec = case.make(Ctx(request, tmp_path))
    proc = run_cli(*spec.args, cwd=spec.cwd)
    output = proc.stdout + proc.stderr
    assert proc.returncode == case.code, output
    assert "Traceback" not in output and "Warning:" not in output, output  # no traceback, no raw library warning
    if case.code == 2:
        [line] = error_lines(proc)
        assert line.startswith(f"{spec.args[0]}: error: ") and spec.expect in line, line
    else:
        assert spec.expect in proc.stdout, output
    if spec.after is not None:
        spec.after()


# ---- the Python API -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda ck: Predictor(ck, device="cpu", batch=0), UnetkitError, "--batch 0: must be at least 1"),
        (lambda ck: Predictor(ck, device="cpu", overlap=8), UnetkitError, "--overlap 8: only applies to tiles"),
        (lambda ck: Predictor(ck, device="cpu", tile=16), UnetkitError, "--tile 16: must be 0"),
        (
            lambda ck: Predictor(ck, device="cpu").predict(np.empty((0, 0, 3), np.uint8)),
            DataError,
            r"the image has no pixels \(0x0\)",
        ),
        (lambda ck: Predictor(ck, device="cpu").predict(np.zeros((4, 4), np.float32)), DataError, "uint8"),
    ],
    ids=["batch 0", "overlap without tile", "tile 16", "empty array", "float array"],
)
def test_python_api_refuses_bad_values(random_checkpoint, call, error, message):
    with pytest.raises(error, match=message):
        call(random_checkpoint)


def test_predict_folder_checks_outputs_before_any_image(random_checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (64, 48)).save(folder / "x.png")
    (tmp_path / "file").write_text("x")
    with Predictor(random_checkpoint, device="cpu") as predictor, pytest.raises(UnetkitError, match="is a file"):
        predictor.predict_folder(folder, out=tmp_path / "file" / "masks")
    summary = Predictor(random_checkpoint, device="cpu").predict_folder(folder, progress=False)
    assert summary.written == 1 and (tmp_path / "in_predictions" / "x.png").is_file()  # the default folder


# ---- the decisions behind the table, by hand ----------------------------------------------------------------
def test_which_write_errors_repeat():
    import errno

    assert all(write_error_repeats(OSError(e, "x")) for e in (errno.ENOSPC, errno.EDQUOT, errno.EROFS))
    assert not any(write_error_repeats(OSError(e, "x")) for e in (errno.ENAMETOOLONG, errno.EFBIG, errno.ENOENT))
    assert not write_error_repeats(ValueError("no space"))


def test_output_problems(tmp_path):
    (tmp_path / "f").write_text("x")
    assert output_problem(tmp_path / "new" / "deeper", FOLDER) is None
    assert output_problem(tmp_path, FOLDER) is None
    assert output_problem(tmp_path / "f", FOLDER) == "is a file, not a folder"
    assert output_problem(tmp_path / "f", FILE) is None  # an existing file is replaced atomically
    assert output_problem(tmp_path, FILE) == "is a folder; name a file"
    assert output_problem(tmp_path / "f" / "a" / "b.csv", FILE) == f"{tmp_path / 'f'} is a file, not a folder"


def test_run_folders(tmp_path):
    base = tmp_path / "runs" / "unet"
    assert next_free_run_dir(base) == base and run_files(base) == []
    (base / "tb").mkdir(parents=True)
    assert run_files(base) == []  # an empty tb/ is no run
    (base / "history.jsonl").write_text("{}\n")
    (tmp_path / "runs" / "unet2").mkdir()
    (tmp_path / "runs" / "unet2" / "last.pth").write_bytes(b"x")
    assert run_files(base) == ["history.jsonl"] and next_free_run_dir(base) == tmp_path / "runs" / "unet3"


def test_resume_conflicts(tmp_path):
    stored = TrainConfig(data=tmp_path, out=tmp_path / "run", lr=1e-3, bilinear=False, loss=None)
    same = {"data": tmp_path / ".", "lr": 0.001, "epochs": 99, "device": "cpu", "out": tmp_path / "x"}
    assert resume_conflicts(stored, same) == []  # equal values and allowed changes
    assert resume_conflicts(stored, {"lr": 0.01, "bilinear": True, "loss": "dice", "scale": 0.5}) == [
        "--lr 0.01: the run was started with 0.001", "--bilinear: the run was started without it",
        "--loss dice: the run was started with the default",
    ]  # fmt: skip
    moved = TrainConfig(data=tmp_path / "gone", out=tmp_path)
    assert resume_conflicts(moved, {"data": tmp_path}) == []  # the data set was moved: --data may follow it


def test_complete_pictures(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not a picture")
    assert is_complete_picture(tmp_path / "ok.png")
    assert not any(is_complete_picture(tmp_path / n) for n in ("empty.png", "text.png", "missing.png"))


def test_bench_report_json_carries_the_flag(tmp_path):
    """A share over 100 % is kept in JSON with its note (render tests are in test_bench.py)."""
    from unetkit.bench.runner import OVER_PEAK, Row, finish_rows
    from unetkit.bench.stats import images_per_second, per_image, summarize

    row = Row("torch", "fp32", 1)
    row.latency_ms = summarize([0.01])
    row.per_image_ms = per_image(row.latency_ms, 1)
    row.images_per_s = images_per_second(10.0, 1)
    finish_rows([row], flops_per_image=10**12, peaks={"fp32": 50.0}, target_ms=150)
    assert row.peak_share == pytest.approx(2.0) and row.peak_share_note == OVER_PEAK
    assert json.loads(json.dumps(row.to_dict()))["peak_share_note"] == OVER_PEAK
