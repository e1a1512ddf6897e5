"""One contract, every engine that can run on this machine (in the spirit of segmentation_models_pytorch's
shared model tester): what it takes and returns, what it refuses, reused buffers, agreement with eager FP32.

An engine that cannot run here must say why in one line (EngineUnavailable), never fail later. INT8 engines
agree with eager FP32 by a looser rule (masks at Dice >= 0.98, mean |dp| <= 0.02): calibrated integers are
not FP32; export's own gate (Dice >= 0.99 on its car image) is tested in test_int8.py."""

import shutil

import numpy as np
import onnx
import pytest
import torch

from conftest import HAS_OPENVINO, run_cli
from unetkit.core.cpu import cpu_capabilities
from unetkit.core.labels import probabilities, to_labels
from unetkit.core.metrics import mask_agreement
from unetkit.core.preprocess import model_input
from unetkit.export.calibration import calibration_source, plan, samples
from unetkit.export.quantize import quantize_onnx
from unetkit.export.tensorrt_build import tensorrt_unavailable
from unetkit.infer.artifacts import decode_metadata
from unetkit.infer.engines import EngineShapeError, EngineUnavailable, create_engine
from unetkit.train.data.synth import random_car, render

CPU = pytest.param("cpu", id="cpu")
CUDA = pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)
SPECS = [
    ("torch", "fp32", {}),
    ("torch", "bf16", {}),
    ("torch", "fp16", {"cuda_only": True}),  # half precision is emulated on a CPU: not offered there
    ("compile", "fp32", {"slow": True}),
    ("compile", "fp16", {"cuda_only": True, "slow": True}),
    ("onnx", "fp32", {}),
    ("onnx", "fp16", {}),
    ("onnx", "int8", {}),
    ("openvino", "fp32", {"cpu_only": True}),
    ("openvino", "bf16", {"cpu_only": True}),  # runs where bf16 is native, else refused in one line
    ("openvino", "int8", {"cpu_only": True, "cpu_scheme": True}),
    ("trt", "fp16", {"cuda_only": True}),
    ("trt", "int8", {"cuda_only": True}),
]


def _params():
    for name, precision, flags in SPECS:
        for device in (CPU, CUDA):
            if flags.get("cuda_only") and device.id == "cpu" and name != "trt":
                continue
            if flags.get("cpu_only") and device.id == "cuda":
                continue
            marks = [*device.marks, *([pytest.mark.slow] if flags.get("slow") else [])]
            if name == "trt" and device.id == "cuda":
                marks.append(pytest.mark.trt)
            yield pytest.param(name, precision, device.values[0], id=f"{name}-{precision}-{device.id}", marks=marks)


@pytest.fixture(scope="module")
def car(exported_checkpoint):
    """A synthetic Carvana-size car as the trained checkpoint's input (uint8 pixels -> model input)."""
    from unetkit.core import load_checkpoint

    _, meta = load_checkpoint(exported_checkpoint[0] / "best.pth")
    rng = np.random.default_rng(3)
    pixels, _ = render(random_car(rng), rng, 1918, 1280)
    return model_input(torch.from_numpy(pixels).permute(2, 0, 1), meta)[None]


@pytest.fixture(scope="module")
def cpu_scheme_checkpoint(exported_checkpoint, calib_images, tmp_path_factory):
    """The checkpoint beside an INT8 file in the `cpu` scheme: the one OpenVINO runs in int8 on every CPU (the
    default symmetric file is refused by the openvino engine where OpenVINO failed it at export)."""
    src, _ = exported_checkpoint
    folder = tmp_path_factory.mktemp("cpu_scheme")
    for name in ("best.pth", "best.onnx"):
        shutil.copy(src / name, folder / name)
    meta = decode_metadata({p.key: p.value for p in onnx.load(str(src / "best.onnx")).metadata_props}, "best.onnx")
    source = calibration_source(calib_images, meta)
    items = plan(source, 8, 0, seed=0)
    quantize_onnx(folder / "best.onnx", folder / "best.int8.onnx", samples(source, meta, items, 0, 0), 8, meta, "cpu",
                  progress=False)  # fmt: skip
    return folder / "best.pth"


@pytest.fixture(scope="module")
def trt_checkpoint(exported_checkpoint, calib_images, tmp_path_factory):
    """The checkpoint beside its FP16 and INT8 TensorRT engines, built and verified on the GPU by the real CLI
    (asked for only where TensorRT and a GPU are present)."""
    folder = tmp_path_factory.mktemp("trt_contract")
    shutil.copy(exported_checkpoint[0] / "best.pth", folder / "best.pth")
    run_cli("unet-export", folder / "best.pth", "--device", "cuda", "--trt", "--int8", "--calib", calib_images,
            "--calib-count", "8", "--calib-tile", "0", "--no-progress", check=True, timeout=1800)  # fmt: skip
    return folder / "best.pth"


@pytest.fixture(scope="module")
def reference(exported_checkpoint, car):
    """Eager FP32 probabilities on the CPU: what every engine is compared with."""
    with create_engine("torch", checkpoint=exported_checkpoint[0] / "best.pth", device="cpu") as engine:
        return probabilities(engine(car)).cpu()


@pytest.mark.parametrize("name, precision, device", list(_params()))
def test_engine_contract(request, exported_checkpoint, car, reference, name, precision, device):
    checkpoint = exported_checkpoint[0] / "best.pth"
    if name == "openvino" and precision == "int8":
        checkpoint = request.getfixturevalue("cpu_scheme_checkpoint")
    if name == "trt" and device == "cuda" and tensorrt_unavailable() is None:
        checkpoint = request.getfixturevalue("trt_checkpoint")
    if name == "openvino" and not HAS_OPENVINO:
        pytest.skip("needs OpenVINO: pip install 'unetkit[openvino]'")
    try:
        engine = create_engine(name, checkpoint=checkpoint, device=device, precision=precision)
    except EngineUnavailable as exc:
        assert "\n" not in str(exc)
        if (name, precision) == ("openvino", "bf16"):  # refused exactly where bf16 is not native
            assert not cpu_capabilities().bf16 and "bf16 is not native on this CPU" in str(exc)
            return
        assert name == "trt", f"{name} {precision} should run on {device}: {exc}"
        assert "CUDA" in str(exc) or "TensorRT" in str(exc)
        return
    with engine:
        if engine.device.type != torch.device(device).type:  # ONNX Runtime without its CUDA provider
            assert name == "onnx" and "CPUExecutionProvider" in engine.detail
            pytest.skip(f"onnx runs on the CPU here: {engine.detail}")
        described = engine.describe()
        assert described["engine"] == name and described["precision"] == precision
        assert described["device"] == str(engine.device) and engine.label == f"{name} {precision}"

        # Takes (N, C, H, W) in its input dtype on its device; returns logits of the same size, same device.
        x = car.to(engine.device, engine.input_dtype)
        out = engine(x)
        assert out.shape == (1, engine.n_classes, *car.shape[-2:]) and out.device == engine.device
        assert out.is_floating_point()
        batch = torch.cat([x, x.flip(-1)])
        assert engine(batch).shape == (2, engine.n_classes, *car.shape[-2:])

        # Refuses what it cannot take, in one line, before running.
        with pytest.raises(EngineShapeError, match=r"expected \(N, 3, H, W\)"):
            engine(torch.zeros(1, 4, 32, 32, device=engine.device, dtype=engine.input_dtype))
        with pytest.raises(EngineShapeError, match="input is on meta"):
            engine(torch.zeros(1, 3, 32, 32, device="meta", dtype=engine.input_dtype))
        if engine.shapes is None:
            assert described["shapes"] is None
        else:  # a TensorRT profile: one beyond its largest batch is refused with the range it accepts
            n = engine.shapes.max[0] + 1
            with pytest.raises(EngineShapeError, match="accepts batch"):
                engine(x.expand(n, -1, -1, -1).contiguous())

        # The result may be a reused buffer, valid until the next call: clones stay right across calls.
        first = engine(x).clone()
        other = engine(x.flip(-1)).clone()
        again = engine(x).clone()
        assert torch.equal(first, again) or (first.float() - again.float()).abs().max() < 1e-3
        assert not torch.equal(first, other)

        # Agrees with eager FP32 on the CPU: within 1e-4 in FP32 (on CUDA 5e-3: cuDNN and ONNX Runtime compute
        # FP32 convolutions in TF32 by default), masks at Dice >= 0.99 in reduced precision.
        prob = probabilities(first).cpu()
        if precision == "fp32" and name != "compile":
            assert (prob - reference).abs().max() <= (1e-4 if engine.device.type == "cpu" else 5e-3)
        elif precision == "int8":
            assert (prob - reference).abs().mean() <= 0.02
        else:
            assert (prob - reference).abs().max() <= 0.05
        threshold = engine.meta.threshold
        labels, ref_labels = to_labels(prob, threshold), to_labels(reference, threshold)
        assert ref_labels.float().mean() > 0.05  # the car is found: agreement is not about empty masks
        assert mask_agreement(labels, ref_labels, engine.n_classes) >= (0.98 if precision == "int8" else 0.99)
    engine.close()  # closing twice is harmless


def test_an_engine_never_runs_another_precision_than_asked(exported_checkpoint):
    """onnx has no bf16 file, and an --model file computes in its own precision: asking for another is one line,
    never an fp32 run under a bf16 label (a benchmark row, a fastest choice). `auto` is each engine's default."""
    folder = exported_checkpoint[0]
    with pytest.raises(
        EngineUnavailable, match=r"onnx runs the files unet-export writes \(fp32, fp16, int8\), not bf16"
    ):
        create_engine("onnx", checkpoint=folder / "best.pth", device="cpu", precision="bf16")
    with pytest.raises(EngineUnavailable, match=r"best\.int8\.onnx: computes in int8, not the fp16 asked for"):
        create_engine("onnx", model=folder / "best.int8.onnx", device="cpu", precision="fp16")
    for name in ("onnx", "torch"):
        with create_engine(name, checkpoint=folder / "best.pth", device="cpu", precision="auto") as engine:
            assert engine.precision == "fp32"  # the CPU's default
    with create_engine("onnx", model=folder / "best.int8.onnx", device="cpu") as engine:
        assert engine.precision == "int8"  # no precision asked: the file's
    if HAS_OPENVINO:
        with pytest.raises(EngineUnavailable, match=r"best\.fp16\.onnx: an fp16 file; openvino runs best\.onnx"):
            create_engine("openvino", model=folder / "best.fp16.onnx", device="cpu")
