"""unet-data: make a synthetic data set, fetch Carvana, check a data set before training on it, or score
predicted masks against its ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unetkit.core.atomic import write_text_atomic
from unetkit.core.cli import EXIT_FAILURES, EXIT_OK, add_progress_argument, add_workers_argument, run_cli
from unetkit.core.errors import UnetkitError
from unetkit.core.meta import ResizeRule
from unetkit.core.outputs import FILE, FOLDER, check_outputs

from .options import add_data_arguments, parse_hw, resolve_folders

PROG = "unet-data"
#: What `unet-data synth` wrote into its --out (n, size, seed, views), so the same command again is a no-op.
SYNTH_RECORD = "synth.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Data sets for unetkit.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a Carvana-like synthetic data set (Kaggle naming)")
    s.add_argument("--out", type=Path, required=True, help="folder to write train/ and train_masks/ into")
    s.add_argument("--n", type=int, default=64, help="number of image/mask pairs (default 64)")
    s.add_argument("--size", default="1918x1280", help="WIDTHxHEIGHT (default 1918x1280, Carvana's)")
    s.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    s.add_argument("--views", type=int, default=16, help="views per car, <car>_01 ... (default 16, as Carvana); "
                   "fewer views make more distinct cars for the same --n")  # fmt: skip

    c = sub.add_parser("carvana", help="download Kaggle's Carvana competition data (needs a Kaggle API token)")
    c.add_argument("--out", type=Path, required=True, help="folder to write train/ and train_masks/ into")
    c.add_argument("--hq", action="store_true", help="the high-quality JPEGs (train_hq.zip, larger)")
    c.add_argument("--test", action="store_true", help="also the 100,064 test images into OUT/test (about 14 GB), "
                   "which a Kaggle submission (unet-infer --rle) is scored on")  # fmt: skip

    k = sub.add_parser("check", help="validate a data set and summarize it, with the split training would make")
    k.add_argument("data", type=Path, nargs="?", help="data set folder (or give --images and --masks)")
    k.add_argument("--layout", default="auto", help="data layout (default auto)")
    k.add_argument("--scale", type=float, help="check at this scale, as training would with it (default 1: "
                   "the images' own size; unet-train's default is 0.5)")  # fmt: skip
    k.add_argument("--size", type=parse_hw, metavar="HxW", help="check at this fixed model-input size")
    k.add_argument("--max-side", type=int, metavar="N", help="check with the longer side resized to N")
    k.add_argument("--val-fraction", type=float, default=0.2, help="validation share of the split (default 0.2)")
    k.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    k.add_argument("--folds", type=int, metavar="K", help="show the k-fold split unet-train --folds K would make")
    k.add_argument("--fold", type=int, default=0, metavar="I", help="with --folds: the fold that validates (default 0)")
    add_data_arguments(k)
    add_workers_argument(k, "decoding threads")

    r = sub.add_parser("score", help="score predicted masks (unet-infer's, any engine's) against the data set's "
                       "ground truth")  # fmt: skip
    r.add_argument("predictions", type=Path, help="folder of predicted masks, <image name>.png (searched below it)")
    r.add_argument("--data", type=Path, help="the data set with the true masks (or give --images and --masks)")
    r.add_argument("--layout", default="auto", help="data layout (default auto)")
    r.add_argument("--json", type=Path, metavar="FILE", help="write every number (per image tp, fp, fn) to FILE")
    add_data_arguments(r)
    for q in (s, c, k):
        add_progress_argument(q)
    return p


def _synth(args: argparse.Namespace) -> int:
    from .synth import parse_size, write_synthetic

    if args.n < 1:
        raise UnetkitError("--n must be at least 1")
    try:
        size = parse_size(args.size)
    except ValueError as exc:
        raise UnetkitError(f"--size: {exc}") from None
    if args.views < 1:
        raise UnetkitError("--views must be at least 1")
    check_outputs([("--out", args.out, FOLDER)])
    asked = {"n": args.n, "size": list(size), "seed": args.seed, "views": args.views}
    record = args.out / SYNTH_RECORD
    held = [p for d in ("train", "train_masks") if (args.out / d).is_dir() for p in (args.out / d).iterdir()]
    if held:
        if record.is_file() and _read_json(record) == asked:  # the same command again (make demo run twice)
            print(f"{args.out} already holds these {args.n} pairs ({SYNTH_RECORD}); nothing written")
            return EXIT_OK
        raise UnetkitError(f"--out {args.out}: already holds a data set ({len(held)} files in train/ and "
                           "train_masks/), which new pairs would mix with or overwrite; choose another --out, or "
                           "remove it first")  # fmt: skip
    written = write_synthetic(args.out, args.n, size, args.seed, progress=args.progress, views=args.views)
    write_text_atomic(record, json.dumps(asked) + "\n")
    cars = -(-len(written) // args.views)
    print(
        f"wrote {len(written)} image/mask pairs ({size[0]}x{size[1]}, {cars} car(s), up to {args.views} views each) "
        f"to {args.out}/train and {args.out}/train_masks"
    )
    return EXIT_OK


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _carvana(args: argparse.Namespace) -> int:
    from .kaggle import download_carvana

    check_outputs([("--out", args.out, FOLDER)])
    out = download_carvana(args.out, hq=args.hq, quiet=not args.progress, test=args.test)
    print(f"Carvana training data is in {out}/train and {out}/train_masks"
          + (f"; the test images in {out}/test" if args.test else ""))  # fmt: skip
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from .checks import check_dataset, describe_unmatched, inverted_size
    from .dataset import SampleRule
    from .layouts import index_dataset
    from .split import make_split

    if args.folds is None and args.fold:
        raise UnetkitError("--fold needs --folds K")
    if args.folds is not None and not (args.folds >= 2 and 0 <= args.fold < args.folds):
        raise UnetkitError(f"--folds {args.folds} --fold {args.fold}: needs K >= 2 and 0 <= I < K")
    if sum(v is not None for v in (args.scale, args.size, args.max_side)) > 1:
        raise UnetkitError("--scale, --size and --max-side are three rules: give one")
    if args.scale is not None and not 0 < args.scale <= 1:  # the rule unet-train applies to its --scale
        raise UnetkitError(f"--scale {args.scale:g}: must be in (0, 1]")
    data, folders = resolve_folders(args)
    if data is None:
        raise UnetkitError("a data set folder (or --images and --masks) is required")
    if args.size is not None:
        resize = ResizeRule("size", size=args.size)
    elif args.max_side is not None:
        resize = ResizeRule("max_side", max_side=args.max_side)
    else:
        resize = ResizeRule("scale", scale=args.scale if args.scale is not None else 1.0)
    index = index_dataset(data, args.layout, folders)
    folds = (args.folds, args.fold) if args.folds is not None else None
    split = (make_split(index, args.group_by or "auto", args.val_fraction, args.seed, folds)
             if len(index.pairs) > 1 else None)  # fmt: skip
    rule = SampleRule(resize, index.mask_kind, args.mask_threshold, index.n_classes)
    report = check_dataset(index, rule, workers=args.workers, progress=args.progress)
    print(f"{index.root}: {index.layout} layout, {len(index.pairs)} pairs, {index.n_classes} output channel(s)")
    for line in describe_unmatched(index):
        print(f"  warning: {line}")
    inverted = inverted_size(index, resize)
    if inverted:
        print(f"  warning: {inverted}")
    if report.sizes:  # some pair decoded: what they hold (else only the problems below say anything)
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.sizes.most_common(5))
        more = f" and {len(report.sizes) - 5} more" if len(report.sizes) > 5 else ""
        at_rule = f" at {resize.describe()}" if resize != ResizeRule() else ""
        print(f"  sizes (WxH){at_rule}: {sizes}{more}")
        balance = ", ".join(f"{name} {frac:.1%}" for name, frac in report.class_fractions().items())
        print(f"  class balance (share of labelled pixels): {balance}")
        if report.ignored_fraction() > 0:
            print(f"  ignored pixels: {report.ignored_fraction():.1%}")
        empty = report.empty_classes()
        if empty:
            print(f"  warning: {empty}")
    if split is not None:
        shared = {split.keys[p.image] for p in split.train} & {split.keys[p.image] for p in split.val}
        print(
            f"  split: train {len(split.train)} images in {split.groups('train')} group(s), val {len(split.val)} "
            f"images in {split.groups('val')} group(s) ({split.rule}); "
            + (f"{len(shared)} group(s) on both sides" if shared else "no group on both sides")
        )
    report.raise_if_problems()
    print("  ok: every pair decodes and its mask matches its image")
    return EXIT_OK


def _score(args: argparse.Namespace) -> int:
    from .dataset import SampleRule
    from .layouts import index_dataset
    from .score import score_folder

    data, folders = resolve_folders(args)
    if data is None:
        raise UnetkitError("the true masks' data set is required: --data DIR (or --images and --masks)")
    check_outputs([("--json", args.json, FILE)])
    index = index_dataset(data, args.layout, folders)
    rule = SampleRule(ResizeRule(), index.mask_kind, args.mask_threshold, index.n_classes)
    report = score_folder(args.predictions, index, rule)
    print("\n".join(report.lines()))
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(report.to_dict(), indent=1) + "\n")
        print(f"  numbers: {args.json}")
    return EXIT_FAILURES if report.failures else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    body = {"synth": _synth, "carvana": _carvana, "check": _check, "score": _score}[args.command]
    return run_cli(PROG, lambda: body(args))


if __name__ == "__main__":
    raise SystemExit(main())
