"""unet-bench: how fast, against what — every engine vs PyTorch eager FP32, the target and the hardware."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import tempfile
from pathlib import Path

import torch

from unetkit.core import ModelMeta, UNet, UNetConfig, read_checkpoint, save_checkpoint
from unetkit.core.checkpoint import DEFAULT_CHECKPOINT
from unetkit.core.cli import EXIT_FAILURES, EXIT_OK, add_device_argument, add_workers_argument, parse_pair, run_cli
from unetkit.core.cpu import CpuCapabilities, cpu_capabilities
from unetkit.core.device import resolve_device, use_device
from unetkit.core.errors import UnetkitError
from unetkit.core.meta import RECIPE_SCALE
from unetkit.core.outputs import FILE, check_outputs
from unetkit.core.preprocess import input_size
from unetkit.core.sources import training_images
from unetkit.infer.engines import DTYPES
from unetkit.infer.engines.compiled import COMPILE_MODES
from unetkit.infer.io import discover

from .e2e import bench_e2e, survey, synthetic_jpegs
from .env import environment
from .flops import counted_flops
from .report import Report, render_text, write_json, write_markdown, write_plot
from .runner import (
    ALL_SPECS,
    BASELINE,
    EngineSpec,
    Row,
    agreement_input,
    agreement_measure,
    bench_engine,
    default_skip,
    engine_factory,
    finish_rows,
)
from .selfexport import export_random, needs_artifacts
from .timing import TimingPlan, matmul_peak_tflops

PROG = "unet-bench"
log = logging.getLogger("unetkit.bench")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Latency of every engine on 1918x1280 images against PyTorch eager FP32, a per-image target "
        "and the hardware's measured matmul peak; model-only and end-to-end.",
        epilog="examples:\n  unet-bench                                  # best.pth here, or a random-weight U-Net\n"
        "  unet-bench --checkpoint runs/x/best.pth --json bench.json --markdown bench.md --plot bench.png\n"
        "  unet-bench --device cpu --shape 256x384 --scope model --check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, help="checkpoint (default best.pth if it exists, else the default "
                   "U-Net with random weights); its exported artifacts are benchmarked too")  # fmt: skip
    add_device_argument(p)
    p.add_argument("--shape", default="1280x1918", help="image HxW (default 1280x1918, Carvana's); the model "
                   "input is this resized by the checkpoint's rule")  # fmt: skip
    p.add_argument("--batch", default="1,8", help="batch sizes, comma-separated (default 1,8)")
    p.add_argument("--engines", help="ENGINE:PRECISION list instead of the defaults, e.g. torch:fp32,trt:fp16")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, help="torch.compile mode for compile rows")
    p.add_argument("--base-channels", type=int, help="width of the random-weight U-Net, when there is no checkpoint "
                   f"(default {DEFAULT_BASE})")  # fmt: skip
    p.add_argument("--scope", choices=("model", "e2e", "both"), default="both", help="default both")
    p.add_argument("--images", type=Path, help="folder of images: the e2e scope runs on them (default: synthetic "
                   "JPEGs), and the first that decodes is the mask-agreement image (default: the checkpoint's "
                   "first training image, else a synthetic car)")  # fmt: skip
    p.add_argument("--e2e-images", type=int, help="synthetic images for e2e (default 200 on CUDA, 8 on the CPU)")
    add_workers_argument(p, "end-to-end decoding and writing threads")
    p.add_argument("--target-ms", type=float, default=150.0, help="per-image latency target (default 150)")
    p.add_argument("--check", action="store_true", help="exit 1 when the fastest engine misses the target")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--min-iters", type=int, default=20, help="at least this many timed calls (default 20)")
    p.add_argument("--min-time", type=float, default=2.0, help="at least this many seconds of timed calls (default 2)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON (stable keys)")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="write the report as Markdown")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="plot latency per engine and batch size")
    return p


def _hw(text: str) -> tuple[int, int]:
    try:
        return parse_pair(text)
    except ValueError:
        raise UnetkitError(f"--shape '{text}': expected positive HxW, e.g. 1280x1918") from None


def _batches(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise UnetkitError(f"--batch '{text}': expected sizes like 1,8") from None
    if not values or values[0] < 1:
        raise UnetkitError(f"--batch '{text}': sizes must be at least 1")
    return values


#: Width of the random-weight U-Net benchmarked without a checkpoint: the default U-Net's.
DEFAULT_BASE = UNetConfig().base_channels


def _checkpoint(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    """The checkpoint to benchmark and how to describe it; a random-weight U-Net when there is none."""
    chosen = args.checkpoint or (DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.exists() else None)
    if chosen is not None and args.base_channels is not None:
        raise UnetkitError(f"--base-channels sizes the random-weight U-Net; {chosen} has its own width: leave it out")
    if args.checkpoint is not None:
        read_checkpoint(args.checkpoint)  # a missing or bad file fails here with its one line
        return args.checkpoint, str(args.checkpoint)
    if DEFAULT_CHECKPOINT.exists():
        return DEFAULT_CHECKPOINT, str(DEFAULT_CHECKPOINT)
    base = args.base_channels or DEFAULT_BASE
    torch.manual_seed(0)
    config = UNetConfig(base_channels=base)
    meta = ModelMeta(n_classes=1, scale=RECIPE_SCALE, class_names=("foreground",))  # as unet-train makes it
    path = scratch / "random.pth"
    save_checkpoint(path, UNet(config).eval(), meta)
    log.info("no best.pth here: benchmarking the default U-Net (base %d) with random weights, at unet-train's "
             "default input scale %g", base, RECIPE_SCALE)  # fmt: skip
    return path, f"default U-Net (base {base}), random weights, scale {RECIPE_SCALE:g}"


def _specs(args: argparse.Namespace, device: torch.device) -> list[tuple[EngineSpec, str | None]]:
    if args.engines:
        specs = [EngineSpec.parse(t.strip()) for t in args.engines.split(",") if t.strip()]
        if BASELINE not in specs:
            specs.insert(0, BASELINE)  # every speedup is measured against it in the same run
        return [(s, None) for s in specs]
    return [(s, default_skip(s, device)) for s in ALL_SPECS]


def peak_probed(precision: str, device: torch.device, cpu: CpuCapabilities | None = None) -> bool:
    """Whether a matmul peak in `precision` is measured: always on CUDA; on a CPU FP32, and BF16 or FP16 only
    where the CPU executes them natively (AMX, AVX512-BF16/FP16): emulated, a probe would give a share of an
    emulation's rate."""
    if device.type == "cuda" or precision == "fp32":
        return True
    caps = cpu or cpu_capabilities()
    return {"bf16": caps.bf16, "fp16": caps.fp16}.get(precision, False)


def _check_args(args: argparse.Namespace) -> None:
    """Values that would be ignored, replaced or fail only after the benchmark: one line each, before any work."""
    e2e = args.scope in ("e2e", "both")
    for ok, message in (
        (args.e2e_images is None or args.e2e_images >= 1, f"--e2e-images {args.e2e_images}: must be at least 1"),
        (args.e2e_images is None or e2e, f"--e2e-images: only used by --scope e2e or both, not {args.scope}"),
        (args.e2e_images is None or args.images is None, "--e2e-images: synthetic images are not made when "
         "--images names a folder; give one of the two"),
        (args.scope != "e2e" or not args.check, "--check judges the model-only rows against --target-ms: not with "
         "--scope e2e"),
        (args.scope != "e2e" or args.plot is None, "--plot draws the model-only latencies: not with --scope e2e"),
        (args.engines is None or any(t.strip() for t in args.engines.split(",")), "--engines '': name at least one "
         "ENGINE:PRECISION, or leave the flag out for every engine"),
        (args.target_ms > 0, f"--target-ms {args.target_ms:g}: must be positive"),
        (args.base_channels is None or args.base_channels >= 1, f"--base-channels {args.base_channels}: must be at "
         "least 1"),
        (args.workers >= 1, f"--workers {args.workers}: must be at least 1"),
        (args.plot is None or importlib.util.find_spec("matplotlib") is not None,
         "--plot needs matplotlib: pip install 'unetkit[plot]'"),
    ):  # fmt: skip
        if not ok:
            raise UnetkitError(message)
    check_outputs([("--json", args.json, FILE), ("--markdown", args.markdown, FILE), ("--plot", args.plot, FILE)])


def _bench(args: argparse.Namespace) -> int:
    _check_args(args)
    device = resolve_device(args.device)
    use_device(device)
    image_hw, batches = _hw(args.shape), _batches(args.batch)
    plan = TimingPlan(warmup=args.warmup, min_iters=args.min_iters, min_time=args.min_time)
    with tempfile.TemporaryDirectory(prefix="unet-bench-") as scratch:
        if args.images is not None:
            discover(args.images, Path(scratch) / "unused")  # a missing or empty folder fails before any timing
        ckpt, described = _checkpoint(args, Path(scratch))
        checkpoint = read_checkpoint(ckpt)
        meta, config = checkpoint.meta, checkpoint.config
        model_hw = input_size(*image_hw, meta)
        found = survey(args.images, meta) if args.images is not None else None
        if found is not None and not found.readable:  # before any timing
            raise UnetkitError(f"--images {args.images}: none of its {len(found.unreadable)} images can be read "
                               f"({found.unreadable[0]})")  # fmt: skip
        specs = _specs(args, device)
        runnable = [s for s, skip in specs if skip is None]
        peaks = {p: matmul_peak_tflops(p, device) for p in sorted({s.precision for s in runnable})
                 if p in DTYPES and peak_probed(p, device)}  # fmt: skip
        artifacts = "beside the checkpoint"
        if ckpt.parent == Path(scratch):
            artifacts = export_random(ckpt, device) if needs_artifacts(runnable) else "none (no engine here needs one)"
        report = Report(
            environment=environment(device),
            settings={
                "model": described,
                "image_hw": list(image_hw),
                "model_hw": list(model_hw),
                "scale": meta.scale,
                "resize": meta.resize_rule.describe(),
                "batches": batches,
                "target_ms": args.target_ms,
                "warmup": plan.warmup,
                "min_iters": plan.min_iters,
                "min_time_s": plan.min_time,
                "rotated_inputs": plan.rotate,
                "scope": args.scope,
                "artifacts": artifacts,
            },
            flops_per_image=counted_flops(config, *model_hw),
            peaks_tflops=peaks,
        )
        make = engine_factory(ckpt, device, args.compile_mode)
        reference = None
        if args.scope in ("model", "both"):
            # one image of the model's own kind where there is one: a street model finds nothing on a car
            own_kind = [*(found.readable if found is not None else []), *training_images(meta)]
            shown, report.settings["agreement_image"] = agreement_input(meta, image_hw, device, own_kind)
            report.settings["agreement"] = agreement_measure(meta.n_classes)
            for spec, skip in specs:
                if skip is not None:
                    report.model += [Row(spec.name, spec.precision, b, "skipped", skip) for b in batches]
                    continue
                log.info("benchmarking %s at batch %s ...", spec.label, ",".join(map(str, batches)))
                rows, labels = bench_engine(spec, make, batches, model_hw, plan, reference, shown, device)
                if spec == BASELINE:
                    reference = labels
                report.model += rows
            finish_rows(report.model, report.flops_per_image, peaks, args.target_ms)
        if args.scope in ("e2e", "both"):
            ran = [s for s in runnable if any(r.label == s.label and r.status == "ok" for r in report.model)]
            e2e_specs = ran if args.scope == "both" else runnable
            images = args.images
            if images is None:
                n = args.e2e_images or (200 if device.type == "cuda" else 8)
                log.info("writing %d synthetic %dx%d JPEGs for the end-to-end scope ...", n, image_hw[1], image_hw[0])
                images = synthetic_jpegs(Path(scratch) / "e2e", n, image_hw)
                found = survey(images, meta)
            assert found is not None  # surveyed above for --images
            report.settings.update(e2e_images=found.describe(), e2e_same_input=found.same_input(model_hw))
            more = f" and {len(found.unreadable) - 1} more" if len(found.unreadable) > 1 else ""
            if found.unreadable:
                log.warning("warning: end to end leaves out %s%s", found.unreadable[0], more)
            report.e2e = bench_e2e(e2e_specs, make, images, max(batches), args.workers, report.model, device, found,
                                   model_hw)  # fmt: skip
    print(render_text(report))
    for path, write in ((args.json, write_json), (args.markdown, write_markdown), (args.plot, write_plot)):
        if path is not None:
            write(report, path)
            print(f"wrote {path}")
    if args.check and not report.verdict()["meets_target"]:
        return EXIT_FAILURES
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: _bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
