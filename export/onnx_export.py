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


#: Default opsets: the dynamo exporter's own, and the newest TorchScript opset that every TensorRT 10 parses.
DEFAULT_OPSET = {"dynamo": 18, "torchscript": 17}


def opset_range(exporter: str) -> tuple[int, int]:
    """The opsets `exporter` really writes with this torch. The dynamo exporter builds opset 18 and newer; asked
    for an older one it tries ONNX's version converter and writes 18 when that fails (it does for this model),
    without an error. TorchScript needs opset 11 for the model's size-dependent padding and has symbolic
    functions up to torch's TorchScript maximum."""
    from torch.onnx import _constants  # torch's own limits; private, so read with fallbacks

    newest = int(getattr(_constants, "ONNX_MAX_OPSET", 20))
    if exporter == "dynamo":
        return 18, newest
    return 11, int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", newest))


def resolve_exporter(name: str, opset: int | None = None) -> str:
    """'auto' follows torch's own default (the dynamo exporter from 2.9, TorchScript before), and takes
    TorchScript for an opset below the dynamo exporter's range. An opset the exporter cannot write is refused
    in one line naming what it can."""
    if name not in EXPORTERS:
        raise UnetkitError(f"--exporter '{name}': choose one of {', '.join(EXPORTERS)}")
    exporter = name
    if name == "auto":
        dynamo = TORCH_VERSION >= (2, 9) and (opset is None or opset >= opset_range("dynamo")[0])
        exporter = "dynamo" if dynamo else "torchscript"
    if opset is not None:
        lo, hi = opset_range(exporter)
        if not lo <= opset <= hi:
            other = "torchscript" if exporter == "dynamo" else "dynamo"
            olo, ohi = opset_range(other)
            raise UnetkitError(f"--opset {opset}: the {exporter} exporter of torch {torch.__version__} writes opsets "
                               f"{lo} to {hi} (the {other} exporter: {olo} to {ohi})")  # fmt: skip
    return exporter


def written_opset(proto: Any) -> int:
    """The default-domain opset of an ONNX model."""
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _export_kwargs(exporter: str, opset: int | None) -> dict[str, Any]:
    if exporter == "dynamo":
        return {
            "dynamo": True,
            "external_data": False,
            "verbose": False,
            "dynamic_shapes": {"x": {0: "batch", 2: "height", 3: "width"}},
            "opset_version": opset or DEFAULT_OPSET["dynamo"],
        }
    axes = {0: "batch", 2: "height", 3: "width"}
    kwargs: dict[str, Any] = {
        "dynamic_axes": {INPUT_NAME: axes, OUTPUT_NAME: axes},
        "opset_version": opset or DEFAULT_OPSET["torchscript"],
    }
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
    """Write the ONNX graph of `model` to `path` (not atomically: callers write to a temp path first); the
    opset written is the one asked for, or an error."""
    import onnx

    exporter = resolve_exporter(exporter, opset)
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
    name_output_dims(proto)
    written = written_opset(proto)
    if opset is not None and written != opset:
        raise ExportError(f"torch.onnx ({exporter}) wrote opset {written} when asked for {opset}")
    props = encode_metadata(
        meta, precision="fp16" if fp16 else "fp32", input=INPUT_DOC, output=OUTPUT_DOC, exporter=exporter,
        opset=written,
    )  # fmt: skip
    save_checked(proto, path, props, "the export")
    return path


def name_output_dims(proto: Any) -> None:
    """Name the logits' dynamic dims as the image's: `batch`, `height`, `width`. The network crops its output
    back to its input's size, but the dynamo exporter names those dims by the symbolic expression of that crop
    ('Min(height, 16*(...))'), which tools matching dims by name (serving configs, shape checks) cannot tie to
    the input."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for index, name in ((0, "batch"), (2, "height"), (3, "width")):
        if index < len(dims) and not dims[index].dim_value:
            dims[index].dim_param = name


def save_checked(proto: Any, path: Path, props: dict[str, str], what: str) -> None:
    """Write `proto` (an onnx.ModelProto) to `path` with `props` as its only metadata, and have onnx.checker
    read the file back: every ONNX file unetkit writes carries its model description and passes the full
    check."""
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name}: onnx.checker rejected {what} ({str(exc).splitlines()[0]})") from None
