"""unet-data: make a synthetic data set, fetch Carvana, or check a data set before training on it."""

from __future__ import annotations

import argparse
from pathlib import Path

from unetkit.core.cli import EXIT_OK, add_progress_argument, add_workers_argument, run_cli
from unetkit.core.errors import UnetkitError
from unetkit.core.outputs import FOLDER, check_outputs

PROG = "unet-data"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Data sets for unetkit.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a Carvana-like synthetic data set (Kaggle naming)")
    s.add_argument("--out", type=Path, required=True, help="folder to write train/ and train_masks/ into")
    s.add_argument("--n", type=int, default=64, help="number of image/mask pairs (default 64)")
    s.add_argument("--size", default="1918x1280", help="WIDTHxHEIGHT (default 1918x1280, Carvana's)")
    s.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")

    c = sub.add_parser("carvana", help="download Kaggle's Carvana competition data (needs a Kaggle API token)")
    c.add_argument("--out", type=Path, required=True, help="folder to write train/ and train_masks/ into")
    c.add_argument("--hq", action="store_true", help="the high-quality JPEGs (train_hq.zip, larger)")

    k = sub.add_parser("check", help="validate a data set and summarize it")
    k.add_argument("data", type=Path, help="data set folder")
    k.add_argument("--layout", default="auto", help="data layout (default auto)")
    k.add_argument("--scale", type=float, default=1.0, help="check at this scale, in (0, 1], as training would "
                   "(default 1)")  # fmt: skip
    add_workers_argument(k, "decoding threads")
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
    check_outputs([("--out", args.out, FOLDER)])
    written = write_synthetic(args.out, args.n, size, args.seed, progress=args.progress)
    print(f"wrote {len(written)} image/mask pairs ({size[0]}x{size[1]}) to {args.out}/train and {args.out}/train_masks")
    return EXIT_OK


def _carvana(args: argparse.Namespace) -> int:
    from .kaggle import download_carvana

    check_outputs([("--out", args.out, FOLDER)])
    out = download_carvana(args.out, hq=args.hq, quiet=not args.progress)
    print(f"Carvana training data is in {out}/train and {out}/train_masks")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from .checks import check_dataset, describe_unmatched
    from .layouts import index_dataset

    if not 0 < args.scale <= 1:  # the rule unet-train applies to its --scale
        raise UnetkitError(f"--scale {args.scale:g}: must be in (0, 1]")
    index = index_dataset(args.data, args.layout)
    report = check_dataset(index, args.scale, workers=args.workers, progress=args.progress)
    print(f"{index.root}: {index.layout} layout, {len(index.pairs)} pairs, {index.n_classes} output channel(s)")
    for line in describe_unmatched(index):
        print(f"  warning: {line}")
    sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.sizes.most_common(5))
    more = f" and {len(report.sizes) - 5} more" if len(report.sizes) > 5 else ""
    at_scale = f" at scale {args.scale:g}" if args.scale != 1 else ""
    print(f"  sizes{at_scale}: {sizes}{more}")
    balance = ", ".join(f"{name} {frac:.1%}" for name, frac in report.class_fractions().items())
    print(f"  class balance (share of labelled pixels): {balance}")
    if report.ignored_fraction() > 0:
        print(f"  ignored pixels: {report.ignored_fraction():.1%}")
    report.raise_if_problems()
    print("  ok: every pair decodes and its mask matches its image")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    body = {"synth": _synth, "carvana": _carvana, "check": _check}[args.command]
    return run_cli(PROG, lambda: body(args))


if __name__ == "__main__":
    raise SystemExit(main())
