"""unet-export --int8: best.int8.onnx calibrated, built, verified and kept only if it agrees with PyTorch.

Verified like FP16 (mask Dice against eager FP32 on the synthetic car, see verify.py) in ONNX Runtime, which
gates whether the file is kept, and in OpenVINO too where it is installed. OpenVINO's verdict is written
into the file (`runtime_checks`, with the CPU it was checked on): the openvino engine refuses a file that
OpenVINO failed, rather than returning wrong masks (as OpenVINO does with the symmetric scheme on this
project's AVX2 test CPU; see quantize.py and docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

from unetkit.core.cpu import cpu_capabilities
from unetkit.core.meta import ModelMeta
from unetkit.infer.artifacts import METADATA_PREFIX
from unetkit.infer.engines.openvino import openvino_missing
from unetkit.infer.engines.ort import OnnxEngine

from .calibration import (
    DEFAULT_COUNT,
    DEFAULT_TILE,
    CalibrationSource,
    calibration_source,
    describe_plan,
    plan,
    samples,
    whole_inputs,
    whole_note,
)
from .produce import Artifact, produce
from .quantize import SCHEMES, quantize_onnx
from .verify import Reference, Verification, sample_inputs, verify


def add_int8_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("INT8 (best.int8.onnx, and best.int8.engine where TensorRT can build it)")
    g.add_argument("--int8", action="store_true", help="also write an INT8 QDQ ONNX calibrated on real images")
    g.add_argument("--calib", type=Path, metavar="DIR", help="calibration images: a folder or a data set root "
                   "(default: the checkpoint's training data if it is here, else synthetic cars); artifacts are "
                   "verified on 4 training images, or on these where the training data is not here")  # fmt: skip
    g.add_argument("--calib-count", type=int, default=DEFAULT_COUNT, metavar="N", help="calibration samples "
                   f"(default {DEFAULT_COUNT})")  # fmt: skip
    g.add_argument("--calib-tile", type=int, default=DEFAULT_TILE, metavar="T", help="calibrate on one TxT tile of "
                   f"each image's model input (default {DEFAULT_TILE}); 0 for whole images")  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="which images and tiles calibrate, and which "
                   "images verify (default 0)")  # fmt: skip
    g.add_argument("--int8-scheme", choices=SCHEMES, default="symmetric", help="symmetric (default): one file for "
                   "ONNX Runtime, OpenVINO and TensorRT; cpu: unsigned activations, faster on CPUs without AMX, "
                   "no TensorRT engine")  # fmt: skip


def int8_source(args: argparse.Namespace, meta: ModelMeta) -> CalibrationSource | None:
    """The calibration images, found before any work (a bad --calib fails first); None without --int8."""
    if not args.int8:
        return None
    source = calibration_source(args.calib, meta)
    plan(source, args.calib_count, args.calib_tile, args.seed)  # bad counts and tiles fail here too
    return source


def calibration_line(args: argparse.Namespace, source: CalibrationSource, meta: ModelMeta) -> str:
    """What the INT8 file is calibrated on, said before the calibration's progress bar."""
    what = f"{args.calib_tile}px tiles" if args.calib_tile else "whole images"
    fits = whole_inputs(source, meta, plan(source, args.calib_count, args.calib_tile, args.seed), args.calib_tile)
    return (f"INT8 calibration: {args.calib_count} samples ({what}, seed {args.seed}) from {source.description}"
            f"{whole_note(fits, args.calib_count, args.calib_tile)}")  # fmt: skip


def int8_check(
    reference: Reference, meta: ModelMeta, device: torch.device, notes: list[str]
) -> Callable[[Path], Verification]:
    """Verification of an INT8 file in every runtime here that runs it: ONNX Runtime gates it; OpenVINO's
    verdict (if installed) is recorded in the file, and a failure is added to `notes`."""
    inputs = sample_inputs(meta, images=reference.images)

    def check(tmp: Path) -> Verification:
        with OnnxEngine(tmp, device, tf32=False) as engine:
            result = verify(engine, reference, inputs, exact=False, int8=True, runtime="onnxruntime")
        checks: dict[str, object] = {"cpu": cpu_capabilities().name, "onnxruntime": _verdict(result)}
        if openvino_missing() is None:
            from unetkit.infer.engines.openvino import OpenVinoEngine

            with OpenVinoEngine(tmp, torch.device("cpu"), "fp32", verify_only=True) as ov_engine:
                ov = verify(ov_engine, reference, inputs, exact=False, int8=True, runtime="openvino")
            checks["openvino"] = _verdict(ov)
            result = result.merged(ov)
            if result.passed and not ov.passed:
                notes.append(f"  OpenVINO FAILED it on this CPU (mask agreement {ov.image_dice:.4f}); recorded in the "
                             "file, so the openvino engine refuses it (the onnx engine runs it)")  # fmt: skip
        _record(tmp, checks)
        return result

    return check


def _verdict(result: Verification) -> dict[str, object]:
    return {"passed": result.passed, "image_dice": round(result.image_dice, 6), "criterion": result.criterion}


def _record(path: Path, checks: dict[str, object]) -> None:
    """Add the per-runtime verdicts to the file's unetkit metadata (before it is renamed into place)."""
    import onnx

    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    props[METADATA_PREFIX + "runtime_checks"] = json.dumps(checks, sort_keys=True)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))


def produce_int8(
    args: argparse.Namespace,
    fp32_onnx: Path,
    out: Path,
    source: CalibrationSource,
    meta: ModelMeta,
    reference: Reference | None,
    device: torch.device,
    notes: list[str],
) -> Artifact:
    """Calibrate and quantize `fp32_onnx` into `out` through produce()'s build -> verify -> rename; lines the
    user must read (a runtime that failed the file) are appended to `notes`."""
    items = plan(source, args.calib_count, args.calib_tile, args.seed)
    calibration = describe_plan(source, args.calib_count, args.calib_tile, args.seed)

    def build(tmp: Path) -> None:
        inputs = samples(source, meta, items, args.calib_tile, args.seed)
        quantize_onnx(fp32_onnx, tmp, inputs, len(items), meta, args.int8_scheme, calibration, args.progress)

    check = int8_check(reference, meta, device, notes) if reference is not None else None
    return produce(out, "int8", build, check)
