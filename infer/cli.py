"""unet-infer: masks for a folder of images, with any engine, batched, tiled, streamed."""

from __future__ import annotations

import argparse
from pathlib import Path

from unetkit.core.checkpoint import DEFAULT_CHECKPOINT, read_checkpoint
from unetkit.core.cli import (
    EXIT_FAILURES,
    EXIT_OK,
    add_device_argument,
    add_progress_argument,
    add_workers_argument,
    run_cli,
)
from unetkit.core.device import resolve_device
from unetkit.core.errors import UnetkitError

from .engines import ENGINE_NAMES, PRECISIONS
from .engines.compiled import COMPILE_MODES
from .fastest import Probe, probe_engines, probe_input
from .io import Item, default_out_dir, discover
from .predictor import Predictor
from .settings import DECODERS, InferSettings, OutputOptions
from .tiling import BLEND_MODES, DEFAULT_TILE

PROG = "unet-infer"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Predict masks for every image in a folder. Artifacts are found beside the checkpoint: "
        "after `unet-export best.pth`, `unet-infer images/ --engine trt` needs no more flags.",
        epilog="examples:\n  unet-infer data/test --checkpoint runs/carvana/best.pth --engine trt --batch 8\n"
        f"  unet-infer scans/ --tile {DEFAULT_TILE} --overlap 128 --overlay\n"
        "  unet-infer data/test --rle submission.csv --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", type=Path, help="folder of images (jpg, jpeg, png, bmp, tif, tiff, webp)")
    p.add_argument("--engine", choices=[*ENGINE_NAMES, "fastest"], help="inference engine (default: torch for a "
                   "checkpoint, onnx for a .onnx --model, trt for a .engine --model); fastest: time every verified "
                   "CPU engine on the first image and use the fastest")  # fmt: skip
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint whose artifacts to "
                     f"use (default {DEFAULT_CHECKPOINT})")  # fmt: skip
    src.add_argument("--model", type=Path, help="an exported artifact to run instead (.onnx or .engine)")
    add_device_argument(p)
    p.add_argument("--precision", choices=[*PRECISIONS, "f32", "auto"], help="torch/compile precision; onnx, "
                   "openvino, trt: which file (int8: best.int8.*); openvino: auto (default: bf16 where the CPU has it "
                   "natively, else fp32), fp32 or bf16 (default fp16 on CUDA, fp32 on the CPU)")  # fmt: skip
    p.add_argument("--compile-mode", choices=COMPILE_MODES, help="torch.compile mode for --engine compile "
                   "(default reduce-overhead on CUDA: CUDA graphs)")  # fmt: skip
    p.add_argument("--tile", type=int, default=0, metavar="N", help="tile edge in model-input pixels; 0 (default) "
                   f"predicts whole images (try {DEFAULT_TILE})")  # fmt: skip
    p.add_argument("--overlap", type=int, metavar="M", help="minimum tile overlap in pixels (default N/4)")
    p.add_argument("--blend", choices=BLEND_MODES, default="gaussian", help="tile blending weights (default gaussian)")
    p.add_argument("--batch", type=int, help="images (or tiles) per engine call (default 8 on CUDA, 2 on the CPU)")
    p.add_argument("--out", type=Path, help="output folder (default <folder>_masks)")
    p.add_argument("--recursive", action="store_true", help="also search subfolders (outputs mirror them)")
    p.add_argument("--save-prob", action="store_true", help="also write <name>.prob.png probability maps")
    p.add_argument("--overlay", action="store_true", help="also write <name>.overlay.jpg for a quick look")
    p.add_argument("--palette", action="store_true", help="multi-class masks as palette PNGs (class colours)")
    p.add_argument("--rle", type=Path, metavar="FILE.csv", help="also write Carvana's Kaggle submission CSV "
                   "(img,rle_mask)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="skip images whose mask already exists")
    add_workers_argument(p, "decoding and writing threads")
    p.add_argument("--decoder", choices=DECODERS, default="auto", help="JPEG decoding: nvjpeg (torchvision, on the "
                   "GPU), cpu (Pillow), auto (nvjpeg where available)")  # fmt: skip
    add_progress_argument(p)
    return p


def _infer(args: argparse.Namespace) -> int:
    settings = InferSettings(args.tile, args.overlap, args.blend, args.batch, args.workers, args.decoder)
    out = args.out or default_out_dir(args.folder)
    items = discover(args.folder, out, args.recursive)  # a missing or empty folder fails before any loading
    if args.engine == "fastest":
        predictor = _fastest(args, settings, items)
    else:
        predictor = Predictor(
            args.model or args.checkpoint, args.engine, args.device, args.precision, compile_mode=args.compile_mode,
            **vars(settings),
        )  # fmt: skip
    outputs = OutputOptions(args.save_prob, args.overlay, args.palette, args.rle, args.resume, args.progress)
    with predictor:
        summary = predictor.pipeline(outputs).run(items)
        detail = predictor.engine.detail  # what the engine ran (OpenVINO: its precisions, threads, streams)
    for line in summary.lines():
        print(line)
    if detail:
        print(f"{predictor.engine.label}: {detail}")
    print(f"masks in {out}" + (f", RLE in {args.rle}" if args.rle else ""))
    return EXIT_FAILURES if summary.failures else EXIT_OK


def _fastest(args: argparse.Namespace, settings: InferSettings, items: list[Item]) -> Predictor:
    """--engine fastest: probe the CPU engines on the first image, print every time, keep the fastest."""
    if args.model:
        raise UnetkitError("--engine fastest chooses among the artifacts beside --checkpoint; it takes no --model")
    if args.precision:
        raise UnetkitError("--engine fastest chooses the precision too; leave out --precision")
    if resolve_device(args.device).type != "cpu":
        raise UnetkitError("--engine fastest compares CPU engines: pass --device cpu (on a GPU, --engine trt is the "
                           "fast path)")  # fmt: skip
    meta = read_checkpoint(args.checkpoint).meta
    x = probe_input([item.source for item in items], meta, settings.tile)
    print(f"--engine fastest: timing each CPU engine at {'x'.join(map(str, x.shape))} (1 warm-up, best of 2 calls)",
          flush=True)  # fmt: skip

    def show(probe: Probe) -> None:
        result = f"{probe.ms:10.1f} ms/image" if probe.ms is not None else f"  skipped: {probe.note}"
        print(f"  {probe.label:<15}{result}", flush=True)

    engine, probes = probe_engines(args.checkpoint, x, show)
    timed = sorted((p for p in probes if p.ms is not None), key=lambda p: p.ms or 0.0)
    runner_up = f", {timed[1].ms / timed[0].ms:.2f}x faster than {timed[1].label}" if len(timed) > 1 else ""  # type: ignore[operator]
    print(f"--engine fastest: chose {engine.label} ({timed[0].ms:.1f} ms/image{runner_up})", flush=True)
    return Predictor.from_engine(engine, settings)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: _infer(args))


if __name__ == "__main__":
    raise SystemExit(main())
