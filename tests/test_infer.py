"""unet-infer and the Predictor API on the CPU: engines agree, outputs, image modes, bad input, resume, memory."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli_command, error_lines, interruptible, needs_openvino, needs_torchvision, run_cli
from unetkit.core.atomic import TEMP_HOST
from unetkit.core.cpu import cpu_capabilities
from unetkit.core.metrics import mask_agreement
from unetkit.infer.engines import EngineUnavailable, create_engine
from unetkit.infer.io import discover
from unetkit.infer.predictor import Predictor
from unetkit.infer.record import RECORD_NAME
from unetkit.infer.rle import rle_encode
from unetkit.train.data.synth import write_synthetic


def rle_decode(text: str, shape: tuple[int, int]) -> np.ndarray:
    """Independent decoder of Kaggle's format: 1-indexed (start, length) pairs over row-major pixels."""
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    values = [int(v) for v in text.split()]
    for start, length in zip(values[0::2], values[1::2], strict=True):
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(shape)


def read_mask(path):
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Synthetic cars at several sizes and formats (in distribution for `trained_checkpoint`)."""
    src = tmp_path_factory.mktemp("src")
    write_synthetic(src, 3, (1918, 1280), seed=7, progress=False)
    folder = tmp_path_factory.mktemp("images")
    cars = sorted((src / "train").iterdir())
    Image.open(cars[0]).save(folder / "a_full.jpg", quality=95)
    # The checkpoint's scale is for Carvana's size; other sizes stay close so the cars stay recognizable.
    Image.open(cars[1]).resize((1800, 1200)).save(folder / "b_medium.png")
    Image.open(cars[2]).resize((1600, 1067)).save(folder / "c_small.jpg", quality=95)
    Image.open(cars[0]).resize((2100, 1400)).save(folder / "d_large.webp", quality=95)
    return folder


def test_torch_and_onnx_engines_give_the_same_masks_through_the_cli(exported_checkpoint, images, tmp_path):
    folder, _ = exported_checkpoint
    outs = {}
    for engine in ("torch", "onnx"):
        outs[engine] = tmp_path / engine
        proc = run_cli("unet-infer", images, "--checkpoint", folder / "best.pth", "--engine", engine,
                       "--device", "cpu", "--out", outs[engine], "--no-progress", check=True)  # fmt: skip
        assert "4 images: 4 written, 0 skipped (--resume), 0 failed" in proc.stdout
        assert f"engine {engine} fp32 on cpu, whole images, batch 2" in proc.stdout
        assert "busy ms per image" in proc.stdout
    for src in sorted(images.iterdir()):
        a, b = (read_mask(outs[e] / f"{src.stem}.png") for e in ("torch", "onnx"))
        assert a.shape == b.shape == Image.open(src).size[::-1]
        assert set(np.unique(a)) <= {0, 255}
        assert (a > 0).mean() > 0.05  # a car was found
        assert mask_agreement(a > 0, b > 0, 1) >= 0.999


def test_one_image_instead_of_a_folder(exported_checkpoint, images, tmp_path):
    """`unet-infer photo.jpg` writes its mask where a run of its folder would, and a later folder run with
    --resume keeps it; the image's own folder as --out, or a file that is no image, is one line."""
    folder, _ = exported_checkpoint
    work = tmp_path / "shots"
    shutil.copytree(images, work)
    common = ["--checkpoint", folder / "best.pth", "--device", "cpu", "--no-progress"]
    proc = run_cli("unet-infer", work / "c_small.jpg", *common, check=True)
    assert "1 images: 1 written" in proc.stdout
    out = tmp_path / "shots_predictions"
    assert sorted(p.name for p in out.iterdir()) == ["c_small.png", RECORD_NAME]
    assert read_mask(out / "c_small.png").shape == Image.open(work / "c_small.jpg").size[::-1]
    resumed = run_cli("unet-infer", work, *common, "--resume", check=True)
    assert "4 images: 3 written, 1 skipped (--resume)" in resumed.stdout
    mixed = run_cli("unet-infer", work / "c_small.jpg", *common, "--tta")  # would leave 3 masks made without
    assert error_lines(mixed) == [f"unet-infer: error: --out {out}: holds 3 mask(s) made with whole images without "
                                  "--tta (e.g. a_full.png) that this run, with whole images with --tta, would not "
                                  "rewrite; use the same settings, or another --out"]  # fmt: skip
    same = run_cli("unet-infer", work / "c_small.jpg", *common, "--out", work)
    assert error_lines(same) == [f"unet-infer: error: --out {work}: is the image's own folder; its mask would land "
                                 "among the images (choose another folder; the default is <folder>_predictions "
                                 "beside it)"]  # fmt: skip
    gone = run_cli("unet-infer", work / "nothere.jpg", *common)
    assert error_lines(gone) == [f"unet-infer: error: {work / 'nothere.jpg'}: file not found"]
    (work / "notes.txt").write_text("x")
    text = run_cli("unet-infer", work / "notes.txt", *common)
    assert text.returncode == 2 and f"{work / 'notes.txt'}: not an image file (" in error_lines(text)[0]


def test_fp16_onnx_agrees_with_torch_whole_and_tiled(exported_checkpoint, images):
    ckpt, files = exported_checkpoint[0] / "best.pth", sorted(images.iterdir())
    for tile in (0, 48):
        reference = Predictor(ckpt, device="cpu", tile=tile, batch=3).predict(files)
        fp16 = Predictor(ckpt, engine="onnx", device="cpu", precision="fp16", tile=tile, batch=3).predict(files)
        for a, b in zip(reference, fp16, strict=True):
            assert a.any() and mask_agreement(a, b, 1) >= 0.999


def test_predictor_api_takes_paths_arrays_and_pil(exported_checkpoint, images):
    predictor = Predictor(exported_checkpoint[0] / "best.onnx", device="cpu")  # the engine follows the file
    assert predictor.engine.name == "onnx" and predictor.engine.device.type == "cpu"
    path = images / "c_small.jpg"
    mask = predictor.predict(path)
    assert mask.dtype == np.uint8 and mask.shape == (1067, 1600) and set(np.unique(mask)) <= {0, 1}
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(predictor.predict(pixels), mask)
    assert np.array_equal(predictor.predict([Image.open(path)])[0], mask)
    prob = predictor.predict(path, return_prob=True)
    assert prob.shape == (1, 1067, 1600) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1


def test_outputs_overlay_prob_and_rle_round_trip(exported_checkpoint, images, tmp_path):
    out, csv = tmp_path / "out", tmp_path / "submission.csv"
    run_cli("unet-infer", images, "--checkpoint", exported_checkpoint[0] / "best.pth", "--out", out, "--device", "cpu",
            "--overlay", "--save-prob", "--rle", csv, "--no-progress", check=True)  # fmt: skip
    rows = csv.read_text().splitlines()
    assert rows[0] == "img,rle_mask" and len(rows) == 5
    for row in rows[1:]:
        name, rle = row.split(",")
        mask = read_mask(out / f"{name.rsplit('.', 1)[0]}.png") > 0
        assert np.array_equal(rle_decode(rle, mask.shape), mask)
    overlay = Image.open(out / "a_full.overlay.jpg")
    assert overlay.format == "JPEG" and overlay.size == (1918, 1280)
    prob = read_mask(out / "a_full.prob.png")
    mask = read_mask(out / "a_full.png") > 0
    assert prob.shape == mask.shape and np.array_equal(prob > 127, mask)  # threshold 0.5 of the same map


def test_rle_encode_hand_values():
    assert rle_encode(np.array([[1, 1, 0, 1]])) == "1 2 4 1"
    assert rle_encode(np.zeros((2, 3))) == ""
    assert rle_encode(np.array([[0, 0], [1, 1]])) == "3 2"  # row by row
    random = np.random.default_rng(0).random((37, 53)) > 0.6
    assert np.array_equal(rle_decode(rle_encode(random), random.shape), random)


def test_image_modes_follow_the_documented_rule(exported_checkpoint, images, tmp_path):
    predictor = Predictor(exported_checkpoint[0] / "best.pth", device="cpu")
    rgb = np.asarray(Image.open(images / "c_small.jpg").convert("RGB"))
    folder = tmp_path / "modes"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "rgb.png")
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 30, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")  # alpha is dropped
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(gray).save(folder / "gray8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "gray16.png")  # 16 bit scales to 8 exactly
    exif = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1)))  # stored rotated, EXIF says turn it back
    info = exif.getexif()
    info[0x0112] = 6
    exif.save(folder / "exif.png", exif=info)
    out = tmp_path / "out"
    run_cli("unet-infer", folder, "--checkpoint", exported_checkpoint[0] / "best.pth", "--out", out,
            "--device", "cpu", "--no-progress", check=True)  # fmt: skip
    masks = {p.stem: read_mask(p) for p in out.glob("*.png")}
    assert all(m.shape == (1067, 1600) for m in masks.values())
    assert np.array_equal(masks["rgba"], masks["rgb"])
    assert np.array_equal(masks["gray16"], masks["gray8"])
    assert mask_agreement(masks["exif"] > 0, masks["rgb"] > 0, 1) >= 0.999
    assert np.array_equal(masks["rgb"] > 0, predictor.predict(rgb) > 0)
    assert (masks["rgb"] > 0).mean() > 0.05 and (masks["gray8"] > 0).mean() > 0.05  # cars were found


def test_a_corrupt_image_is_named_skipped_and_listed(exported_checkpoint, images, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for src in sorted(images.iterdir())[:2]:
        (folder / src.name).write_bytes(src.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    out = tmp_path / "out"
    proc = run_cli("unet-infer", folder, "--checkpoint", exported_checkpoint[0] / "best.pth", "--out", out,
                   "--device", "cpu", "--no-progress")  # fmt: skip
    assert proc.returncode == 1
    assert "3 images: 2 written, 0 skipped (--resume), 1 failed" in proc.stdout
    assert f"warning: skipped {folder / 'broken.jpg'}: cannot read image" in proc.stdout
    assert f"failed: {folder / 'broken.jpg'}: cannot read image" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a_full.png", "b_medium.png", RECORD_NAME]


def test_resume_skips_existing_masks(exported_checkpoint, images, tmp_path):
    out = tmp_path / "out"
    args = ["unet-infer", images, "--checkpoint", exported_checkpoint[0] / "best.pth", "--out", out, "--device", "cpu",
            "--no-progress"]  # fmt: skip
    run_cli(*args, check=True)
    kept = out / "a_full.png"
    stamp = kept.stat().st_mtime_ns
    (out / "b_medium.png").unlink()
    # temporary files an hour old: one a killed run left on this host, one of a live writer, one of another
    # machine's (or container's); and one the killed run left a minute ago (its writer might be elsewhere)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)  # fmt: skip
    left = out / f".b_medium.png.{TEMP_HOST}-{dead}-1.tmp"
    live = out / f".c_small.png.{TEMP_HOST}-{os.getpid()}-1.tmp"
    other = out / f".d_tiny.png.0badc0de-{dead}-1.tmp"
    young = out / f".e_new.png.{TEMP_HOST}-{dead}-2.tmp"
    for path in (left, live, other, young):
        path.write_bytes(b"partial")
        if path is not young:
            os.utime(path, (time.time() - 3600, time.time() - 3600))
    proc = run_cli(*args, "--resume", check=True)
    assert "4 images: 1 written, 3 skipped (--resume), 0 failed" in proc.stdout
    assert kept.stat().st_mtime_ns == stamp and (out / "b_medium.png").exists()
    assert f"removed 1 temporary file(s) that a killed run left in {out}" in proc.stdout
    assert not left.exists() and live.exists() and other.exists() and young.exists()


def test_one_output_folder_never_mixes_two_models(exported_checkpoint, random_checkpoint, images, tmp_path):
    """Another model's run into a folder that holds masks (and overlays a later run would not replace) is
    refused before anything is written; the same model (any engine at the same precision) may come back."""
    folder = exported_checkpoint[0]
    out = tmp_path / "out"
    common = ["--out", out, "--device", "cpu", "--precision", "fp32", "--no-progress"]
    run_cli("unet-infer", images, "--checkpoint", folder / "best.pth", "--overlay", *common, check=True)
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["model"] == "best.pth" and len(record["checkpoint_sha256"]) == 64
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for extra in ([], ["--resume"]):
        other = run_cli("unet-infer", images, "--checkpoint", random_checkpoint, *common, *extra)
        assert other.returncode == 2
        [line] = error_lines(other)
        assert line.startswith(f"unet-infer: error: --out {out}: holds the outputs of another model (best.pth, ")
        assert "one folder must not mix two models: give another --out, or empty it" in line
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # the same checkpoint through its ONNX file, at the same precision: the same model's masks
    run_cli("unet-infer", images, "--checkpoint", folder / "best.pth", "--engine", "onnx", "--resume", *common,
            check=True)  # fmt: skip


def test_outputs_of_two_images_may_not_collide(exported_checkpoint, images, tmp_path):
    """'a.jpg' writes a.prob.png with --save-prob, and so would the mask of an image called 'a.prob.jpg'."""
    folder = tmp_path / "in"
    folder.mkdir()
    src = sorted(images.iterdir())[0]
    shutil.copy(src, folder / "a.jpg")
    shutil.copy(src, folder / "a.prob.jpg")
    args = ["unet-infer", folder, "--checkpoint", exported_checkpoint[0] / "best.pth", "--out", tmp_path / "out",
            "--device", "cpu", "--no-progress"]  # fmt: skip
    proc = run_cli(*args, "--save-prob")
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert error_lines(proc) == [
        f"unet-infer: error: {folder / 'a.prob.jpg'} and {folder / 'a.jpg'} would both write "
        f"{tmp_path / 'out' / 'a.prob.png'}; rename one of them"
    ]
    run_cli(*args, check=True)  # without probability maps nothing collides


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (lambda d: None, [], "folder not found"),
        (lambda d: d.mkdir(), [], "no images found"),
        (lambda d: (d / "sub").mkdir(parents=True) or (d / "sub" / "x.jpg").write_bytes(b"1"), [], "add --recursive"),
        (lambda d: d.mkdir() or Image.new("RGB", (8, 8)).save(d / "x.png"), ["--engine", "trt"], "trt runs on a CUDA"),
        (lambda d: d.mkdir() or Image.new("RGB", (8, 8)).save(d / "x.png"), ["--checkpoint", "nope.pth"], "not found"),
    ],
)
def test_bad_input_gives_one_line(tmp_path, exported_checkpoint, setup, args, message):
    folder = tmp_path / "in"
    setup(folder)
    if "--checkpoint" not in args:
        args = [*args, "--checkpoint", exported_checkpoint[0] / "best.pth"]
    proc = run_cli("unet-infer", folder, *args, "--device", "cpu", "--no-progress")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = error_lines(proc)
    assert line.startswith("unet-infer: error:") and message in line


def test_images_in_subfolders_left_out_are_said(tmp_path, caplog):
    """Without --recursive only the folder's own images run; ones in subfolders beside them are pointed at."""
    for rel in ("top.png", "a/x.png", "b/c/y.png"):
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "in" / rel)
    with caplog.at_level("INFO", logger="unetkit"):
        items = discover(tmp_path / "in", tmp_path / "out")
    assert [it.relative.as_posix() for it in items] == ["top.png"]
    assert (f"note: {tmp_path / 'in'} holds images in subfolders too (a/), left out; add --recursive to include "
            "them") in caplog.text  # fmt: skip
    caplog.clear()
    with caplog.at_level("INFO", logger="unetkit"):
        assert len(discover(tmp_path / "in", tmp_path / "out", recursive=True)) == 3
    assert "subfolders too" not in caplog.text


def test_missing_artifact_says_to_export(tmp_path, random_checkpoint):
    ckpt = tmp_path / "best.pth"
    ckpt.write_bytes(random_checkpoint.read_bytes())
    with pytest.raises(Exception, match=r"best\.onnx: not found; run `unet-export .*best\.pth` first"):
        create_engine("onnx", checkpoint=ckpt, device="cpu")
    with pytest.raises(EngineUnavailable, match="trt runs on a CUDA GPU"):
        create_engine("trt", checkpoint=ckpt, device="cpu")
    refused = r"first \(an export that did run refused the file when it failed its verification"
    missing = r"best\.int8\.onnx: not found; run `unet-export .*best\.pth --int8` "
    with pytest.raises(Exception, match=missing + refused):
        create_engine("onnx", checkpoint=ckpt, device="cpu", precision="int8")


def test_an_artifact_exported_from_another_checkpoint_is_refused(
    exported_checkpoint, random_checkpoint, images, tmp_path
):
    """Re-training over best.pth (or a re-export that failed) leaves best.onnx from the old weights: running it
    in the checkpoint's name would give the old model's masks without a word."""
    folder, _ = exported_checkpoint
    shutil.copy(folder / "best.onnx", tmp_path / "best.onnx")
    shutil.copy(random_checkpoint, tmp_path / "best.pth")  # the run's new best.pth
    proc = run_cli("unet-infer", images, "--checkpoint", tmp_path / "best.pth", "--engine", "onnx", "--device",
                   "cpu", "--precision", "fp32", "--out", tmp_path / "m", "--no-progress")  # fmt: skip
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert f"{tmp_path / 'best.onnx'}: exported from another checkpoint than {tmp_path / 'best.pth'}" in line
    assert "re-export it with `unet-export" in line and not (tmp_path / "m").exists()
    # named explicitly, the file runs: the user has said which model they mean
    run_cli("unet-infer", images, "--model", tmp_path / "best.onnx", "--device", "cpu", "--out", tmp_path / "m",
            "--no-progress", check=True)  # fmt: skip
    # the checkpoint it was exported from still finds it
    shutil.copy(folder / "best.pth", tmp_path / "best.pth")
    create_engine("onnx", checkpoint=tmp_path / "best.pth", device="cpu", precision="fp32").close()


@needs_openvino
def test_openvino_engine_through_the_cli_agrees_with_torch(exported_checkpoint, images, tmp_path):
    folder, _ = exported_checkpoint
    outs = {}
    for engine in ("torch", "openvino"):
        outs[engine] = tmp_path / engine
        proc = run_cli("unet-infer", images, "--checkpoint", folder / "best.pth", "--engine", engine, "--device",
                       "cpu", "--out", outs[engine], "--no-progress", "--precision", "fp32", check=True)  # fmt: skip
        assert f"engine {engine} fp32 on cpu" in proc.stdout
    for src in sorted(images.iterdir()):
        a, b = (read_mask(outs[e] / f"{src.stem}.png") for e in ("torch", "openvino"))
        assert mask_agreement(a > 0, b > 0, 1) >= 0.999


@needs_openvino
def test_engine_fastest_times_every_verified_cpu_engine_and_says_which(exported_checkpoint, images, tmp_path):
    folder, _ = exported_checkpoint
    proc = run_cli("unet-infer", images, "--checkpoint", folder / "best.pth", "--engine", "fastest", "--device",
                   "cpu", "--out", tmp_path / "m", "--no-progress", check=True)  # fmt: skip
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("--engine fastest: timing each CPU engine at 1x3x64x96 whose mask agrees")
    # 4 images of 4 sizes: every engine's first call at a new size counts for each image
    assert lines[1] == ("  the images have 4 model-input sizes in 4: each engine's first call at a new size is timed "
                        "too, for the images that bring a size it has not compiled")  # fmt: skip
    timed = {line.split()[0] + " " + line.split()[1]: line for line in lines if "ms/image" in line and "  " in line[:3]}
    assert all("ms at a new size: " in line and "ms/image expected" in line for line in timed.values())
    assert {"torch fp32", "onnx fp32", "openvino fp32"} <= set(timed)
    probed = [line for line in lines[2:] if line.startswith("  ")]
    assert len(probed) == 8 and all("ms/image" in line or "skipped: " in line for line in probed)
    chose = next(line for line in lines if line.startswith("--engine fastest: chose"))
    winner = chose.split("chose ")[1].split(" (")[0]
    assert winner in timed and f"engine {winner} on cpu" in proc.stdout
    assert "4 images: 4 written" in proc.stdout
    if not cpu_capabilities().bf16:
        assert any("openvino bf16" in line and "skipped: bf16 is not native" in line for line in lines)


def test_a_tile_larger_than_the_images_is_said_before_the_run(exported_checkpoint, images, tmp_path):
    proc = run_cli("unet-infer", images, "--checkpoint", exported_checkpoint[0] / "best.pth", "--tile", "256",
                   "--out", tmp_path / "m", "--device", "cpu", "--no-progress", check=True)  # fmt: skip
    assert (
        "note: --tile 256 is larger than every image's model input (at most 105 wide, 70 high): each runs as one tile "
        "padded to 256x256" in proc.stdout
    )
    assert "4 images: 4 written" in proc.stdout  # said, not refused


@pytest.mark.parametrize(
    "extra, message",
    [(["--model", "x.onnx"], "it takes no --model"), (["--precision", "fp32"], "leave out --precision")],
)  # fmt: skip
def test_engine_fastest_refuses_what_it_chooses_itself(exported_checkpoint, images, tmp_path, extra, message):
    args = ["--checkpoint", exported_checkpoint[0] / "best.pth"] if "--model" not in extra else []
    proc = run_cli("unet-infer", images, "--engine", "fastest", "--device", "cpu", *args, *extra, cwd=tmp_path)
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert message in line


@pytest.mark.slow
def test_compile_engine_matches_eager(exported_checkpoint, images):
    ckpt = exported_checkpoint[0] / "best.pth"
    files = sorted(images.iterdir())[:2]
    eager = Predictor(ckpt, device="cpu", tile=48, batch=4).predict(files)
    compiled = Predictor(ckpt, engine="compile", device="cpu", tile=48, batch=4)
    assert compiled.engine.static_shapes and "torch.compile" in compiled.engine.detail
    for a, b in zip(eager, compiled.predict(files), strict=True):
        assert mask_agreement(a, b, 1) >= 0.999


def _peak_rss_kib(args) -> int:
    """Peak resident memory of a real unet-infer process, measured by the kernel (ru_maxrss of the child)."""
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_memory_stays_bounded_over_hundreds_of_images(exported_checkpoint, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(600):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(folder.iterdir())[:100]:
        (few / p.name).write_bytes(p.read_bytes())
    common = ["--checkpoint", exported_checkpoint[0] / "best.pth", "--device", "cpu", "--no-progress", "--workers", "2"]
    small = _peak_rss_kib([*cli_command("unet-infer"), few, "--out", tmp_path / "o1", *common])
    large = _peak_rss_kib([*cli_command("unet-infer"), folder, "--out", tmp_path / "o2", *common])
    assert len(list((tmp_path / "o2").glob("*.png"))) == 600
    assert large < small * 1.1 + 20_000, (small, large)  # 6x the images, no more than noise in peak memory


@pytest.mark.gpu
def test_streamed_cuda_path_matches_the_cpu(exported_checkpoint, images, tmp_path):
    ckpt = exported_checkpoint[0] / "best.pth"
    outs = {}
    for device in ("cpu", "cuda"):
        outs[device] = tmp_path / device
        proc = run_cli("unet-infer", images, "--checkpoint", ckpt, "--device", device, "--precision", "fp32",
                       "--out", outs[device], "--save-prob", "--overlay", "--no-progress", check=True)  # fmt: skip
        assert "4 written" in proc.stdout
    for src in sorted(images.iterdir()):
        a, b = (read_mask(outs[d] / f"{src.stem}.png") for d in ("cpu", "cuda"))
        assert mask_agreement(a > 0, b > 0, 1) >= 0.999
    tiled = Predictor(ckpt, device="cuda", tile=32, batch=16).predict(sorted(images.iterdir()))
    assert all(m.shape == Image.open(s).size[::-1] for m, s in zip(tiled, sorted(images.iterdir()), strict=True))


def test_jpeg_exif_detection_and_decoder_choice(tmp_path, exported_checkpoint):
    import io

    from unetkit.infer.nvjpeg import GpuJpegDecoder, cpu_decode_reason

    plain, rotated, gray, cmyk = io.BytesIO(), io.BytesIO(), io.BytesIO(), io.BytesIO()
    image = Image.new("RGB", (8, 4))
    image.save(plain, format="JPEG")
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(rotated, format="JPEG", exif=exif)
    image.convert("L").save(gray, format="JPEG")
    image.convert("CMYK").save(cmyk, format="JPEG")
    assert cpu_decode_reason(plain.getvalue()) is None and cpu_decode_reason(gray.getvalue()) is None
    assert cpu_decode_reason(rotated.getvalue()) == "EXIF rotation"
    assert cpu_decode_reason(cmyk.getvalue()) == "CMYK colours"
    assert cpu_decode_reason(b"not a jpeg") is None
    assert GpuJpegDecoder.unavailable(torch.device("cpu")) == "the engine does not run on CUDA"
    folder = tmp_path / "in"
    folder.mkdir()
    image.save(folder / "x.jpg")
    proc = run_cli("unet-infer", folder, "--checkpoint", exported_checkpoint[0] / "best.pth", "--device", "cpu",
                   "--decoder", "nvjpeg")  # fmt: skip
    assert proc.returncode == 2
    assert error_lines(proc) == ["unet-infer: error: --decoder nvjpeg: the engine does not run on CUDA"]
    assert not (tmp_path / "in_predictions").exists()  # refused before the folder was claimed for this model


@pytest.mark.gpu
@needs_torchvision
def test_gpu_jpeg_decoding_matches_the_cpu_decoder(exported_checkpoint, images, tmp_path):
    ckpt = exported_checkpoint[0] / "best.pth"
    outs = {}
    for decoder in ("cpu", "nvjpeg"):
        outs[decoder] = tmp_path / decoder
        run_cli("unet-infer", images, "--checkpoint", ckpt, "--device", "cuda", "--decoder", decoder,
                "--out", outs[decoder], "--no-progress", check=True)  # fmt: skip
    for src in sorted(images.glob("*.jpg")):
        a, b = (read_mask(outs[d] / f"{src.stem}.png") for d in ("cpu", "nvjpeg"))
        assert mask_agreement(a > 0, b > 0, 1) >= 0.99  # two JPEG decoders may differ by a level here and there


@pytest.mark.parametrize(
    "signum, code, said",
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_or_sigterm_leaves_only_complete_files(exported_checkpoint, tmp_path, signum, code, said):
    """A scheduler's SIGTERM cleans up as Ctrl-C does: without a handler Python dies on the spot and leaves the
    temporary files of the images being written."""
    folder, out = tmp_path / "many", tmp_path / "out"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(300):
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(folder / f"{i:04d}.jpg")
    cmd = [*cli_command("unet-infer"), folder, "--checkpoint", exported_checkpoint[0] / "best.pth", "--out", out,
           "--overlay", "--save-prob", "--rle", tmp_path / "sub.csv", "--batch", "1", "--device", "cpu",
           "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(out.glob("*[0-9].png"))) < 10 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert f"{said}; finished outputs are kept" in stderr
    names = [p.name for p in out.iterdir()]
    assert not [n for n in names if n.startswith(".")]  # no temporary file left behind
    masks = sorted(out.glob("*[0-9].png"))
    assert 10 <= len(masks) < 300
    for path in out.iterdir():
        if path.name != RECORD_NAME:
            Image.open(path).load()  # every file that exists is complete
    assert not (tmp_path / "sub.csv").exists()  # the CSV only appears once the run has finished


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches the process load torch in Linux's /proc")
def test_ctrl_c_while_the_command_is_still_loading_is_one_line():
    """torch and ONNX Runtime take a second or more to import: Ctrl-C then is one line and exit 130, as later."""
    proc = subprocess.Popen([*cli_command("unet-infer"), "nowhere"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=interruptible)  # fmt: skip
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 60
    while "libtorch" not in maps.read_text() and time.monotonic() < deadline:  # torch has begun to load
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stderr.splitlines() == ["unet-infer: interrupted while starting"]


def test_an_artifact_exported_without_verification_is_said(random_checkpoint, tmp_path):
    """A --no-verify file (or one a failed re-export left from an earlier --no-verify run) runs, with a warning."""
    ckpt = tmp_path / "best.pth"
    shutil.copy(random_checkpoint, ckpt)
    run_cli("unet-export", ckpt, "--no-verify", "--no-trt", "--device", "cpu", "--no-progress", check=True)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (64, 48), (90, 120, 200)).save(folder / "x.png")
    proc = run_cli("unet-infer", folder, "--checkpoint", ckpt, "--engine", "onnx", "--device", "cpu",
                   "--no-progress", check=True)  # fmt: skip
    assert (f"warning: {tmp_path / 'best.onnx'} was exported with --no-verify: its agreement with the checkpoint "
            "was never checked") in proc.stdout  # fmt: skip


def test_one_output_folder_never_mixes_settings_or_stale_sidecars(exported_checkpoint, images, tmp_path):
    """A rewrite without --save-prob would leave the earlier probability maps beside new masks, and a --resume
    with another tiling would leave the masks half one way: both refused before anything is written."""
    out = tmp_path / "out"
    common = [images, "--checkpoint", exported_checkpoint[0] / "best.pth", "--out", out, "--device", "cpu",
              "--no-progress"]  # fmt: skip
    run_cli("unet-infer", *common, "--tile", "32", "--save-prob", check=True)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["settings"] == {"tile": 32, "overlap": 8, "blend": "gaussian"}
    stale = run_cli("unet-infer", *common, "--tile", "32")
    assert stale.returncode == 2
    (line,) = error_lines(stale)
    assert f"--out {out}: holds 4 file(s) of an earlier run that this run would not replace" in line
    assert "add --save-prob, or give another --out" in line
    other = run_cli("unet-infer", *common, "--save-prob", "--resume")
    assert error_lines(other) == [
        f"unet-infer: error: --out {out}: its masks were made with --tile 32 --overlap 8 --blend gaussian without "
        "--tta, this run uses whole images without --tta; --resume with the same, or give another --out"
    ]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing was written
    run_cli("unet-infer", *common, "--tile", "32", "--resume", check=True)  # every mask is kept, with its map
    (out / "a_full.png").unlink()  # a mask to redo, beside the earlier run's map of it
    redo = run_cli("unet-infer", *common, "--tile", "32", "--resume")
    assert "holds 1 file(s) of an earlier run that this run would not replace" in error_lines(redo)[0]
    run_cli("unet-infer", *common, "--save-prob", check=True)  # a whole rewrite with other settings is fine
    assert json.loads((out / RECORD_NAME).read_text())["settings"] == {"tile": 0}
    mirrored = run_cli("unet-infer", *common, "--save-prob", "--tta", "--resume")  # TTA changes masks too
    assert "made with whole images without --tta, this run uses whole images with --tta;" in error_lines(mirrored)[0]
    proc = run_cli("unet-infer", *common, "--save-prob", "--tta", check=True)
    assert json.loads((out / RECORD_NAME).read_text())["settings"] == {"tile": 0, "tta": True}
    assert "whole images, mirrored TTA, batch" in proc.stdout
    run_cli("unet-infer", *common, "--save-prob", "--overlay", "--tta", check=True)
    both = run_cli("unet-infer", *common, "--tta")  # every flag the rewrite lacks is named at once
    assert "; add --save-prob and --overlay, or give another --out" in error_lines(both)[0]
