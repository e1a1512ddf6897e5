"""FP32 ONNX -> INT8 QDQ ONNX by static calibration (ONNX Runtime's quantizer), for three runtimes at once.

The default scheme, `symmetric`, is the one file ONNX Runtime (CPU), OpenVINO and TensorRT all take:
signed int8 activations and weights, every zero point 0 (TensorRT's ONNX parser accepts nothing else),
per-channel weight scales, biases left in float (TensorRT rejects an int32 DequantizeLinear), and Q/DQ only
on the inputs of Conv, ConvTranspose, MaxPool and Concat, so the logits stay float and TensorRT can fuse
Conv + ReLU + Q (NVIDIA's placement advice for explicit quantization). The first convolution (on the
normalized image, the layer quantization hurts most) and the last (the 1x1 head that writes the logits)
stay in float in both schemes: together they are under 0.5 % of the U-Net's FLOPs.

`cpu` is an explicit, faster CPU-only alternative: unsigned activations with a zero point (ONNX Runtime's
advice for x86), which lets ONNX Runtime fold each ReLU into a zero point and fuse QLinearConv. TensorRT
refuses such a file, and unet-export builds no TensorRT engine from it. On this project's AVX2 test
machine OpenVINO runs every quantized convolution of either file in int8, but computes the symmetric file's
masks wrongly (the convolutions after each Concat take the signed transposed-convolution output, and
OpenVINO's CPU plugin supports signed activations for convolutions only on AMX); unet-export checks every
file in OpenVINO and records the verdict (see int8.py), so the openvino engine refuses it there.

`symmetric` quantizes weights to 7 bits (`reduce_range`): CPUs without VNNI (AVX2) multiply int8 pairs
into 16-bit sums that can saturate, and this is ONNX Runtime's documented remedy; measured on this project's
AVX2 machine it lifted the test model's mask agreement in ONNX Runtime from 0.992 to 0.998. For `cpu` it
made no difference on the trained default U-Net (0.984 and 0.983), so its weights keep all 8 bits.

Calibration: MinMax over the samples (`calibration.py`). ONNX Runtime's Entropy and Percentile methods
keep every activation of every sample in memory, far too much for this U-Net at Carvana's size.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from unetkit.core.errors import UnetkitError
from unetkit.core.meta import ModelMeta
from unetkit.infer.artifacts import encode_metadata

from .onnx_export import INPUT_NAME, ExportError, save_checked

log = logging.getLogger(__name__)
SCHEMES = ("symmetric", "cpu")
#: Operators whose inputs are quantized: every weighted layer and what moves int8 data between them.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MaxPool", "Concat")


def float_convs(model: Any) -> list[str]:
    """Names of the convolutions kept in float: the first and the last Conv of an onnx.ModelProto (its nodes
    are in topological order, so these are the ones on the image and on the logits)."""
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    return sorted({convs[0], convs[-1]}) if convs else []


def quantizer_options(scheme: str) -> dict[str, Any]:
    """quantize_static's arguments for a scheme (QDQ format and per-channel weights in both)."""
    from onnxruntime.quantization import QuantFormat, QuantType

    if scheme not in SCHEMES:
        raise UnetkitError(f"--int8-scheme '{scheme}': choose one of {', '.join(SCHEMES)}")
    symmetric = scheme == "symmetric"
    return {
        "quant_format": QuantFormat.QDQ,
        "per_channel": True,
        "reduce_range": symmetric,
        "activation_type": QuantType.QInt8 if symmetric else QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "op_types_to_quantize": list(QUANTIZED_OPS),
        "extra_options": {"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": not symmetric},
    }


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol (get_next() -> {input: array} or None) over a sample
    iterator, with a progress bar."""

    def __init__(self, inputs: Iterator[np.ndarray], count: int, progress: bool) -> None:
        self.inputs = inputs
        self.used = 0  # samples handed to the calibrator (fewer than planned where a file failed to decode)
        self.bar = tqdm(total=count, desc="INT8 calibration", unit="sample", disable=not progress, leave=False)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.inputs, None)
        if x is None:
            self.bar.close()
            return None
        self.used += 1
        self.bar.update()
        return {INPUT_NAME: x}


def quantize_onnx(
    fp32_onnx: Path,
    out: Path,
    inputs: Iterator[np.ndarray],
    count: int,
    meta: ModelMeta,
    scheme: str = "symmetric",
    calibration: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Write the INT8 QDQ model of `fp32_onnx` to `out`, calibrated on `inputs` (`count` of them), with
    unetkit's metadata (precision int8, the scheme, how it was calibrated)."""
    import onnx
    from onnxruntime.quantization import quant_pre_process, quantize_static

    options = quantizer_options(scheme)
    with tempfile.TemporaryDirectory(prefix="unetkit-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # ONNX shape inference and ORT's graph optimizations; symbolic shape inference cannot follow the
        # model's pad-to-16 arithmetic on dynamic sizes, and is not needed for a static QDQ model.
        with _quiet():
            quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
            options["nodes_to_exclude"] = float_convs(onnx.load(str(prepared)))
            reader = _Reader(inputs, count, progress)
            try:
                quantize_static(str(prepared), str(out), reader, **options)
            except Exception as exc:  # the quantizer raises bare RuntimeError/ValueError on bad data
                why = "no calibration sample could be decoded" if reader.used == 0 else str(exc).strip().splitlines()[0]
                raise ExportError(f"{out.name}: INT8 quantization failed ({why})") from None
    proto = onnx.load(str(out))
    recorded = {**(calibration or {}), "count": reader.used}  # the samples used, not those planned
    props = encode_metadata(meta, precision="int8", int8_scheme=scheme, calibration=recorded)
    save_checked(proto, out, props, "the INT8 model")
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer logs each step at INFO and warns about its own pre-processing advice; keep errors."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def qdq_problems_for_tensorrt(model: Any) -> list[str]:
    """Why TensorRT's ONNX parser would refuse a QDQ model (an onnx.ModelProto), or an empty list: TensorRT
    takes int8 Q/DQ with every zero point 0 and dequantizes no int32 (bias) tensor."""
    from onnx import TensorProto, numpy_helper

    init = {t.name: t for t in model.graph.initializer}
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        data = init.get(node.input[0])
        if node.op_type == "DequantizeLinear" and data is not None and data.data_type == TensorProto.INT32:
            problems.append(f"{node.name}: int32 DequantizeLinear (a quantized bias; TensorRT takes int8 only)")
        zero = init.get(node.input[2]) if len(node.input) > 2 else None
        if zero is None:
            continue
        if zero.data_type != TensorProto.INT8:
            kind = TensorProto.DataType.Name(zero.data_type).lower()
            problems.append(f"{node.name}: {kind} zero point (TensorRT takes int8 only)")
        elif numpy_helper.to_array(zero).any():
            problems.append(f"{node.name}: nonzero zero point (TensorRT quantizes symmetrically only)")
    return problems
