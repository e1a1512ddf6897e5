"""The GPU path's decisions, each proved on the CPU where its logic allows (issue: GPU path on first contact),
and the same paths exercised on a CUDA GPU where one is present (markers gpu, trt)."""

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from conftest import error_lines, make_meta, needs_torchvision, run_cli
from unetkit.core import UNet, UNetConfig
from unetkit.core.device import bf16_native_capability, canonical_device, resolve_device, same_device
from unetkit.core.errors import UnetkitError
from unetkit.export.tensorrt_build import (
    MIN_SHARE,
    SHARE_SIDE,
    engine_skip_reason,
    layer_precisions,
    precision_share,
    tensor_precision,
)
from unetkit.infer.engines import EngineShapeError, EngineUnavailable, ShapeRange, create_engine
from unetkit.infer.engines.compiled import recompile_limit, shapes_warning
from unetkit.infer.engines.eager import EagerEngine
from unetkit.infer.engines.ort import (
    OnnxEngine,
    conflicting_runtimes,
    cuda_fallback_reason,
    cuda_provider_options,
    run_error,
)
from unetkit.infer.io import discover
from unetkit.infer.nvjpeg import batched_decode_supported, torchcodec_notice_silenced
from unetkit.infer.pipeline import Pipeline
from unetkit.infer.settings import InferSettings, OutputOptions
from unetkit.train.fit import algorithm_choice, visible_rng_states

ROOT = Path(__file__).resolve().parents[1]


# ---- 1. one CUDA device, one comparison ---------------------------------------------------------------------
def test_bare_cuda_gets_the_current_index():
    assert canonical_device("cuda", current_index=0) == torch.device("cuda", 0)
    assert canonical_device("cuda", current_index=3) == torch.device("cuda", 3)
    assert canonical_device(torch.device("cuda", 1), current_index=0) == torch.device("cuda", 1)  # kept
    assert canonical_device("cpu") == torch.device("cpu")
    # The bug: torch compares the index, so bare "cuda" never equals a CUDA tensor's device.
    assert torch.device("cuda") != torch.device("cuda", 0)
    assert same_device("cuda", torch.device("cuda", 0), current_index=0)
    assert not same_device("cuda", "cuda:1", current_index=0)
    assert same_device("cpu", torch.device("cpu")) and not same_device("cpu", "cuda:0")


def test_resolve_device_names_and_refusals():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad, message in (("gpu", "not a device name"), ("mps", "runs on cpu or cuda")):
        with pytest.raises(UnetkitError, match=message):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UnetkitError, match="no CUDA GPU is visible"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda").index == torch.cuda.current_device()
        assert resolve_device("auto") == resolve_device("cuda")


def test_engine_compares_devices_through_one_function():
    engine = EagerEngine(UNet(UNetConfig(base_channels=2)).eval(), make_meta(), torch.device("cpu"))
    assert engine(torch.zeros(1, 3, 16, 16)).shape == (1, 1, 16, 16)
    with pytest.raises(EngineShapeError, match="input is on meta, the engine runs on cpu"):
        engine(torch.zeros(1, 3, 16, 16, device="meta"))


# ---- 2. the engine inspector's JSON, TensorRT 10 and 11 -----------------------------------------------------
def _layer(name, layer_type, precision_fields, parameter_type=None, metadata=None):
    layer = {"Name": name, "LayerType": layer_type, "Outputs": [precision_fields]}
    if parameter_type:
        layer["ParameterType"] = parameter_type
    if metadata:
        layer["Metadata"] = metadata
    return layer


# A strongly typed FP16 U-Net as TensorRT 10 describes it (DETAILED): the FP32 input and output are cast at
# the boundary; one convolution is cast back to FP32 by the graph (the head).
TRT10 = {"Layers": [
    _layer("Reformatting CopyNode for Input Tensor 0 to /Cast", "Reformat",
           {"Format/Datatype": "Row major linear FP32"}, "Reformat"),
    _layer("/Cast", "Cast", {"Format/Datatype": "Row major linear FP16 format"}),
    _layer("/inc/inc.0/Conv + /inc/inc.2/Relu", "CaskConvolution",
           {"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}, "Convolution"),
    _layer("/ups.0/up/ConvTranspose", "CaskDeconvolution", {"Format/Datatype": "Half"}, "Deconvolution"),
    _layer("/inc/inc.3/Conv", "CaskConvolution", {"Format/Datatype": "Row major linear FP16 format"}),
    _layer("/head/Conv", "CaskConvolution", {"Format/Datatype": "Row major linear FP32"}, "Convolution"),
    _layer("/pool/MaxPool", "CaskPooling", {"Format/Datatype": "Half"}, "Pooling"),
    _layer("Reformatting CopyNode for Output Tensor 0", "Reformat", {"Format/Datatype": "Row major linear FP32"}),
]}  # fmt: skip


def _as_trt11(info):
    """The same engine in TensorRT 11's spelling: 'Format/Datatype' split into 'DataType' and 'Format'."""
    out = json.loads(json.dumps(info))
    names = {"fp16": "Half", "fp32": "Float"}
    for layer in out["Layers"]:
        for tensor in layer["Outputs"]:
            text = tensor.pop("Format/Datatype")
            tensor["DataType"] = names[tensor_precision({"Format/Datatype": text})]
            tensor["Format"] = "Row major linear format (kLINEAR)"  # a format names no type in 11.x
    return out


def test_inspector_json_of_tensorrt_10_and_11_reads_the_same():
    expected = ({"fp16": 3, "fp32": 1}, "convolution layers")
    assert layer_precisions(json.dumps(TRT10)) == expected
    assert layer_precisions(_as_trt11(TRT10)) == expected
    assert layer_precisions(_as_trt11(TRT10)["Layers"]) == expected  # a bare list of layers too
    assert tensor_precision({"DataType": "Half", "Format": "Row major linear FP32 format (kLINEAR)"}) == "fp16"
    assert tensor_precision({"Datatype": "BFloat16"}) == "bf16"  # the spelling of NVIDIA's 11.x tooling
    assert tensor_precision({"Format": "Row major linear FP16 format"}) == "fp16"
    assert tensor_precision({"Format/Datatype": "N/A due to dynamic shapes"}) == "unknown"


def test_myelin_fused_convolutions_count_and_io_casts_do_not():
    """TensorRT 10 fuses whole subgraphs into Myelin kernels (LayerType kgen) whose names are mangled; the
    ONNX nodes they came from are in Metadata. The FP32 casts at the boundary are left out."""
    fused = {"Layers": [
        _layer("__myl_Cast_myl0_0", "kgen", {"Format/Datatype": "Float"}),
        _layer("__myl_ConvRelu_myl0_1", "kgen", {"Format/Datatype": "Half"},
               metadata="[ONNX Layer: /inc/inc.0/Conv][ONNX Layer: /inc/inc.2/Relu]"),
        _layer("__myl_MaxConv_myl0_2", "kgen", {"Format/Datatype": "Half"}),
        _layer("_gemm_mha_v2_myl0_3", "kgen", {"Format/Datatype": "Half"},
               metadata="[ONNX Layer: /downs.0/downs.0.0/Conv]"),
        _layer("__myl_Cast_myl0_4", "kgen", {"Format/Datatype": "Float"}, metadata="[ONNX Layer: /Cast_1]"),
        _layer("Reformatting CopyNode for Output Tensor 0", "Reformat", {"Format/Datatype": "Row major linear FP32"}),
    ]}  # fmt: skip
    assert layer_precisions(fused) == ({"fp16": 3}, "convolution layers")
    # Without any convolution named anywhere, the compute layers are counted, still without the casts.
    anonymous = {"Layers": [_layer("__myl_A", "kgen", {"DataType": "Half"}),
                            _layer("/Cast", "Cast", {"DataType": "Float"}),
                            _layer("__myl_Broadcast", "kgen", {"DataType": "Half"})]}  # fmt: skip
    assert layer_precisions(anonymous) == ({"fp16": 2}, "layers")


TREX = Path(__file__).parent / "data" / "trex"


@pytest.mark.parametrize(
    "dump, precision, share",
    [("resnet-fp16", "fp16", 1.0), ("resnet-fp32", "fp16", 0.0), ("resnet-qat", "int8", 1.0),
     ("mobilenet-qat", "int8", 1.0), ("resnet-fp32", "int8", 0.0), ("resnet-fp16", "int8", 0.0)],
)  # fmt: skip
def test_engine_dumps_from_nvidia_are_judged_by_what_they_ran(dump, precision, share):
    """Inspector JSON of real engines (NVIDIA's trt-engine-explorer examples, A100, TensorRT 10): FP16 is read
    from the convolutions' outputs and INT8 from their inputs. Read from the outputs, the QAT ResNet, whose 21
    convolutions all read INT8, would look 38 % INT8 and be refused."""
    info = json.loads((TREX / f"{dump}.json").read_text())
    counts, what = layer_precisions(info, SHARE_SIDE[precision])
    assert what == "convolution layers"
    assert precision_share(counts, precision)[0] == pytest.approx(share)
    assert (precision_share(counts, precision)[1] is None) == (share >= MIN_SHARE[precision])
    if dump == "resnet-qat":
        assert precision_share(layer_precisions(info, "Outputs")[0], "int8")[0] == pytest.approx(8 / 21)


# ---- 3. ONNX Runtime's CUDA provider: decided from the session --------------------------------------------
def test_cuda_fallback_is_decided_from_the_session():
    assert cuda_fallback_reason(False, ["CPUExecutionProvider"], None) is None
    assert "not installed" in cuda_fallback_reason(True, ["CPUExecutionProvider"], None)
    gpu_build = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert cuda_fallback_reason(True, gpu_build, None) is None  # worth trying
    assert cuda_fallback_reason(True, gpu_build, gpu_build) is None
    failed = cuda_fallback_reason(True, gpu_build, ["CPUExecutionProvider"])  # what ORT does when CUDA won't load
    assert "could not create its CUDA provider" in failed and "PyTorch uses CUDA" not in failed
    failed = cuda_fallback_reason(True, gpu_build, ["CPUExecutionProvider"], torch_cuda="12.8")
    assert "this PyTorch uses CUDA 12.8, and onnxruntime-gpu must be built for the same major" in failed
    raised = cuda_fallback_reason(True, gpu_build, ["CPUExecutionProvider"], "CUDA failure 100: no CUDA-capable device")
    assert raised == "onnxruntime-gpu's CUDA provider failed: CUDA failure 100: no CUDA-capable device"


def test_onnx_runtime_errors_become_one_line_or_out_of_memory():
    message = "Error in execution: Failed to allocate memory for requested buffer of size 1073741824\n  at"
    oom = run_error("onnx fp16", RuntimeError(message))
    assert isinstance(oom, torch.cuda.OutOfMemoryError) and "\n" not in str(oom)
    other = run_error("onnx fp16", RuntimeError("\n[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Conv failed\nstack"))
    assert isinstance(other, EngineUnavailable)
    assert str(other) == "onnx fp16: ONNX Runtime failed: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Conv failed"


def test_cuda_provider_options_put_ort_on_our_stream():
    options = cuda_provider_options(1, 94_000_000)
    assert options == {"device_id": "1", "user_compute_stream": "94000000", "use_tf32": "1"}
    assert cuda_provider_options(0, 7, tf32=False)["use_tf32"] == "0"  # export's FP32 verification
    with pytest.raises(ValueError, match="non-default CUDA stream"):
        cuda_provider_options(0, 0)  # 0 would silently switch the option off


def test_both_onnxruntime_packages_is_a_warning():
    assert conflicting_runtimes({"onnxruntime"}) is None and conflicting_runtimes({"onnxruntime-gpu"}) is None
    assert "overwrite each other" in conflicting_runtimes({"onnxruntime", "onnxruntime-gpu"})


def test_gpu_extra_never_installs_both_onnxruntime_packages():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def runtimes(requirements):
        names = {re.split(r"[<>=\[ ]", q)[0] for q in requirements}
        return names & {"onnxruntime", "onnxruntime-gpu"}

    assert runtimes(project["dependencies"]) == set()
    extras = project["optional-dependencies"]
    assert runtimes(extras["cpu"]) == {"onnxruntime"} and runtimes(extras["gpu"]) == {"onnxruntime-gpu"}
    assert all(len(runtimes(reqs)) <= 1 for reqs in extras.values())
    assert runtimes(extras["dev"]) == set()  # so `.[dev,gpu]` is a valid GPU development install


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu is here")
def test_onnx_engine_asked_for_cuda_without_its_provider_runs_on_the_cpu_and_says_why(exported_checkpoint, caplog):
    engine = OnnxEngine(exported_checkpoint[0] / "best.onnx", torch.device("cuda", 0))
    assert engine.device == torch.device("cpu") and engine.stream is None
    assert "onnxruntime-gpu is not installed" in engine.detail
    assert any("onnx engine runs on the CPU" in r.getMessage() for r in caplog.records)
    assert engine(torch.zeros(1, 3, 32, 48)).shape == (1, 1, 32, 48)


# ---- 4. export verifies engines on CUDA, or builds none -----------------------------------------------------
def test_engine_device_rule():
    assert engine_skip_reason(torch.device("cuda", 0), None) is None
    cpu = engine_skip_reason(torch.device("cpu"), None)
    assert cpu.startswith("--device cpu:") and "built and verified on a CUDA GPU" in cpu
    assert engine_skip_reason(torch.device("cpu"), "TensorRT is not installed") == "TensorRT is not installed"


# ---- 6. nvJPEG decodes a batch per call where torchvision can -----------------------------------------------
@pytest.mark.parametrize(
    "version, batched", [("0.19.1", False), ("0.20.0", True), ("0.26.0+cu130", True), ("1.0", True), ("x", False)]
)
def test_batched_gpu_decoding_follows_the_torchvision_version(version, batched):
    assert batched_decode_supported(version) is batched


def test_decoding_silences_only_the_torchcodec_notice():
    """The decoder's filter is process-wide while it is in place: other threads' warnings must still show."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with torchcodec_notice_silenced():
            for message, category in [("The CUDA decode_jpeg path is deprecated; use TorchCodec", UserWarning),
                                      ("torchcodec will replace this", FutureWarning),
                                      ("a warning from a writer thread", UserWarning)]:  # fmt: skip
                warnings.warn(message, category, stacklevel=1)
        warnings.warn("TorchCodec, after the decode", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a warning from a writer thread", "TorchCodec, after the decode"]


# ---- 7. a TensorRT profile too small for one image fails that image only -----------------------------------
def _profiled_engine(max_hw):
    """A real eager engine given a TensorRT-like shape range, so the profile rules run on the CPU."""
    torch.manual_seed(0)
    engine = EagerEngine(UNet(UNetConfig(base_channels=2)).eval(), make_meta(scale=1.0), torch.device("cpu"))
    engine.shapes = ShapeRange((1, 3, 16, 16), (2, 3, *max_hw), (2, 3, *max_hw))
    return engine


def test_an_image_outside_the_profile_fails_alone(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (48, 64), "big.png": (96, 128), "c.png": (40, 40)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    out = tmp_path / "out"
    pipeline = Pipeline(_profiled_engine((64, 64)), InferSettings(batch=2, workers=1), OutputOptions(progress=False))
    summary = pipeline.run(discover(folder, out))
    assert summary.written == 2 and [Path(f).name for f, _ in summary.failures] == ["big.png"]
    assert "accepts batch 1..2, height 16..64, width 16..64" in summary.failures[0][1]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]


def test_a_batch_beyond_the_profile_is_refused_before_any_work():
    with pytest.raises(EngineShapeError, match=r"--batch 8: .* use --batch 2 or re-export with --batch 1:8:8"):
        Pipeline(_profiled_engine((64, 64)), InferSettings(batch=8), OutputOptions())


# ---- a second audit (torch, torchvision and TensorRT sources) ----------------------------------------------
@pytest.mark.parametrize("capability, native", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_only_on_gpus_that_compute_it(capability, native):
    """torch.cuda.is_bf16_supported() says True on a T4 or V100 too (it counts emulation): training would
    autocast to a slow emulated bf16 there and switch off the fp16 GradScaler."""
    assert bf16_native_capability(capability) is native


def test_resume_restores_the_gpu_states_this_process_has():
    saved = [torch.full((4,), i, dtype=torch.uint8) for i in range(8)]  # saved with 8 GPUs visible
    assert [int(t[0]) for t in visible_rng_states(saved, 1)] == [0]
    assert len(visible_rng_states(saved, 8)) == 8 and len(visible_rng_states(saved[:2], 4)) == 2


def test_training_turns_on_cudnn_benchmark_and_nothing_else():
    tf32, benchmark = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = False, False
        with algorithm_choice(deterministic=False):
            assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.allow_tf32  # the user's choice stays
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = tf32, benchmark


def test_compile_says_once_when_new_shapes_stop_compiling():
    limit = recompile_limit()
    assert limit >= 1
    assert shapes_warning(limit, limit) is None and shapes_warning(limit + 2, limit) is None
    assert "--tile" in shapes_warning(limit + 1, limit) and f"limit of {limit}" in shapes_warning(limit + 1, limit)


def test_trt_runs_only_the_precisions_export_builds(exported_checkpoint):
    with pytest.raises(EngineUnavailable, match=r"trt runs the engines unet-export builds \(fp16, int8\), not fp32"):
        create_engine("trt", checkpoint=exported_checkpoint[0] / "best.pth", device="cpu", precision="fp32")


class _Broken(EagerEngine):
    """An engine whose backend fails on its first call, as Inductor does without a C compiler."""

    def run(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("backend 'inductor' raised:\nCalledProcessError: gcc not found\n(and a page more)")


def test_an_engine_that_fails_fails_its_rows_not_the_benchmark():
    from unetkit.bench.runner import EngineSpec, agreement_input, bench_engine
    from unetkit.bench.timing import TimingPlan

    meta = make_meta()
    engine = _Broken(UNet(UNetConfig(base_channels=4)), meta, torch.device("cpu"))
    car, _ = agreement_input(meta, (64, 96), torch.device("cpu"), [])
    rows, labels = bench_engine(EngineSpec("compile", "fp32"), lambda spec: engine, [1, 2], (64, 96), TimingPlan(),
                                None, car, torch.device("cpu"))  # fmt: skip
    assert labels is None and [r.status for r in rows] == ["failed", "failed"]
    assert rows[0].reason == "RuntimeError: backend 'inductor' raised:"
    assert engine.closed


# ---- make gpu-check ----------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: gpu-check would run")
def test_gpu_check_refuses_a_machine_without_cuda_in_one_line(tmp_path):
    proc = subprocess.run(
        ["make", "-s", "gpu-check", f"GPU_PYTHON={sys.executable}", f"GPU_CHECK_OUT={tmp_path / 'out'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("make")]
    assert len(lines) == 1 and re.match(r"gpu-check: error: no CUDA GPU is visible to PyTorch", lines[0]), lines
    assert not (tmp_path / "out").exists()


# ---- on a CUDA GPU ------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["torch", "compile", "onnx"])
def test_cuda_engines_take_tensors_from_bare_cuda(exported_checkpoint, name):
    engine = create_engine(name, checkpoint=exported_checkpoint[0] / "best.pth", device="cuda")
    if name == "onnx" and engine.device.type != "cuda":
        pytest.skip(f"onnx engine is on the CPU here: {engine.detail}")
    assert engine.device == torch.device("cuda", torch.cuda.current_device())
    x = torch.randn(2, 3, 64, 96, device="cuda").to(engine.input_dtype)
    assert engine(x).shape == (2, 1, 64, 96)


@pytest.mark.gpu
def test_onnx_on_cuda_orders_work_with_stream_waits(exported_checkpoint):
    engine = OnnxEngine(exported_checkpoint[0] / "best.onnx", resolve_device("cuda"), tf32=False)
    if engine.device.type != "cuda":
        pytest.skip(f"onnx engine is on the CPU here: {engine.detail}")
    assert "TF32 off" in engine.detail
    reference = create_engine("onnx", checkpoint=exported_checkpoint[0] / "best.pth", device="cpu")
    x = torch.randn(2, 3, 64, 96)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # a caller on a stream of its own, as unet-infer's compute stream
        torch.cuda._sleep(200_000_000)  # the input lands late: only a stream wait makes ORT read it complete
        xd = torch.empty(2, 3, 64, 96, device=engine.device).copy_(x.pin_memory(), non_blocking=True)
        out = engine(xd).clone()
    torch.cuda.synchronize()
    assert torch.allclose(out.cpu(), reference(x), atol=1e-3)


@pytest.mark.gpu
def test_export_verifies_on_cuda(tmp_path, trained_checkpoint):
    ckpt = tmp_path / "best.pth"
    ckpt.write_bytes(trained_checkpoint.read_bytes())
    proc = run_cli("unet-export", ckpt, "--device", "cuda", "--no-trt", "--no-progress", check=True)
    assert "wrote 2 verified artifact(s)" in proc.stdout


@pytest.mark.gpu
@needs_torchvision
def test_nvjpeg_batch_equals_one_by_one(tmp_path):
    from unetkit.infer.nvjpeg import GpuJpegDecoder

    rng = np.random.default_rng(0)
    datas = []
    for i, size in enumerate([(64, 96), (80, 80), (33, 47)]):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, quality=90)
        datas.append(path.read_bytes())
    decoder = GpuJpegDecoder(resolve_device("cuda"))
    stream = torch.cuda.current_stream()
    together = decoder.decode(datas, stream)
    alone = [decoder.decode([d], stream)[0] for d in datas]
    assert [tuple(t.shape) for t in together] == [(3, 64, 96), (3, 80, 80), (3, 33, 47)]
    assert all(torch.equal(a, b) for a, b in zip(together, alone, strict=True))
    with pytest.raises(RuntimeError):
        decoder.decode([datas[0], b"\xff\xd8\xff not a jpeg"], stream)  # one bad file fails the call


@pytest.mark.trt
def test_export_with_device_cpu_skips_the_engine_before_building(tmp_path, trained_checkpoint):
    ckpt = tmp_path / "best.pth"
    ckpt.write_bytes(trained_checkpoint.read_bytes())
    proc = run_cli("unet-export", ckpt, "--device", "cpu", "--no-progress", check=True)
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("best.fp16.engine")]
    assert "skipped: --device cpu" in line
    assert not (tmp_path / "best.fp16.engine").exists()
    refused = run_cli("unet-export", ckpt, "--device", "cpu", "--trt", "--no-progress")
    assert refused.returncode == 2 and "--trt: --device cpu" in error_lines(refused)[0]


@pytest.mark.trt
def test_one_tensorrt_logger_per_process():
    from unetkit.infer.engines.trt import trt_logger

    assert trt_logger() is trt_logger()


def test_an_engine_without_an_execution_context_is_one_line_naming_the_remedy():
    """TensorRT returns no context when the profile's activation memory cannot be had on the device."""
    from unetkit.infer.engines.trt import context_failure

    line = context_failure(Path("best.fp16.engine"), torch.device("cuda", 1))
    assert line.startswith("best.fp16.engine: TensorRT could not create an execution context on cuda:1 ")
    assert line.endswith("re-export with a smaller --batch or --shape") and "\n" not in line
