"""unet-infer: masks for a folder of images, with any engine, batched, tiled, streamed."""

from __future__ import annotations

import argparse
from pathlib import Path

from unetkit.core.checkpoint import DEFAULT_CHECKPOINT
from unetkit.core.cli import (
    EXIT_FAILURES,
    EXIT_OK,
    add_device_argument,
    add_progress_argument,
    add_workers_argument,
    run_cli,
)

from .engines import DTYPES, ENGINE_NAMES
from .engines.compiled import COMPILE_MODES
from .io import DEFAULT_OUT_SUFFIX, default_out_dir, discover, output_paths
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
    p.add_argument("--engine", choices=ENGINE_NAMES, help="inference engine (default: torch for a checkpoint, "
                   "onnx for a .onnx --model, trt for a .engine --model)")  # fmt: skip
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint whose artifacts to "
                     f"use (default {DEFAULT_CHECKPOINT})")  # fmt: skip
    src.add_argument("--model", type=Path, help="an exported artifact to run instead (.onnx or .engine)")
    add_device_argument(p)
    p.add_argument("--precision", choices=sorted(DTYPES), help="torch/compile precision; onnx: which ONNX file "
                   "(default fp16 on CUDA, fp32 on the CPU)")  # fmt: skip
    p.add_argument("--compile-mode", choices=COMPILE_MODES, help="torch.compile mode for --engine compile "
                   "(default reduce-overhead on CUDA: CUDA graphs)")  # fmt: skip
    p.add_argument("--tile", type=int, default=0, metavar="N", help="tile edge in model-input pixels; 0 (default) "
                   f"predicts whole images (try {DEFAULT_TILE})")  # fmt: skip
    p.add_argument("--overlap", type=int, metavar="M", help="minimum tile overlap in pixels (default N/4)")
    p.add_argument("--blend", choices=BLEND_MODES, default="gaussian", help="tile blending weights (default gaussian)")
    p.add_argument("--batch", type=int, help="images (or tiles) per engine call (default 8 on CUDA, 2 on the CPU)")
    p.add_argument("--out", type=Path, help=f"output folder (default <folder>{DEFAULT_OUT_SUFFIX} beside the input "
                   "folder)")  # fmt: skip
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
    output_paths(out, args.rle)  # and so does an output that cannot be written
    predictor = Predictor(
        args.model or args.checkpoint, args.engine, args.device, args.precision, compile_mode=args.compile_mode,
        **vars(settings),
    )  # fmt: skip
    outputs = OutputOptions(args.save_prob, args.overlay, args.palette, args.rle, args.resume, args.progress)
    with predictor:
        summary = predictor.pipeline(outputs).run(items)
    for line in summary.lines():
        print(line)
    print(f"masks in {out}" + (f", RLE in {args.rle}" if args.rle else ""))
    return EXIT_FAILURES if summary.failures else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: _infer(args))


if __name__ == "__main__":
    raise SystemExit(main())
