"""Checkpoint -> ONNX (FP32, or FP16 compute), one self-contained file with unetkit's metadata.

Guards against the exporter's known pitfalls: the model is exported from eval() with BatchNorm folded in
FP32 beforehand, from an example batch of 2 (a batch of 1 freezes the batch dimension), with dynamic batch,
height and width, and as a single file (the dynamo exporter writes weights separately unless told not to).
The numbers are then checked against PyTorch by `verify`, never assumed.

FP16 keeps FP32 input and output: the graph casts the input to FP16, computes in FP16 with FP16 weights and
casts the logits back to FP32. Every engine is then fed and read the same way, and TensorRT's strongly
typed networks (the only kind in TensorRT 11) take their FP16 precision from the graph itself.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from unetkit.core import ModelMeta, UNet, fuse_batchnorm
from unetkit.core.errors import UnetkitError
from unetkit.infer.artifacts import encode_metadata

INPUT_NAME, OUTPUT_NAME = "image", "logits"
EXPORTERS = ("auto", "dynamo", "torchscript")
TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
INPUT_DOC = "float32 (N, 3, H, W): RGB resized by `scale`, then (pixel / 255 - mean) / std"
OUTPUT_DOC = "float32 logits (N, n_classes, H, W): binary: sigmoid(logits) > threshold; multi-class: argmax"


class ExportError(UnetkitError):
    """The exporter or a builder failed on a model it should handle."""


class HalfCompute(torch.nn.Module):
    """FP32 in, FP16 compute, FP32 out."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.half()).float()


def resolve_exporter(name: str) -> str:
    """'auto' follows torch's own default: the dynamo exporter from 2.9, TorchScript before."""
    if name not in EXPORTERS:
        raise UnetkitError(f"--exporter '{name}': choose one of {', '.join(EXPORTERS)}")
    if name == "auto":
        return "dynamo" if TORCH_VERSION >= (2, 9) else "torchscript"
    return name


def _export_kwargs(exporter: str, opset: int | None) -> dict[str, Any]:
    if exporter == "dynamo":
        return {
            "dynamo": True,
            "external_data": False,
            "verbose": False,
            "dynamic_shapes": {"x": {0: "batch", 2: "height", 3: "width"}},
            "opset_version": opset or 18,
        }
    axes = {0: "batch", 2: "height", 3: "width"}
    kwargs: dict[str, Any] = {"dynamic_axes": {INPUT_NAME: axes, OUTPUT_NAME: axes}, "opset_version": opset or 17}
    if TORCH_VERSION >= (2, 5):  # the argument exists from 2.5; before, TorchScript is the only exporter
        kwargs["dynamo"] = False
    return kwargs


def export_onnx(
    model: UNet,
    meta: ModelMeta,
    path: str | Path,
    fp16: bool = False,
    exporter: str = "auto",
    opset: int | None = None,
) -> Path:
    """Write the ONNX graph of `model` to `path` (not atomically: callers write to a temp path first)."""
    import onnx

    exporter = resolve_exporter(exporter)
    net: torch.nn.Module = fuse_batchnorm(model).cpu().float()
    if fp16:
        net = HalfCompute(net)
    net.eval()
    # Batch 2 and a size needing padding: nothing in the example can be mistaken for a constant.
    example = torch.randn(2, model.config.in_channels, 72, 104)
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation chatter is not for our users
        try:
            torch.onnx.export(
                net, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                **_export_kwargs(exporter, opset),
            )  # fmt: skip
        except Exception as exc:  # the exporters raise many types; the message is what matters
            raise ExportError(f"torch.onnx ({exporter}) failed: {str(exc).strip().splitlines()[0]}") from None
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    props = encode_metadata(
        meta, precision="fp16" if fp16 else "fp32", input=INPUT_DOC, output=OUTPUT_DOC, exporter=exporter,
        opset=proto.opset_import[0].version,
    )  # fmt: skip
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name}: onnx.checker rejected the export ({str(exc).splitlines()[0]})") from None
    return path
