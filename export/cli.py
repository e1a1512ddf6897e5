"""unet-export: checkpoint -> best.onnx, best.fp16.onnx and best.fp16.engine (with --int8 also best.int8.onnx
and best.int8.engine), each verified before it is kept."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unetkit.core import ModelMeta, UNet, load_checkpoint
from unetkit.core.atomic import remove_stale_temps, write_text_atomic
from unetkit.core.cli import EXIT_FAILURES, EXIT_OK, add_device_argument, add_progress_argument, run_cli
from unetkit.core.device import resolve_device, use_device
from unetkit.core.errors import UnetkitError
from unetkit.core.outputs import FILE, FOLDER, check_outputs
from unetkit.infer.artifacts import artifact_path, sha256_file, sidecar_path
from unetkit.infer.engines import ShapeRange
from unetkit.infer.engines.ort import OnnxEngine, onnxruntime_missing
from unetkit.infer.engines.trt import TrtEngine, gpu_identity

from .calibration import followed_data
from .int8 import add_int8_arguments, calibration_line, int8_source, produce_int8
from .onnx_export import EXPORTERS, export_onnx, opset_range, resolve_exporter
from .produce import Artifact, produce
from .profile import DEFAULT_BATCH, default_shape, make_profile, parse_batch, parse_shape
from .tensorrt_build import BuildSettings, build_engine, default_timing_cache, engine_skip_reason, tensorrt_unavailable
from .triton import Plan, TritonSettings, check_batch_range, check_repository, read_plan, write_repository
from .verify import (
    Reference,
    Verification,
    sample_inputs,
    verification_images,
    verification_line,
    verification_source,
    verify,
)

PROG = "unet-export"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export a checkpoint to ONNX (FP32 and FP16) and, where TensorRT and a GPU are present, an FP16 "
        "TensorRT engine; each is compared with PyTorch and kept only if it agrees.",
    )
    p.add_argument("checkpoint", type=Path, help="a unetkit checkpoint, e.g. runs/carvana/best.pth")
    p.add_argument("--out-dir", type=Path, help="where to write (default: beside the checkpoint)")
    (dlo, dhi), (tlo, thi) = opset_range("dynamo"), opset_range("torchscript")
    p.add_argument("--opset", type=int, help="ONNX opset (default 18 with the dynamo exporter, 17 with TorchScript; "
                   f"with this torch dynamo writes {dlo} to {dhi}, TorchScript {tlo} to {thi})")  # fmt: skip
    p.add_argument("--exporter", choices=EXPORTERS, default="auto", help="torch.onnx exporter (default auto: "
                   "dynamo from torch 2.9, TorchScript before or for an --opset below 18)")  # fmt: skip
    p.add_argument("--no-verify", dest="verify", action="store_false", help="keep artifacts without checking them")
    trt = p.add_mutually_exclusive_group()
    trt.add_argument("--trt", dest="trt", action="store_true", default=None, help="require the TensorRT engine")
    trt.add_argument("--no-trt", dest="trt", action="store_false", help="skip the TensorRT engine")
    p.add_argument("--batch", default=":".join(map(str, DEFAULT_BATCH)), help="TensorRT profile batch, N or "
                   "MIN:OPT:MAX (default 1:8:8)")  # fmt: skip
    p.add_argument("--shape", help="TensorRT profile model-input size, HxW or MIN:OPT:MAX (default: tuned for a "
                   "1918x1280 image at the checkpoint's scale, from 32x32 up to cover unet-infer's tiles)")  # fmt: skip
    p.add_argument("--workspace", type=float, metavar="GIB", help="TensorRT workspace limit in GiB (default: "
                   "TensorRT's, the device memory)")  # fmt: skip
    p.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file, reused across builds (default: "
                   "~/.cache/unetkit/ per TensorRT version and GPU)")  # fmt: skip
    p.add_argument("--triton", type=Path, metavar="REPO", help="also write a Triton Inference Server model repository: "
                   "NAME_onnx (ONNX Runtime) and, where an engine was built, NAME_trt (TensorRT plan)")  # fmt: skip
    p.add_argument("--triton-name", metavar="NAME", help="model name prefix in the repository "
                   "(default unet: unet_onnx, unet_trt)")  # fmt: skip
    p.add_argument("--triton-instances", type=int, metavar="N", help="model instances per GPU "
                   "(default 1)")  # fmt: skip
    p.add_argument("--triton-trt-accelerator", action="store_true", help="the ONNX Runtime model uses TensorRT "
                   "as its GPU execution accelerator, in FP16")  # fmt: skip
    add_device_argument(p, ": where artifacts are verified and a TensorRT engine is built")
    add_progress_argument(p)
    add_int8_arguments(p)
    return p


def _onnx_builder(model: UNet, meta: ModelMeta, fp16: bool, args: argparse.Namespace) -> Callable[[Path], None]:
    def build(tmp: Path) -> None:
        export_onnx(model, meta, tmp, fp16, args.exporter, args.opset)

    return build


def _check_args(args: argparse.Namespace) -> None:
    """Flags that would be ignored or fail only after the ONNX files: one line each, before any work."""
    triton_only = [flag for flag, given in (("--triton-name", args.triton_name is not None),
                   ("--triton-instances", args.triton_instances is not None),
                   ("--triton-trt-accelerator", args.triton_trt_accelerator)) if given]  # fmt: skip
    if triton_only and args.triton is None:
        raise UnetkitError(f"{', '.join(triton_only)}: only used with --triton REPO")
    if args.workspace is not None and not args.workspace > 0:
        raise UnetkitError(f"--workspace {args.workspace:g}: must be a positive number of GiB")


def _export(args: argparse.Namespace) -> int:
    exporter = resolve_exporter(args.exporter, args.opset)  # an opset it cannot write: one line, before any work
    _check_args(args)
    model, meta = load_checkpoint(args.checkpoint)  # bad input fails here, before anything is written
    meta, moved = followed_data(args.checkpoint, meta)
    if moved:
        print(moved, flush=True)
    out_dir = args.out_dir or args.checkpoint.parent
    check_outputs([("--out-dir", out_dir, FOLDER), ("--timing-cache", args.timing_cache, FILE),
                   ("--triton", args.triton, FOLDER)])  # fmt: skip
    for folder, recursive in ((out_dir, False), (args.triton, True)):  # writes SIGKILL cut short (a TRT build)
        stale = remove_stale_temps(folder, recursive=recursive) if folder is not None else 0
        if stale:
            print(f"removed {stale} temporary file(s) that a killed export left in {folder}", flush=True)
    if args.opset is not None and args.exporter == "auto" and exporter != resolve_exporter("auto"):
        print(f"--opset {args.opset}: exporting with the {exporter} exporter, which writes it")
    device = resolve_device(args.device)
    use_device(device)
    missing = onnxruntime_missing() if args.verify or args.int8 else None
    if missing and args.int8:
        raise UnetkitError(f"--int8 calibrates in ONNX Runtime: {missing}")
    if missing:
        raise UnetkitError(f"verification runs the ONNX files in ONNX Runtime: {missing}; or pass --no-verify")
    trt_reason = engine_skip_reason(device, tensorrt_unavailable()) if args.trt is not False else None
    if args.trt and trt_reason:
        raise UnetkitError(f"--trt: {trt_reason}")
    batch = parse_batch(args.batch)
    profile = make_profile(batch, parse_shape(args.shape) if args.shape else default_shape(meta))
    calibration = int8_source(args, meta)  # a bad --calib fails here, before anything is written
    target = out_dir / args.checkpoint.name
    source_sha256 = sha256_file(args.checkpoint)
    triton, existing_plan = None, None
    if args.triton:  # every check that can be made before the export is made here
        name = "unet" if args.triton_name is None else args.triton_name
        instances = 1 if args.triton_instances is None else args.triton_instances
        triton = TritonSettings(args.triton, name, batch[2], instances, args.triton_trt_accelerator)
        if args.trt is not False and not trt_reason:
            check_batch_range(batch, f"--batch {args.batch} for the engine in the Triton repository")
            import tensorrt as trt

            gpu = gpu_identity(device)
            check_repository(triton, source_sha256, gpu["compute_capability"], gpu["gpu"], trt.__version__)
        elif args.trt is None and (engine := built_elsewhere(target, args.checkpoint)) is not None:  # none built here
            existing_plan = read_plan(engine, source_sha256, batch[2])
            ep = existing_plan
            check_repository(triton, source_sha256, ep.compute_capability, ep.gpu, ep.tensorrt_version)
    # Every artifact carries the model's description and where it came from; training details stay behind.
    artifact_meta = dataclasses.replace(meta, extra={
        "model": model.config.to_dict(), "source_checkpoint": args.checkpoint.name,
        "source_sha256": source_sha256, "export_verified": bool(args.verify),
    })  # fmt: skip
    reference = None
    if args.verify:  # judged on the model's own kind of image
        source = verification_source(args.calib, meta)
        reference = Reference(model, meta, verification_images(source, seed=args.seed))
        print(verification_line(source, len(reference.images)), flush=True)
    onnx_inputs = sample_inputs(meta, images=reference.images) if reference else []

    def onnx_check(exact: bool) -> Callable[[Path], Verification] | None:
        if reference is None:
            return None

        def check(tmp: Path) -> Verification:
            with OnnxEngine(tmp, device, tf32=False) as engine:  # compared with PyTorch in full FP32
                return verify(engine, reference, onnx_inputs, exact)

        return check

    results = []
    for fp16, kind in ((False, "onnx"), (True, "onnx-fp16")):
        results.append(
            produce(
                artifact_path(target, kind), "fp16" if fp16 else "fp32",
                _onnx_builder(model, artifact_meta, fp16, args),
                onnx_check(exact=not fp16),
            )
        )  # fmt: skip
        print(results[-1].line(), flush=True)
    if calibration is not None:
        print(calibration_line(args, calibration, artifact_meta), flush=True)
        int8_path = artifact_path(target, "onnx-int8")
        notes: list[str] = []
        if results[0].kept:
            results.append(produce_int8(args, results[0].path, int8_path, calibration, artifact_meta, reference,
                                        device, notes))  # fmt: skip
        else:
            results.append(Artifact(int8_path, "int8", note="skipped: the FP32 ONNX it is built from was not kept"))
        print("\n".join([results[-1].line(), *notes]), flush=True)
    fp16_onnx = results[1]
    engines = _engines(args, target, fp16_onnx, results[-1] if calibration else None, profile, artifact_meta,
                       reference, device, trt_reason)  # fmt: skip
    results += engines
    if triton is not None:
        fp16_engine = next((r for r in engines if r.precision == "fp16"), None)
        _triton(triton, results[0], results[1], fp16_engine, existing_plan, artifact_meta, source_sha256)
    failed = [r.path.name for r in results if not r.kept]
    if failed:
        print(f"not kept: {', '.join(failed)} (see above); the exit code is {EXIT_FAILURES}")
        earlier = [r.path.name for r in results if not r.kept and r.path.exists()]
        if earlier:  # the failed write never touched them; say so, as they are not this checkpoint's
            print(f"  left as they were: {', '.join(earlier)} of an earlier export (unet-infer refuses one exported "
                  "from another checkpoint and warns about one exported with --no-verify; delete them to be "
                  "sure they are not used)")  # fmt: skip
        return EXIT_FAILURES
    print(f"wrote {len(results)} verified artifact(s) to {out_dir}" if args.verify else f"wrote to {out_dir}")
    return EXIT_OK


def _engines(
    args: argparse.Namespace,
    target: Path,
    fp16_onnx: Artifact,
    int8_onnx: Artifact | None,
    profile: ShapeRange,
    meta: ModelMeta,
    reference: Reference | None,
    device: torch.device,
    trt_reason: str | None,
) -> list[Artifact]:
    """The TensorRT engines: FP16 from best.fp16.onnx, and INT8 from best.int8.onnx with --int8."""
    results = []
    sources = [("trt", "fp16", fp16_onnx)] + ([("trt-int8", "int8", int8_onnx)] if int8_onnx else [])
    for kind, precision, source in sources:
        engine_path = artifact_path(target, kind)
        tag = f"{engine_path.name:<22} {precision.upper():<5}"
        if args.trt is False:
            print(f"{tag} skipped (--no-trt)")
        elif trt_reason:
            print(f"{tag} skipped: {trt_reason}")
        elif precision == "int8" and args.int8_scheme != "symmetric":
            print(f"{tag} skipped: --int8-scheme {args.int8_scheme} has zero points TensorRT refuses")
        elif not source.kept:
            what = "FP16" if precision == "fp16" else "INT8"
            results.append(Artifact(engine_path, precision, note=f"skipped: the {what} ONNX it is built from was "
                                    "not kept"))  # fmt: skip
            print(results[-1].line())
        else:
            results.append(_engine(args, source.path, engine_path, profile, meta, reference, device, precision))
            print(results[-1].line())
    return results


def _triton(
    settings: TritonSettings,
    onnx: Artifact,
    onnx_fp16: Artifact,
    built: Artifact | None,
    existing: Plan | None,
    meta: ModelMeta,
    source_sha256: str,
) -> None:
    """The model repository from the artifacts kept: the FP32 ONNX file, and the FP16 engine built now (`built`)
    or before (`existing`)."""
    if not onnx.kept:
        print(f"triton: nothing written to {settings.repo}: {onnx.path.name} was not kept")
        return
    plan = existing
    if built is not None and built.kept:
        plan = read_plan(built.path, source_sha256, settings.max_batch_size)
    elif existing is not None:
        print(f"triton: {existing.path.name} was built before, on {existing.gpu} (compute capability "
              f"{existing.compute_capability}, TensorRT {existing.tensorrt_version}); it goes in as it is")  # fmt: skip
    plan_onnx = onnx_fp16.path if onnx_fp16.kept else onnx.path  # the graph the plan was built from names its I/O
    for line in write_repository(settings, onnx.path, meta, source_sha256, plan, plan_onnx):
        print(f"triton: {line}")
    if plan is None:
        print(f"triton: no TensorRT plan ({settings.plan_model}): no engine was built")


def built_elsewhere(target: Path, checkpoint: Path) -> Path | None:
    """The FP16 engine a GPU machine exported for this checkpoint: in --out-dir, else beside the checkpoint."""
    for where in (target, checkpoint):
        if artifact_path(where, "trt").exists():
            return artifact_path(where, "trt")
    return None


def _engine(
    args: argparse.Namespace,
    onnx_path: Path,
    engine_path: Path,
    profile: ShapeRange,
    meta: ModelMeta,
    reference: Reference | None,
    device: torch.device,
    precision: str = "fp16",
) -> Artifact:
    import tensorrt as trt

    gpu = gpu_identity(device)
    cache = args.timing_cache or default_timing_cache(trt.__version__, gpu["gpu"])
    settings = BuildSettings(profile, args.workspace, cache, progress=args.progress, precision=precision)
    sidecar: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        sidecar.update(build_engine(onnx_path, tmp, settings, meta, device))

    def check(tmp: Path, reference: Reference) -> Verification:
        with TrtEngine(tmp, device, meta=meta, precision=precision) as engine:
            inputs = sample_inputs(meta, engine.shapes, images=reference.images)
            return verify(engine, reference, inputs, exact=False, int8=precision == "int8")

    verified = None if reference is None else functools.partial(check, reference=reference)
    result = produce(engine_path, precision, build, verified)
    if result.kept:
        if result.verification:
            sidecar["verification"] = result.verification.to_dict()
        write_text_atomic(sidecar_path(engine_path), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: _export(args))


if __name__ == "__main__":
    raise SystemExit(main())
