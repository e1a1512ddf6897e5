"""unet-export on the CPU: ONNX FP32/FP16 through real ONNX Runtime sessions, metadata, verification, errors."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import HAS_OPENVINO, error_lines, make_meta, run_cli
from unetkit.core import UNet, UNetConfig, load_checkpoint, save_checkpoint
from unetkit.core.atomic import TEMP_HOST
from unetkit.core.metrics import mask_agreement
from unetkit.export.onnx_export import export_onnx
from unetkit.export.verify import Reference, sample_inputs, verify
from unetkit.infer.artifacts import decode_metadata, sha256_file
from unetkit.infer.engines.ort import OnnxEngine

SHAPES = [(1, 64, 96), (4, 64, 96), (1, 128, 192), (4, 37, 53), (2, 1280 // 8, 1918 // 8), (1, 16, 16)]


@pytest.fixture(scope="module")
def exported(exported_checkpoint):
    """(checkpoint, folder, process) of `unet-export` run once through the real CLI on a trained checkpoint."""
    folder, proc = exported_checkpoint
    return folder / "best.pth", folder, proc


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_cli_writes_verified_onnx_and_reports(exported):
    _, out, proc = exported
    assert sorted(p.name for p in out.iterdir()) == ["best.fp16.onnx", "best.int8.onnx", "best.onnx", "best.pth"]
    lines = proc.stdout.splitlines()
    fp32 = next(line for line in lines if line.startswith("best.onnx"))
    fp16 = next(line for line in lines if line.startswith("best.fp16.onnx"))
    int8 = next(line for line in lines if line.startswith("best.int8.onnx"))
    assert " MB " in fp32 and "built" in fp32 and "verified" in fp32 and fp32.endswith("ok")
    # every artifact is judged on four of the images it will see (the training data's), not on a stand-in
    assert "verification: 4 images from the checkpoint's training data: 8 images in" in proc.stdout
    assert "images: agreement" in fp16 and "random: agreement" in fp16 and fp16.endswith("ok")
    # INT8 is gated in ONNX Runtime and checked in OpenVINO too, whose verdict is recorded in the file.
    assert "images/onnxruntime: agreement" in int8 and "over the images >= 0.99]" in int8 and int8.endswith("ok")
    if HAS_OPENVINO:
        assert "images/openvino*: agreement" in int8 and "(* reported, not gated)" in int8
    checks = decode_metadata({p.key: p.value for p in onnx.load(str(out / "best.int8.onnx")).metadata_props}, "x")
    checks = checks.extra["runtime_checks"]
    assert checks["onnxruntime"]["passed"] and checks["onnxruntime"]["image_dice"] >= 0.99
    ov_failed = "OpenVINO FAILED it on this CPU" in proc.stdout
    assert checks["openvino"]["passed"] is not ov_failed and checks["cpu"]
    assert "INT8 calibration: 8 samples (whole images, seed 0) from 8 images in" in proc.stdout
    assert any(line.startswith("best.fp16.engine") and "skipped" in line for line in lines)
    assert any(line.startswith("best.int8.engine") and "skipped" in line for line in lines)
    assert "wrote 3 verified artifact(s) to" in proc.stdout
    for name in ("best.onnx", "best.fp16.onnx", "best.int8.onnx"):
        onnx.checker.check_model(str(out / name), full_check=True)


def test_onnx_graph_is_dynamic_single_file_and_named(exported):
    _, out, _ = exported
    model = onnx.load(str(out / "best.onnx"))
    assert model.opset_import[0].version >= 17
    [inp], [outp] = model.graph.input, model.graph.output
    assert inp.name == "image" and outp.name == "logits"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    # the logits' dims carry the image's names (the dynamo exporter would name them by the crop's expression)
    for name in ("best.onnx", "best.fp16.onnx", "best.int8.onnx"):
        logits = onnx.load(str(out / name)).graph.output[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in logits] == ["batch", 1, "height", "width"]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not list(out.glob("*.data"))


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_onnx_agrees_with_pytorch(exported, shape):
    ckpt, out, _ = exported
    model, _ = load_checkpoint(ckpt)
    x = torch.randn(shape[0], 3, *shape[1:], generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        expected = torch.sigmoid(model(x)).numpy()
    got = 1 / (1 + np.exp(-session(out / "best.onnx").run(None, {"image": x.numpy()})[0]))
    assert got.shape == expected.shape == (shape[0], 1, *shape[1:])
    assert np.abs(got - expected).max() <= 1e-4


def test_fp16_onnx_computes_in_fp16_and_agrees_on_masks(exported):
    ckpt, out, _ = exported
    model = onnx.load(str(out / "best.fp16.onnx"))
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    dtypes = {t.data_type for t in model.graph.initializer if t.name in conv_weights}
    assert dtypes == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O, documented
    _, meta = load_checkpoint(ckpt)
    x = sample_inputs(meta)[0].x  # the synthetic car, at the checkpoint's scale
    fp16 = session(out / "best.fp16.onnx").run(None, {"image": x.numpy()})[0]
    fp32 = session(out / "best.onnx").run(None, {"image": x.numpy()})[0]
    assert fp16.dtype == np.float32
    assert mask_agreement(fp16[:, 0] > 0, fp32[:, 0] > 0, 1) >= 0.999
    assert (fp32[:, 0] > 0).mean() > 0.05  # the model does see the car: agreement is not about empty masks


def test_metadata_round_trips(exported):
    ckpt, out, _ = exported
    _, meta = load_checkpoint(ckpt)
    props = {p.key: p.value for p in onnx.load(str(out / "best.onnx")).metadata_props}
    assert all(isinstance(json.loads(v), (int, float, str, list, dict, bool, type(None))) for v in props.values())
    assert json.loads(props["unetkit.resize"]) == "scale" and json.loads(props["unetkit.input_size"]) is None
    decoded = decode_metadata(props, "best.onnx")
    for key in ("n_classes", "class_names", "scale", "mean", "std", "threshold", "mask_kind", "val_dice", "resize"):
        assert getattr(decoded, key) == getattr(meta, key), key
    extra = decoded.extra
    assert extra["precision"] == "fp32" and "logits" in extra["output"] and "mean" in extra["input"]
    assert extra["source_sha256"] == sha256_file(ckpt) and extra["source_checkpoint"] == "best.pth"
    assert extra["model"] == load_checkpoint(ckpt)[0].config.to_dict()
    assert "train_args" not in extra  # training details stay in the checkpoint
    fp16 = decode_metadata(session(out / "best.fp16.onnx").get_modelmeta().custom_metadata_map, "x")
    assert fp16.extra["precision"] == "fp16"


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_both_exporters_give_verified_graphs(tmp_path, exporter):
    """torch 2.9+ defaults to dynamo, older torch uses TorchScript: both paths must verify."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, n_classes=3, bilinear=True)).eval()
    meta = make_meta(n_classes=3)
    path = export_onnx(model, meta, tmp_path / "m.onnx", exporter=exporter)
    result = verify(OnnxEngine(path, torch.device("cpu")), Reference(model, meta), sample_inputs(meta), exact=True)
    assert result.passed, result.summary()
    assert session(path).run(None, {"image": np.zeros((3, 3, 50, 70), np.float32)})[0].shape == (3, 3, 50, 70)


def test_opset_is_written_as_asked_or_refused(tmp_path):
    """The dynamo exporter writes 18 for anything lower without a word: auto takes TorchScript there, and an
    opset no exporter writes is refused naming both ranges."""
    from unetkit.core.errors import UnetkitError
    from unetkit.export.onnx_export import opset_range, resolve_exporter, written_opset

    model, meta = UNet(UNetConfig(base_channels=2)).eval(), make_meta()
    assert resolve_exporter("auto", 13) == "torchscript" and resolve_exporter("auto", 19) == "dynamo"
    for exporter, opset in (("auto", 13), ("dynamo", 19)):
        path = export_onnx(model, meta, tmp_path / f"{opset}.onnx", exporter=exporter, opset=opset)
        assert written_opset(onnx.load(str(path))) == opset
    assert opset_range("dynamo")[0] == 18 and opset_range("torchscript")[0] == 11
    with pytest.raises(UnetkitError, match=r"--opset 13: the dynamo exporter of torch .* writes opsets 18 to \d+"):
        export_onnx(model, meta, tmp_path / "x.onnx", exporter="dynamo", opset=13)
    with pytest.raises(UnetkitError, match=r"--opset 99: .*\(the torchscript exporter: 11 to \d+\)"):
        resolve_exporter("auto", 99)
    assert not (tmp_path / "x.onnx").exists()


def test_fp16_overflow_is_caught_and_the_artifact_not_kept(tmp_path):
    """Weights beyond FP16's range (65504) become inf in the FP16 graph: verification must refuse it.

    The first BatchNorm's output is scaled up by 1e7 and the next conv's weights down by 1e7: through the
    ReLU the FP32 network computes the same function, but the folded first conv no longer fits in FP16.
    """
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4)).eval()
    with torch.no_grad():
        model.inc[1].weight.mul_(1e7)
        model.inc[1].bias.mul_(1e7)
        model.inc[3].weight.div_(1e7)
    ckpt = tmp_path / "best.pth"
    save_checkpoint(ckpt, model, make_meta())
    proc = run_cli("unet-export", ckpt, "--no-trt", "--no-progress")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NOT KEPT" in proc.stdout and "FAILED" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.onnx", "best.pth"]  # no temp file either


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.pth", "checkpoint not found"),
        (lambda d: (d / "bad.pth").write_bytes(b"\x00" * 100) and d / "bad.pth", "truncated or not a PyTorch file"),
        (lambda d: torch.save({"weights": torch.zeros(2)}, d / "sd.pth") or d / "sd.pth", "not a unetkit checkpoint"),
    ],
)
def test_bad_checkpoints_give_one_line_and_leave_no_files(tmp_path, make, message):
    path = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli("unet-export", path)
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert line.startswith(f"unet-export: error: {path}") and message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_asking_for_trt_without_tensorrt_fails_before_writing(tmp_path, random_checkpoint):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    out = tmp_path / "out"
    proc = run_cli("unet-export", random_checkpoint, "--trt", "--out-dir", out)
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert "--trt: TensorRT is not installed" in line and "pip install 'unetkit[trt]'" in line
    assert not out.exists()


def test_temporary_files_of_a_killed_export_are_removed(tmp_path, random_checkpoint):
    """SIGKILL during a long write (a TensorRT build outlasts a scheduler's grace period) leaves its temporary
    file; the next export into the folder removes it once it is 10 minutes old and its writer is gone."""
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    left = out / f".best.fp16.engine.{TEMP_HOST}-{dead}-1.tmp"
    young = out / f".best.onnx.{TEMP_HOST}-{dead}-2.tmp"
    for path in (left, young):
        path.write_bytes(b"partial")
    os.utime(left, (time.time() - 3600, time.time() - 3600))
    proc = run_cli("unet-export", random_checkpoint, "--out-dir", out, "--no-verify", "--no-trt", "--device", "cpu",
                   "--no-progress", check=True)  # fmt: skip
    assert f"removed 1 temporary file(s) that a killed export left in {out}" in proc.stdout
    assert not left.exists() and young.exists()
