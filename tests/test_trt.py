"""TensorRT: the pure parts everywhere; building and running engines where TensorRT and a GPU are present."""

import json
import re

import pytest
import torch

from conftest import error_lines, run_cli
from unetkit.core import ModelMeta
from unetkit.core.errors import UnetkitError
from unetkit.export.profile import default_shape, make_profile, parse_batch, parse_shape
from unetkit.export.tensorrt_build import default_timing_cache, layer_precisions, precision_of
from unetkit.infer.engines.base import ShapeRange
from unetkit.infer.engines.trt import compatibility_problem

# Engine-inspector JSON as TensorRT writes it with DETAILED verbosity (trimmed to the fields we read).
INSPECTOR = {
    "Layers": [
        {"Name": "Reformatting CopyNode for Input Tensor 0", "LayerType": "Reformat",
         "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
        {"Name": "/inc/0/Conv + /inc/2/Relu", "LayerType": "CaskConvolution",
         "Outputs": [{"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "/ups.0/up/ConvTranspose", "LayerType": "CaskDeconvolution",
         "Outputs": [{"Format/Datatype": "Half"}]},
        {"Name": "/head/Conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Outputs": [{"Format/Datatype": "Float"}]},
        {"Name": "/pool/MaxPool", "LayerType": "CaskPooling", "Outputs": [{"Format/Datatype": "Half"}]},
    ]
}  # fmt: skip


def test_layer_precisions_reads_the_inspector_json():
    assert layer_precisions(json.dumps(INSPECTOR)) == ({"fp16": 2, "fp32": 1}, "convolution layers")
    # Convolutions fused into generated kernels name no convolution: every compute layer counts then.
    fused = {"Layers": [
        {"Name": "reformat", "LayerType": "Reformat", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "myelin", "LayerType": "kgen", "Outputs": [{"Format/Datatype": "Half"}]},
        {"Name": "myelin2", "LayerType": "kgen", "Outputs": [{"Format/Datatype": "N/A due to dynamic shapes"}]},
    ]}  # fmt: skip
    assert layer_precisions(fused) == ({"fp16": 1}, "layers")
    assert precision_of("N/A due to dynamic shapes") == "unknown"
    assert precision_of("Channel major BFloat16 format where channel % 8 == 0") == "bf16"
    assert precision_of("Row major linear FP32") == "fp32"
    assert precision_of("Thirty-two wide channel vectorized row major Int8 format") == "int8"


def test_compatibility_problem_says_to_re_export():
    sidecar = {"tensorrt_version": "10.16.1.11", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    here = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert compatibility_problem(sidecar, "10.16.1.11", here) is None
    other_version = compatibility_problem(sidecar, "11.4.0.106", here)
    assert "TensorRT 10.16.1.11" in other_version and "TensorRT 11.4.0.106" in other_version
    assert "re-export" in other_version
    other_gpu = compatibility_problem(sidecar, "10.16.1.11", {"gpu": "NVIDIA A10", "compute_capability": "8.6"})
    assert "NVIDIA A10" in other_gpu and "compute capability 8.6" in other_gpu and "re-export" in other_gpu


def test_profile_parsing_and_defaults():
    assert parse_batch("8") == (1, 8, 8) and parse_batch("1:4:16") == (1, 4, 16)
    assert parse_shape("640x959") == ((640, 959),) * 3
    assert parse_shape("64x64:640x959:1280x1920") == ((64, 64), (640, 959), (1280, 1920))
    for bad in ("0", "4:2:8", "a:b:c"):
        with pytest.raises(UnetkitError, match="--batch"):
            parse_batch(bad)
    for bad in ("640", "64x64:32x32:128x128", "x:y"):
        with pytest.raises(UnetkitError, match="--shape"):
            parse_shape(bad)
    lo, opt, hi = default_shape(ModelMeta(n_classes=1, scale=0.5))
    assert opt == (640, 959) and hi == (640, 960) and lo == (32, 32)  # 1918x1280 at 0.5, up to a multiple of 16
    assert default_shape(ModelMeta(n_classes=1, scale=1.0))[1:] == ((1280, 1918), (1280, 1920))
    assert default_shape(ModelMeta(n_classes=1, scale=0.25))[2] == (512, 512)  # covers the default 512 tile
    profile = make_profile((1, 8, 8), default_shape(ModelMeta(n_classes=1, scale=0.5)))
    assert profile == ShapeRange((1, 3, 32, 32), (8, 3, 640, 959), (8, 3, 640, 960))
    assert profile.contains((8, 3, 512, 512)) and not profile.contains((9, 3, 512, 512))


def test_default_timing_cache_is_per_gpu_and_version(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_timing_cache("10.16.1.11", "NVIDIA H100 80GB HBM3")
    assert path == tmp_path / "unetkit" / "timing-NVIDIA-H100-80GB-HBM3-trt10.16.1.11.cache"


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory, trained_checkpoint):
    out = tmp_path_factory.mktemp("trt")
    run_cli("unet-export", trained_checkpoint, "--out-dir", out, "--trt", "--batch", "1:2:4",
            "--shape", "32x32:64x96:128x192", "--no-progress", check=True)  # fmt: skip
    return out


@pytest.mark.trt
def test_engine_is_plain_verified_fp16_with_a_sidecar(engine_dir):
    import tensorrt as trt

    plan = (engine_dir / "best.fp16.engine").read_bytes()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)  # no header to strip
    assert engine is not None
    sidecar = json.loads((engine_dir / "best.fp16.engine.json").read_text())
    assert sidecar["tensorrt_version"] == trt.__version__
    assert sidecar["gpu"] == torch.cuda.get_device_name() and sidecar["precision"] == "fp16"
    assert sidecar["profile"]["min"] == [1, 3, 32, 32] and sidecar["profile"]["max"] == [4, 3, 128, 192]
    assert sidecar["fp16_share"] >= 0.9 and sidecar["verification"]["passed"]
    assert sidecar["io_dtypes"] == {"image": "float", "logits": "float"}
    assert len(sidecar["source_onnx_sha256"]) == 64


@pytest.mark.trt
def test_engine_outside_its_profile_is_one_clear_line(engine_dir):
    from unetkit.infer.engines import EngineShapeError, create_engine

    engine = create_engine("trt", checkpoint=engine_dir / "best.pth", device="cuda")
    assert engine(torch.zeros(2, 3, 64, 96, device="cuda")).shape == (2, 1, 64, 96)
    with pytest.raises(EngineShapeError, match=re.escape("accepts batch 1..4, height 32..128, width 32..192")):
        engine(torch.zeros(1, 3, 256, 96, device="cuda"))


@pytest.mark.trt
def test_engine_from_another_tensorrt_says_re_export(engine_dir, tmp_path):
    from unetkit.infer.engines import EngineUnavailable, create_engine

    for name in ("best.fp16.engine", "best.fp16.engine.json"):
        (tmp_path / name).write_bytes((engine_dir / name).read_bytes())
    sidecar = json.loads((tmp_path / "best.fp16.engine.json").read_text())
    sidecar["tensorrt_version"] = "9.0.0"
    (tmp_path / "best.fp16.engine.json").write_text(json.dumps(sidecar))
    with pytest.raises(EngineUnavailable, match="re-export"):
        create_engine("trt", model=tmp_path / "best.fp16.engine", device="cuda")


def test_without_tensorrt_the_onnx_files_are_still_written(tmp_path, random_checkpoint):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    ckpt = tmp_path / "best.pth"
    ckpt.write_bytes(random_checkpoint.read_bytes())
    proc = run_cli("unet-export", ckpt, "--no-verify", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    [skip] = [line for line in proc.stdout.splitlines() if line.startswith("best.fp16.engine")]
    assert "skipped: TensorRT is not installed" in skip and "pip install 'unetkit[trt]'" in skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.fp16.onnx", "best.onnx", "best.pth"]
    assert error_lines(proc) == []
