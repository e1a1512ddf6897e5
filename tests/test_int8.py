"""INT8 export on the CPU: calibration sources and seeds, the QDQ file's form for TensorRT, reproducibility, and
a verification that refuses a broken calibration."""

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from conftest import error_lines, make_meta, run_cli
from unetkit.core.checkpoint import read_checkpoint, save_checkpoint
from unetkit.core.errors import UnetkitError
from unetkit.core.metrics import agreement_counts, class_scores, confusion_counts, mask_agreement
from unetkit.core.model import UNet, UNetConfig
from unetkit.core.sources import find_images
from unetkit.export.calibration import (
    CalibrationItem,
    CalibrationSource,
    calibration_source,
    describe_plan,
    followed_data,
    plan,
    samples,
    whole_inputs,
    whole_note,
)
from unetkit.export.quantize import float_convs, qdq_problems_for_tensorrt, quantize_onnx
from unetkit.export.verify import (
    Verification,
    sample_inputs,
    verification_images,
    verification_line,
    verification_source,
)
from unetkit.infer.artifacts import decode_metadata
from unetkit.infer.engines import EngineUnavailable, create_engine


def props(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def scales(path):
    """Every quantization scale in a QDQ file, by the name of the tensor it quantizes."""
    model = onnx.load(str(path))
    init = {t.name: t for t in model.graph.initializer}
    return {n.input[0]: numpy_helper.to_array(init[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in init}  # fmt: skip


@pytest.fixture(scope="module")
def meta(exported_checkpoint):
    return decode_metadata(props(exported_checkpoint[0] / "best.onnx"), "best.onnx")


def quantize(folder, meta, calib, name, seed, count=4, tile=32, scheme="symmetric"):
    source = calibration_source(calib, meta)
    items = plan(source, count, tile, seed)
    out = folder / name
    quantize_onnx(folder / "src.onnx", out, samples(source, meta, items, tile, seed), count, meta, scheme,
                  describe_plan(source, count, tile, seed), progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def work(exported_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    (folder / "src.onnx").write_bytes((exported_checkpoint[0] / "best.onnx").read_bytes())
    return folder


def test_calibration_plan_is_seeded():
    source = CalibrationSource(tuple(Path(f"{i}.jpg") for i in range(10)), "ten")
    a, b, c = plan(source, 25, 64, seed=1), plan(source, 25, 64, seed=1), plan(source, 25, 64, seed=2)
    assert a == b and a != c
    # Distinct images first, then more tiles of them: each of the 10 images is used before any twice.
    assert sorted(i.index for i in a[:10]) == list(range(10)) and len(a) == 25
    assert all(0 <= i.crop[0] < 1 and 0 <= i.crop[1] < 1 for i in a)
    assert all(i.crop is None for i in plan(source, 5, 0, seed=1))  # tile 0: whole images
    with pytest.raises(UnetkitError, match="--calib-count 0"):
        plan(source, 0, 64, 0)


def test_same_seed_same_file_bytes_and_another_seed_other_scales(work, meta, calib_images):
    a = quantize(work, meta, calib_images, "a.onnx", seed=3)
    b = quantize(work, meta, calib_images, "b.onnx", seed=3)
    c = quantize(work, meta, calib_images, "c.onnx", seed=4)
    assert a.read_bytes() == b.read_bytes()  # reproducible to the byte
    sa, sc = scales(a), scales(c)
    assert sa.keys() == sc.keys() and len(sa) > 10
    assert any(not np.array_equal(sa[k], sc[k]) for k in sa)  # other tiles, other activation ranges
    calibration = decode_metadata(props(a), "a").extra["calibration"]
    assert calibration == {"source": "8 images in " + str(calib_images), "count": 4, "tile": 32, "seed": 3,
                           "method": "minmax"}  # fmt: skip
    # a sample whose file fails to decode is skipped: the file records the 3 used, not the 4 planned
    source = calibration_source(calib_images, meta)
    inputs = list(samples(source, meta, plan(source, 4, 32, 3), 32, 3))[:3]
    quantize_onnx(work / "src.onnx", work / "d.onnx", iter(inputs), 4, meta, "symmetric",
                  describe_plan(source, 4, 32, 3), progress=False)  # fmt: skip
    assert decode_metadata(props(work / "d.onnx"), "d").extra["calibration"]["count"] == 3


def test_symmetric_file_is_what_tensorrt_takes_and_cpu_is_not(work, meta, calib_images):
    sym = onnx.load(str(quantize(work, meta, calib_images, "sym.onnx", seed=0)))
    assert qdq_problems_for_tensorrt(sym) == []
    weights = {n.input[1] for n in sym.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    quantized = {n.output[0] for n in sym.graph.node if n.op_type == "DequantizeLinear"}
    # Every convolution's weights are dequantized int8 (per channel), except the first and the last (float).
    kept_float = {n.name for n in sym.graph.node if n.op_type == "Conv" and n.input[1] not in quantized}
    assert kept_float == set(float_convs(onnx.load(str(work / "src.onnx")))) and len(weights - quantized) == 2
    assert sym.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # logits stay float
    cpu = onnx.load(str(quantize(work, meta, calib_images, "cpu.onnx", seed=0, scheme="cpu")))
    problems = qdq_problems_for_tensorrt(cpu)
    assert problems and any("uint8 zero point" in p for p in problems)
    assert decode_metadata(props(work / "cpu.onnx"), "x").extra["int8_scheme"] == "cpu"


def test_export_follows_a_run_resumed_on_moved_data(tmp_path, calib_images):
    """best.pth keeps the old data path until the next improvement after `--resume --data NEW`; the run's
    last.pth records the new one, so export still verifies on the training data."""
    model = UNet(UNetConfig(base_channels=2))
    args = {"data": str(tmp_path / "gone"), "seed": 3}
    save_checkpoint(tmp_path / "best.pth", model, make_meta(train_args=args))
    assert followed_data(tmp_path / "best.pth", make_meta(train_args=args)) == (make_meta(train_args=args), None)
    save_checkpoint(tmp_path / "last.pth", model, make_meta(train_args={**args, "data": str(calib_images)}))
    meta, line = followed_data(tmp_path / "best.pth", read_checkpoint(tmp_path / "best.pth").meta)
    assert meta.extra["train_args"] == {"data": str(calib_images), "seed": 3, "images": None, "masks": None,
                                        "cache": None}  # fmt: skip
    last = tmp_path / "last.pth"
    assert line == f"the run's data moved from {tmp_path / 'gone'} to {calib_images} (as {last} records)"
    assert "the checkpoint's training data: 8 images" in calibration_source(None, meta).description
    (tmp_path / "last.pth").write_bytes(b"damaged")  # only the hint is lost
    assert followed_data(tmp_path / "best.pth", make_meta(train_args=args))[1] is None


def test_calibration_sources(tmp_path, meta, calib_images):
    assert len(find_images(calib_images)) == 8  # a data set root: its train/ folder, not the masks
    recorded = meta.replace(train_args={"data": str(calib_images)})
    assert "the checkpoint's training data: 8 images" in calibration_source(None, recorded).description
    gone = calibration_source(None, meta.replace(train_args={"data": str(tmp_path / "gone")}))
    assert gone.synthetic and "is not on this machine" in gone.description
    assert "records no training data" in calibration_source(None, meta).description
    # a run on named folders: its image folder, without the masks that share it
    (tmp_path / "shared").mkdir()
    for name in ("a.png", "a_seg.png", "b.png", "b_seg.png"):
        Image.new("RGB", (40, 30)).save(tmp_path / "shared" / name)
    shared = str(tmp_path / "shared")
    named = meta.replace(train_args={"data": str(tmp_path), "images": shared, "masks": shared, "mask_suffix": "_seg"})
    assert [p.name for p in calibration_source(None, named).images] == ["a.png", "b.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnetkitError, match="no images found") as exc:
        calibration_source(tmp_path / "empty", meta)
    assert "empty/imgs" in str(exc.value) and "empty/train" in str(exc.value)
    x = next(samples(gone, meta, plan(gone, 1, 16, 0), 16, 0))
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32  # a synthetic car's tile, normalized
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "bad.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (40, 30)).save(tmp_path / "mixed" / "good.png")
    mixed = calibration_source(tmp_path / "mixed", meta)
    assert [p.name for p in mixed.images] == ["good.png"]  # an unreadable header: left out before planning
    assert len(list(samples(mixed, meta, plan(mixed, 2, 0, 0), 0, 0))) == 2
    noise = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "mixed" / "full.png")
    data = (tmp_path / "mixed" / "full.png").read_bytes()
    (tmp_path / "mixed" / "cut.png").write_bytes(data[: len(data) // 2])  # its header reads, its pixels do not
    cut = CalibrationSource((tmp_path / "mixed" / "cut.png", tmp_path / "mixed" / "good.png"), "2 images")
    got = list(samples(cut, meta, plan(cut, 2, 0, 0), 0, 0))  # the corrupt file is skipped, not fatal
    assert len(got) == 1 and got[0].shape[1] == 3


def test_constant_calibration_images_are_refused(exported_checkpoint, tmp_path):
    """Calibrating on flat grey images gives ranges no real image fits: verification must not keep the file."""
    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(4):
        Image.new("RGB", (1918, 1280), (128 + i, 128, 128)).save(grey / f"{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    earlier = (exported_checkpoint[0] / "best.int8.onnx").read_bytes()
    (out / "best.int8.onnx").write_bytes(earlier)  # an earlier export's file: the failed one must not touch it
    proc = run_cli("unet-export", exported_checkpoint[0] / "best.pth", "--device", "cpu", "--no-trt", "--no-progress",
                   "--int8", "--calib", grey, "--calib-count", "4", "--calib-tile", "0", "--out-dir", out)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("best.int8.onnx"))
    assert "NOT KEPT" in line and "FAILED" in line and "not kept: best.int8.onnx" in proc.stdout
    assert "  left as they were: best.int8.onnx of an earlier export" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["best.fp16.onnx", "best.int8.onnx", "best.onnx"]  # no temp
    assert (out / "best.int8.onnx").read_bytes() == earlier


@pytest.mark.parametrize(
    "args, message",
    [(["--calib", "missing-dir"], "--calib missing-dir: not a folder"),
     (["--calib-count", "0"], "--calib-count 0: must be at least 1"),
     (["--calib-tile", "-1"], "--calib-tile -1")],
)  # fmt: skip
def test_bad_int8_arguments_fail_before_writing(tmp_path, random_checkpoint, args, message):
    out = tmp_path / "out"
    proc = run_cli("unet-export", random_checkpoint, "--int8", "--no-trt", "--out-dir", out, *args, cwd=tmp_path)
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert message in line
    assert not out.exists()


def test_a_file_openvino_failed_is_refused_by_the_openvino_engine(work, meta, monkeypatch):
    pytest.importorskip("openvino")
    model = onnx.load(str(work / "sym.onnx"))
    values = {p.key: p.value for p in model.metadata_props}
    values["unetkit.runtime_checks"] = '{"cpu": "X", "openvino": {"passed": false, "image_dice": 0.5}}'
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, values)
    onnx.save(model, str(work / "failed.onnx"))
    with pytest.raises(EngineUnavailable, match="openvino failed this file's verification at export on X"):
        create_engine("openvino", model=work / "failed.onnx", device="cpu")
    with create_engine("onnx", model=work / "failed.onnx", device="cpu") as engine:  # ONNX Runtime passed it
        assert engine.precision == "int8"


def test_openvino_missing_is_one_line(exported_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the [openvino] extra were not installed
    with pytest.raises(EngineUnavailable, match=r"OpenVINO is not installed: pip install 'unetkit\[openvino\]'"):
        create_engine("openvino", checkpoint=exported_checkpoint[0] / "best.pth", device="cpu")


def test_verification_images_are_the_models_own_kind(tmp_path, meta, calib_images, caplog):
    """Artifacts are judged on images like those they will see: a seeded pick of the source's readable
    images, each named; only a synthetic source falls back to the synthetic car."""
    source = calibration_source(calib_images, meta)
    picked = verification_images(source, count=4, seed=0)
    assert len(picked) == 4 and len({name for name, _ in picked}) == 4
    assert {name for name, _ in picked} <= {p.name for p in source.images}
    assert [n for n, _ in verification_images(source, 4, seed=0)] == [n for n, _ in picked]
    assert [n for n, _ in verification_images(source, 4, seed=1)] != [n for n, _ in picked]
    assert verification_images(CalibrationSource((), "synthetic cars"), 4) == []
    # the training data wins over --calib (a wrong calibration must not check itself); --calib stands in
    # where the training data is not here; else the synthetic car
    recorded = meta.replace(train_args={"data": str(calib_images)})
    assert "training data" in verification_source(tmp_path, recorded).description
    gone = meta.replace(train_args={"data": str(tmp_path / "gone")})
    assert verification_source(calib_images, gone).description == f"8 images in {calib_images}"
    assert verification_source(None, gone).synthetic
    assert "4 images from 8 images in" in verification_line(source, 4)
    assert verification_line(CalibrationSource((), "synthetic cars (why)"), 0).startswith(
        "verification: a synthetic car image, from synthetic cars (why)"
    )
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "good.png")
    with caplog.at_level("WARNING"):
        mixed = verification_images(calibration_source(tmp_path, meta), count=4)
    assert [name for name, _ in mixed] == ["good.png"] and "bad.jpg" in caplog.text
    inputs = sample_inputs(meta, images=mixed)
    assert [s.realistic for s in inputs] == [True, False] and inputs[0].name.startswith("good.png 1x")


def test_agreement_pools_pixels_so_a_tiny_class_cannot_decide_alone():
    """A multi-class model whose INT8 copy flips 2 of 100 pixels of a small class agrees on 98 % of the
    pixels; the mean Dice over classes (0.5 here) would refuse it for those two pixels."""
    reference = torch.zeros(10, 10, dtype=torch.uint8)
    reference[0, :2] = 2
    candidate = torch.zeros(10, 10, dtype=torch.uint8)
    assert agreement_counts(candidate, reference, 3) == [98, 2, 2]
    assert class_scores(confusion_counts(candidate, reference, 3, ignore_index=-1), 3).mean_dice < 0.6
    assert mask_agreement(candidate, reference, 3) == 0.98  # the benchmark's Dice column: the same figure
    binary = agreement_counts(torch.tensor([[1, 1, 0, 0]]), torch.tensor([[1, 0, 1, 0]]), 1)
    assert binary == [1, 1, 1]  # the foreground only: background pixels agreeing say nothing
    result = Verification(exact=False, int8=True)
    for name, counts in (("a.png", [990, 1, 1]), ("b.png", [50, 2, 2])):  # b alone: 100 / 104
        result.per_input.append({"name": name, "realistic": True, "max_abs_diff": 0.1, "dice": 0, "counts": counts})
    result.per_input.append({"name": "random", "realistic": False, "max_abs_diff": 0.9, "dice": 0, "counts": [0, 5, 5]})
    assert result.image_dice == pytest.approx(2080 / 2086)  # pooled over both images; noise is not gated
    assert result.passed and "images: agreement 0.99712" in result.summary()
    assert result.hint == ""


def test_an_fp16_failure_from_pixels_at_the_threshold_says_so():
    """Probabilities within the gap gate but masks that differ: the model, not the file (QA: a 3-epoch model's
    FP16 file at agreement 0.9985 with |dp| 4.5e-04)."""
    close = Verification(exact=False)
    close.per_input.append({"name": "a.png", "realistic": True, "max_abs_diff": 4.5e-4, "dice": 0,
                            "counts": [1000, 2, 2]})  # fmt: skip
    assert not close.passed and close.hint.startswith("the probabilities moved at most 4.5e-04, yet masks differ")
    assert "train it further, or keep the file unchecked with --no-verify" in close.hint
    far = Verification(exact=False, per_input=[{**close.per_input[0], "max_abs_diff": 0.3}])
    assert not far.passed and far.hint == ""  # the file itself is off: no excuse offered


def test_a_tile_larger_than_the_model_input_is_said(meta, tmp_path):
    """Inputs that fit in a tile calibrate whole, said in the line printed before calibrating, with each size
    and how many of the samples it covers."""
    synthetic = CalibrationSource((), "synthetic cars")
    items = plan(synthetic, 2, 128, 0)
    got = list(samples(synthetic, meta, items, 128, 0))
    assert [x.shape for x in got] == [(1, 3, 64, 96)] * 2  # whole: the 1918x1280 car at scale 0.05
    fits = whole_inputs(synthetic, meta, items, 128)
    assert fits == {(96, 64): 2}
    assert whole_note(fits, 2, 128) == "; all samples are whole model inputs (96x64), as they fit in a 128 px tile"
    assert whole_inputs(synthetic, meta, items, 0) == {}  # whole images asked for: nothing to say
    for name, size in (("a.png", (2000, 1000)), ("b.png", (1000, 1000)), ("c.png", (1000, 1000))):
        Image.new("RGB", size).save(tmp_path / name)
    (tmp_path / "d.png").write_bytes(b"not an image")  # left to samples() to name
    source = CalibrationSource(tuple(sorted(tmp_path.glob("*.png"))), "4 images")
    items = [CalibrationItem(i, (0.0, 0.0)) for i in range(4)]
    fits = whole_inputs(source, meta, items, 64)
    assert fits == {(50, 50): 2}  # scale 0.05: a.png's 100x50 input does not fit in 64 px
    assert whole_note(fits, 4, 64) == "; 2 of 4 samples are whole model inputs (50x50), as they fit in a 64 px tile"


def test_unreadable_calibration_images_are_left_out_before_any_work(tmp_path, meta, random_checkpoint, caplog):
    """Every planned sample must calibrate, so the recorded count is the count used; a folder of nothing
    readable is one line before any file is written, not ONNX Runtime's "No data is collected"."""
    folder = tmp_path / "calib"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"not an image")
    out = tmp_path / "out"
    proc = run_cli("unet-export", random_checkpoint, "--int8", "--no-trt", "--calib", folder, "--out-dir", out)
    assert proc.returncode == 2
    assert error_lines(proc) == [
        f"unet-export: error: --calib {folder}: none of its 2 images can be read ({folder / 'a.png'}: cannot read "
        "image (not an image file, or an unsupported format))"
    ]
    assert not out.exists()
    Image.new("RGB", (40, 30)).save(folder / "c.png")
    with caplog.at_level("WARNING"):
        source = calibration_source(folder, meta)
    assert source.images == (folder / "c.png",) and source.description == f"1 images in {folder}"
    assert f"warning: calibration leaves out {folder / 'a.png'}: cannot read image" in caplog.text
    assert "and 1 more" in caplog.text
