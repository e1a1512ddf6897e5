"""unet-infer: masks for a folder of images, with any engine, batched, tiled, streamed."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from unetkit.core.atomic import remove_stale_temps
from unetkit.core.checkpoint import DEFAULT_CHECKPOINT, read_checkpoint
from unetkit.core.cli import (
    EXIT_FAILURES,
    EXIT_OK,
    add_device_argument,
    add_progress_argument,
    add_workers_argument,
    run_cli,
)
from unetkit.core.device import resolve_device, use_device
from unetkit.core.distributed import DEFAULT_TIMEOUT_MINUTES, barrier, process_group, rank_device, torchrun_env
from unetkit.core.errors import UnetkitError
from unetkit.core.postprocess import PostProcess

from .engines import ENGINE_NAMES, PRECISIONS
from .engines.compiled import COMPILE_MODES
from .engines.ensemble import EnsembleEngine
from .fastest import Probe, new_size_share, probe_engines, probe_input
from .io import DEFAULT_OUT_SUFFIX, Item, default_out_dir, discover, folder_sizes, output_paths
from .predictor import Predictor
from .record import claim_out_dir, mask_settings, model_identity
from .settings import DECODERS, InferSettings, OutputOptions
from .shard import Part, check_no_other_split, choose_part, merge_parts, write_manifest
from .tiling import BLEND_MODES, DEFAULT_TILE, oversized_tile_note, small_tile_note

PROG = "unet-infer"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Predict masks for every image in a folder. Artifacts are found beside the checkpoint: "
        "after `unet-export best.pth`, `unet-infer images/ --engine trt` needs no more flags.",
        epilog="examples:\n  unet-infer data/test --checkpoint runs/carvana/best.pth --engine trt --batch 8\n"
        f"  unet-infer scans/ --tile {DEFAULT_TILE} --overlap 128 --overlay\n"
        "  unet-infer data/test --rle submission.csv --resume\n"
        "  unet-infer data/test --rle submission.csv --num-parts 4 --part-id 0   # one of 4 jobs; then:\n"
        "  unet-infer merge submission.csv\n"
        "  torchrun --nproc-per-node 8 -m unetkit.infer data/test --rle submission.csv   # 8 GPUs, merged by rank 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", type=Path, help="folder of images (jpg, jpeg, png, bmp, tif, tiff, webp), or one "
                   "image")  # fmt: skip
    p.add_argument("--engine", choices=[*ENGINE_NAMES, "fastest"], help="inference engine (default: torch for a "
                   "checkpoint, onnx for a .onnx --model, trt for a .engine --model); fastest: time every verified "
                   "CPU engine on the first image and use the fastest")  # fmt: skip
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, action="append", help="checkpoint whose artifacts to use (default "
                     f"{DEFAULT_CHECKPOINT}); given several times, the checkpoints run as one model, their "
                     "probabilities averaged (an ensemble, e.g. of --folds runs)")  # fmt: skip
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
    p.add_argument("--tta", action="store_true", help="test-time augmentation: also predict each image mirrored "
                   "left-right (the flip training augments with) and average; twice the compute")  # fmt: skip
    p.add_argument("--keep-largest", action="store_true", help="post-processing: keep only the largest "
                   "connected component of each class (one car, one organ); `unet-train --eval` reports what it "
                   "changes")  # fmt: skip
    p.add_argument("--min-area", type=int, default=PostProcess.min_area, metavar="PIXELS", help="post-processing: "
                   "drop connected components smaller than PIXELS at the image's size (default 0: keep all)"
                   )  # fmt: skip
    p.add_argument("--fill-holes", action="store_true", help="post-processing (binary masks): fill background "
                   "enclosed by the mask")  # fmt: skip
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
    p.add_argument("--num-parts", type=int, metavar="K", help="split the sorted files into K parts and run one "
                   "of them (separate jobs: Slurm arrays, Kubernetes indexed jobs); with --rle it writes "
                   "FILE.part-I-of-K.csv for `unet-infer merge FILE.csv`. Under torchrun each rank takes its part "
                   "by itself")  # fmt: skip
    p.add_argument("--part-id", type=int, metavar="I", help="which part this job runs, 0 to K-1")
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_MINUTES, metavar="MIN", help="under "
                   "torchrun: minutes rank 0 waits for the other parts before it merges (default "
                   f"{DEFAULT_TIMEOUT_MINUTES:g})")  # fmt: skip
    add_workers_argument(p, "decoding and writing threads")
    p.add_argument("--decoder", choices=DECODERS, default="auto", help="JPEG decoding: nvjpeg (torchvision, on the "
                   "GPU), cpu (Pillow), auto (nvjpeg where available)")  # fmt: skip
    add_progress_argument(p)
    return p


def _infer(args: argparse.Namespace) -> int:
    checkpoints = args.checkpoint or [DEFAULT_CHECKPOINT]
    args.checkpoint = checkpoints[0] if len(checkpoints) == 1 else checkpoints  # a path, or an ensemble's paths
    if args.engine == "fastest" and len(checkpoints) > 1:
        raise UnetkitError("--engine fastest times one checkpoint's engines; name one --engine for an ensemble")
    if args.compile_mode is not None and args.engine != "compile":
        chosen = f", not {args.engine}" if args.engine else " (the engine here follows the file type)"
        raise UnetkitError(f"--compile-mode: only used by --engine compile{chosen}")
    dist = torchrun_env(os.environ)
    part = choose_part(args.num_parts, args.part_id, dist)  # a bad part range fails before any work
    if dist is None:
        return _run(args, part, args.device, args.progress)
    # Under torchrun each rank runs its part on cuda:LOCAL_RANK; Gloo is only for the barriers.
    device = rank_device(args.device, dist, torch.cuda.device_count())
    with process_group(dist, torch.device("cpu"), args.dist_timeout):
        code = _run(args, part, device, args.progress and dist.is_main)
        barrier()  # every part has finished
        if dist.is_main and args.rle:
            code = max(code, _merge(args.rle))
        barrier()  # no rank ends (torchrun ends the job when one fails) before the merged CSV is written
    return code


def _run(args: argparse.Namespace, part: Part | None, device: str, progress: bool) -> int:
    """The folder, or this part of it, through one Predictor; a part with --rle also writes its manifest."""
    settings = InferSettings(args.tile, args.overlap, args.blend, args.batch, args.workers, args.decoder, args.tta,
                             args.keep_largest, args.min_area, args.fill_holes)  # fmt: skip
    out = args.out or default_out_dir(args.folder)
    siblings = OutputOptions(args.save_prob, args.overlay).siblings()
    items = discover(args.folder, out, args.recursive, siblings)  # a missing or empty folder fails before loading
    mine = items
    if part is not None:
        print(part.describe(len(items)), flush=True)
        mine = part.select(items)
    rle = part.path(args.rle) if part is not None and args.rle else args.rle
    if part is not None and args.rle:
        check_no_other_split(args.rle, part.count)
    output_paths(out, rle)  # and so does an output that cannot be written (parts share --out)
    stale = remove_stale_temps(out, recursive=True)
    if stale:
        print(f"removed {stale} temporary file(s) that a killed run left in {out}", flush=True)
    use_device(resolve_device(device))  # cuda:N becomes current: streams, pinned buffers and events follow it
    if args.engine == "fastest":  # every part times the same first image of the whole folder
        predictor = _fastest(args, device, settings, items)
    else:
        predictor = Predictor(
            args.model or args.checkpoint, args.engine, device, args.precision, compile_mode=args.compile_mode,
            **asdict(settings),
        )  # fmt: skip
    if settings.tile:
        notes = [oversized_tile_note(folder_sizes([item.source for item in mine], predictor.meta), settings.tile),
                 small_tile_note(settings.tile, predictor.meta.trained_crop)]  # fmt: skip
        for note in filter(None, notes):
            print(f"note: {note}", flush=True)
    if args.palette and predictor.meta.n_classes == 1:
        predictor.close()
        raise UnetkitError("--palette colours the classes of a multi-class model; this one is binary (its masks are "
                           "0/255)")  # fmt: skip
    outputs = OutputOptions(args.save_prob, args.overlay, args.palette, rle, args.resume, progress)
    ran = predictor.engine.members if isinstance(predictor.engine, EnsembleEngine) else [predictor.engine]
    for engine in (e for e in ran if e.meta.extra.get("export_verified") is False):
        print(f"warning: {engine.source} was exported with --no-verify: its agreement with the checkpoint was never "
              "checked", flush=True)  # fmt: skip
    with predictor:
        pipeline = predictor.pipeline(outputs)  # settings the engine cannot take are refused here, before any write
        identity = model_identity(predictor.engine)
        claim_out_dir(out, identity, pipeline.settings, outputs, mine)  # before any output: one model per folder
        summary = pipeline.run(mine)
        detail = predictor.engine.detail  # what the engine ran (OpenVINO: its precisions, threads, streams)
        if part is not None and args.rle:
            relative = {str(it.source): it.relative.as_posix() for it in mine}
            failed = [relative[source] for source, _ in summary.failures]
            write_manifest(part, args.rle, items, failed, predictor.meta, predictor.engine.label,
                           identity["checkpoint_sha256"], mask_settings(pipeline.settings))  # fmt: skip
    tag = f"part {part.index} of {part.count}: " if part is not None else ""
    for line in summary.lines():
        print(tag + line)
    if detail:
        print(f"{tag}{predictor.engine.label}: {detail}")
    print(f"{tag}masks in {out}" + (f", RLE in {rle}" if rle else ""))
    return EXIT_FAILURES if summary.failures else EXIT_OK


def _fastest(args: argparse.Namespace, device: str, settings: InferSettings, items: list[Item]) -> Predictor:
    """--engine fastest: probe the CPU engines on the first image, print every time, keep the fastest."""
    if args.model:
        raise UnetkitError("--engine fastest chooses among the artifacts beside --checkpoint; it takes no --model")
    if args.precision:
        raise UnetkitError("--engine fastest chooses the precision too; leave out --precision")
    if resolve_device(device).type != "cpu":
        raise UnetkitError("--engine fastest compares CPU engines: pass --device cpu (on a GPU, --engine trt is the "
                           "fast path)")  # fmt: skip
    meta = read_checkpoint(args.checkpoint).meta
    settings.postprocess.check(meta.n_classes, meta.mask_kind)  # before the engines are timed
    sources = [item.source for item in items]
    x = probe_input(sources, meta, settings.tile)
    sizes = [] if settings.tile else folder_sizes(sources, meta)  # tiles have one size
    print(f"--engine fastest: timing each CPU engine at {'x'.join(map(str, x.shape))} whose mask agrees with eager "
          "FP32's (1 warm-up, then the best of at least 2 calls and 0.5 s)", flush=True)  # fmt: skip
    if new_size_share(sizes):
        print(f"  the images have {len(set(sizes))} model-input sizes in {len(sizes)}: each engine's first call at a "
              "new size is timed too, for the images that bring a size it has not compiled", flush=True)  # fmt: skip

    def show(probe: Probe) -> None:
        result = f"{probe.ms:10.1f} ms/image" if probe.ms is not None else f"  skipped: {probe.note}"
        if probe.new_size_ms is not None:
            result += f", {probe.new_size_ms:.1f} ms at a new size: {probe.expected_ms:.1f} ms/image expected"
        print(f"  {probe.label:<15}{result}", flush=True)

    engine, probes = probe_engines(args.checkpoint, x, show, sizes=sizes)
    timed = sorted((p for p in probes if p.expected_ms is not None), key=lambda p: p.expected_ms or 0.0)
    runner_up = (f", {(timed[1].expected_ms or 0.0) / (timed[0].expected_ms or 1.0):.2f}x faster than "
                 f"{timed[1].label}" if len(timed) > 1 else "")  # fmt: skip
    print(f"--engine fastest: chose {engine.label} ({timed[0].expected_ms:.1f} ms/image"
          f"{' expected' if new_size_share(sizes) else ''}{runner_up})", flush=True)  # fmt: skip
    return Predictor.from_engine(engine, settings)


def build_merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} merge",
        description="Merge the part CSVs of a split run (--num-parts K --part-id I --rle FILE.csv) into FILE.csv, "
        "rows in sorted order, byte for byte what one process would have written; refuses when a part is "
        "missing or the parts disagree.",
    )
    p.add_argument("csv", type=Path, help="the --rle FILE.csv the parts were run with")
    return p


def _merge(csv_path: Path) -> int:
    result = merge_parts(csv_path)
    print(f"merged {result.parts} part(s) into {result.path}: {result.rows} rows, {len(result.failed)} failed image(s)")
    for name in result.failed:
        print(f"failed (no row): {name}")
    return EXIT_FAILURES if result.failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:  # a folder named merge is ./merge
        merge = build_merge_parser().parse_args(argv[1:])
        return run_cli(PROG, lambda: _merge(merge.csv))
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: _infer(args))


if __name__ == "__main__":
    raise SystemExit(main())
