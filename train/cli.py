"""unet-train: train a U-Net into RUN_DIR/best.pth, resume a run, or evaluate a checkpoint."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from unetkit.core.atomic import remove_stale_temps, write_text_atomic
from unetkit.core.cli import EXIT_OK, add_device_argument, add_progress_argument, add_workers_argument, run_cli
from unetkit.core.distributed import torchrun_env
from unetkit.core.errors import UnetkitError
from unetkit.core.outputs import FILE, FOLDER, check_outputs

from .config import (
    DEFAULT_WEIGHT_DECAY,
    MONITORS,
    OPTIMIZERS,
    SCHEDULES,
    SYNC_BN_CHOICES,
    TrainConfig,
    next_free_run_dir,
    run_files,
)
from .data.crop import DEFAULT_FG_FRACTION
from .data.layouts import LAYOUTS
from .data.options import absolute, add_data_arguments, parse_floats, parse_hw, parse_rgb, resolve_folders
from .data.split import SPLIT_FILE
from .evaluate import SPLITS, EvalSettings, evaluate_checkpoint, report_stem
from .extras import require_training_stack
from .finetune import inherited_settings
from .losses import BINARY_LOSSES, MULTICLASS_LOSSES
from .optim import SGD_MOMENTUM

PROG = "unet-train"
DEFAULTS = TrainConfig(data=Path("."), out=Path("runs/unet"))


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train a U-Net on an image/mask data set; writes best.pth, last.pth, history.jsonl and "
        "TensorBoard logs (tb/) into the run folder.",
        epilog="examples:\n  unet-train --data data/carvana --out runs/carvana\n"
        "  unet-train --out runs/carvana --resume --epochs 80\n"
        "  unet-train --images DRIVE/training/images --masks DRIVE/training/1st_manual --image-suffix _training "
        "--mask-suffix _manual1 --max-side 576 --out runs/drive\n"
        "  unet-train --eval runs/carvana/best.pth --data data/carvana --split val --json val.json\n"
        "  torchrun --nproc-per-node 4 -m unetkit.train --data data/carvana --out runs/carvana   # 4 GPUs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, help="data set folder (see README: data layouts)")
    p.add_argument("--out", type=Path, help=f"run folder (default {d.out}, or the next free {d.out}2, {d.out}3, ... "
                   "when it holds a run; a folder given here that holds a run is refused)")  # fmt: skip
    p.add_argument("--layout", choices=["auto", *LAYOUTS], help="data layout (default auto: detected)")
    p.add_argument("--epochs", type=int, help=f"maximum epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, help=f"images per step, per process under torchrun (default "
                   f"{d.batch_size})")  # fmt: skip
    p.add_argument("--lr", type=float, help=f"learning rate (default {d.lr:g}, the seed's for Adam; nnU-Net's SGD "
                   "takes 1e-2)")  # fmt: skip
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"adam (default, the seed's), adamw (decoupled weight "
                   f"decay) or sgd (Nesterov momentum {SGD_MOMENTUM:g}, as nnU-Net)")  # fmt: skip
    p.add_argument("--weight-decay", type=float, metavar="WD", help="weight decay, never on biases or normalization "
                   f"(default {_decays()})")  # fmt: skip
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule: plateau (default, the seed's: x0.1 "
                   "when the validation figure stalls), poly (nnU-Net's (1-t/T)^0.9) or cosine, both falling every "
                   "step to 0 at --epochs")  # fmt: skip
    p.add_argument("--warmup-epochs", type=float, metavar="N", help="raise the learning rate linearly from 0 over "
                   "the first N epochs, step by step (default 0)")  # fmt: skip
    p.add_argument("--accumulate", type=int, metavar="N", help="sum the gradients of N batches into one optimizer "
                   "step: an effective batch N times --batch-size where memory holds only --batch-size (default "
                   "1)")  # fmt: skip
    p.add_argument("--ema", type=float, metavar="DECAY", help="keep an exponential moving average of the weights "
                   "(e.g. 0.999, as Ultralytics), which is validated and saved as the checkpoint's weights (default: "
                   "none)")  # fmt: skip
    p.add_argument("--clip-grad", type=float, metavar="NORM", help="clip the gradients' global norm to NORM before "
                   "each step (default: no clipping)")  # fmt: skip
    p.add_argument("--scale", type=float, help=f"input scale factor (default {d.scale:g})")
    p.add_argument("--size", type=parse_hw, metavar="HxW", help="resize every image to this model-input size "
                   "instead of scaling it")  # fmt: skip
    p.add_argument("--max-side", type=int, metavar="N", help="resize every image so its longer side is N, keeping "
                   "its aspect, instead of scaling it (for data sets of mixed sizes)")  # fmt: skip
    p.add_argument("--crop", type=parse_hw, metavar="HxW", help="train on random HxW windows of each model input "
                   "(patches, as nnU-Net; with --scale 1, large images at full resolution); validation still scores "
                   "whole images")  # fmt: skip
    p.add_argument("--fg-fraction", type=float, metavar="P", help="with --crop: the share of windows made to hold a "
                   f"foreground pixel, the rest uniform (default {DEFAULT_FG_FRACTION}, nnU-Net's)")  # fmt: skip
    p.add_argument("--init", type=Path, metavar="CHECKPOINT", help="start from this checkpoint's weights "
                   "(fine-tuning); its width, up-sampling, attention gates and normalization are taken, and a data "
                   "set with another class count gets a new head")  # fmt: skip
    p.add_argument("--base-channels", type=int, help=f"width of the first level (default {d.base_channels})")
    p.add_argument("--bilinear", action="store_true", default=None, help="bilinear up-sampling instead of "
                   "transposed convolutions")  # fmt: skip
    p.add_argument("--attention", action="store_true", default=None, help="attention gates on the skip "
                   "connections (Attention U-Net): the decoder learns to weigh down background the encoder passes "
                   "on; 1%% more weights, 2%% more FLOPs")  # fmt: skip
    p.add_argument("--deep-supervision", action="store_true", default=None, help="the loss also scores the "
                   "decoder's 1/2, 1/4 and 1/8 levels through small extra heads (nnU-Net's weights), which can "
                   "speed up convergence; inference and export use the main head alone")  # fmt: skip
    p.add_argument("--loss", choices=sorted({*BINARY_LOSSES, *MULTICLASS_LOSSES}),
                   help="loss: a pixel term (bce/ce, or focal), a region term (dice, or tversky, which charges "
                   "misses more), or one of each, half and half (default bce+dice for binary, ce+dice for "
                   "multi-class)")  # fmt: skip
    p.add_argument("--pos-weight", type=float, metavar="W", help="binary: weight of the foreground pixels in the "
                   "cross-entropy term, e.g. 3 for small objects that are easily missed (default 1)")  # fmt: skip
    p.add_argument("--class-weights", type=parse_floats, metavar="W0,W1,...", help="multi-class: one "
                   "cross-entropy weight per class, in class-id order, so rare classes count for more (default all "
                   "1)")  # fmt: skip
    add_device_argument(p, default=None)
    add_workers_argument(p, "DataLoader worker processes", default=None)
    p.add_argument("--seed", type=int, help=f"seed for initialization, split and augmentation (default {d.seed})")
    p.add_argument("--val-fraction", type=float, help=f"validation share of the split (default {d.val_fraction})")
    p.add_argument("--folds", type=int, metavar="K", help="k-fold cross-validation: deal the groups into K folds of "
                   "about equal size (instead of --val-fraction); --fold I validates on fold I")  # fmt: skip
    p.add_argument("--fold", type=int, metavar="I", help="with --folds: the fold (0..K-1) that validates (default 0)")
    add_data_arguments(p)
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None, help="no augmentation")
    p.add_argument("--cache", type=Path, help="folder for decoded, scaled samples reused across epochs and runs")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None, help="FP32 training on CUDA")
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic kernels only "
                   "(cuDNN does not benchmark), so a CUDA run can repeat bit for bit, more slowly; an op without a "
                   "deterministic CUDA kernel warns once (not yet run on a GPU)")  # fmt: skip
    p.add_argument("--patience", type=int, help=f"early-stopping patience in epochs (default {d.patience})")
    p.add_argument("--lr-patience", type=int, help="epochs without a better validation figure before the learning "
                   f"rate drops tenfold (default {d.lr_patience})")  # fmt: skip
    p.add_argument("--monitor", choices=MONITORS, help="the validation figure that picks best.pth, lowers the "
                   "learning rate and stops early: dice (default; the figure reported) or loss (the seed tutorial's "
                   "choice; it keeps improving while the Dice of small or rare objects is still 0)")  # fmt: skip
    p.add_argument("--mean", type=parse_rgb, metavar="R,G,B", help="per-channel input mean in [0, 1] units "
                   f"(default ImageNet's {_rgb(d.mean)}); stored in the checkpoint for every engine")  # fmt: skip
    p.add_argument("--std", type=parse_rgb, metavar="R,G,B", help="per-channel input standard deviation "
                   f"(default ImageNet's {_rgb(d.std)}); 1,1,1 with --mean 0,0,0 is the seed tutorial's "
                   "pixel/255")  # fmt: skip
    p.add_argument("--threshold", type=float, help=f"binary decision threshold stored for inference (default "
                   f"{d.threshold})")  # fmt: skip
    p.add_argument("--max-minutes", type=float, metavar="M", help="stop training after M minutes: the epoch in "
                   "progress is cut short, validated and saved (default: no limit)")  # fmt: skip
    p.add_argument("--sync-bn", choices=SYNC_BN_CHOICES, help="under torchrun: BatchNorm statistics over all "
                   "processes; auto (default) on CUDA with more than one process")  # fmt: skip
    p.add_argument("--dist-timeout", type=float, metavar="MIN", help="under torchrun: minutes a process waits for "
                   f"the others before the run fails (default {d.dist_timeout:g})")  # fmt: skip
    p.add_argument("--resume", nargs="?", const=True, metavar="LAST_PTH",
                   help="continue a run from its last.pth (default: RUN_DIR/last.pth); only --epochs, --device, "
                   "--workers, --cache, --max-minutes, --sync-bn and --dist-timeout may change")  # fmt: skip
    p.add_argument("--eval", type=Path, metavar="CHECKPOINT", help="only evaluate CHECKPOINT on --data and exit")
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="all",
        help="with --eval: all pairs, or the train/val part "
        "of the split the checkpoint was trained with, as recorded in split.json beside it (default all)",
    )
    p.add_argument("--tta", action="store_true", default=None, help="with --eval: average each prediction with the "
                   "mirrored image's, as unet-infer --tta, to see what it gains")  # fmt: skip
    p.add_argument("--json", type=Path, metavar="FILE", help="with --eval: write the numbers (per image, per group, "
                   "per class) to FILE")  # fmt: skip
    add_progress_argument(p, default=None)
    return p


def _decays() -> str:
    return ", ".join(f"{wd:g} for {name}" for name, wd in DEFAULT_WEIGHT_DECAY.items())


def _rgb(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


#: Flags that shape a training run and mean nothing to --eval, which scores a checkpoint as it was trained.
TRAINING_ONLY = (
    "out", "epochs", "lr", "optimizer", "weight_decay", "schedule", "warmup_epochs", "accumulate", "clip_grad", "ema",
    "scale", "size", "max_side", "crop", "fg_fraction", "base_channels", "bilinear", "attention", "deep_supervision",
    "loss", "seed", "val_fraction", "folds", "fold",
    "augment", "cache", "amp", "deterministic", "patience", "lr_patience", "monitor", "mean", "std", "pos_weight",
    "class_weights", "threshold", "max_minutes", "sync_bn", "dist_timeout", "resume", "init",
)  # fmt: skip


def _eval(args: argparse.Namespace) -> int:
    given = [f"--{k.replace('_', '-')}" for k in TRAINING_ONLY if getattr(args, k, None) is not None]
    if given:
        what = "is a training flag: leave it out" if len(given) == 1 else "are training flags: leave them out"
        raise UnetkitError(f"--eval scores {args.eval} as it was trained (its resize rule, normalization, threshold "
                           f"and loss); {', '.join(given)} {what}")  # fmt: skip
    data, folders = resolve_folders(args)
    if data is None:
        raise UnetkitError(f"--eval {args.eval}: say which data to score it on: --data DIR (or --images and --masks)")
    if args.batch_size is not None and args.batch_size < 1:
        raise UnetkitError("--batch-size must be at least 1")
    settings = EvalSettings(
        split=args.split, layout=args.layout or "auto", folders=folders, group_by=args.group_by,
        mask_threshold=args.mask_threshold, batch_size=args.batch_size, device=args.device or "auto",
        workers=args.workers if args.workers is not None else DEFAULTS.workers, progress=args.progress is not False,
        tta=bool(args.tta),
    )  # fmt: skip
    check_outputs([("--json", args.json, FILE)])  # looks, creates nothing
    report = evaluate_checkpoint(args.eval, data, settings)
    print("\n".join(report.lines()))
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(report.to_dict(), indent=1) + "\n")
        print(f"  numbers: {args.json}")
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    # what importing the trainer needs, and augmentation unless --no-augment (a resumed run: checked below, as recorded)
    require_training_stack(augment=args.augment is not False and not args.resume)
    from .distributed import training_processes
    from .fit import fit, resume_config  # TensorBoard is imported only when training, albumentations when augmenting

    if args.scale is not None and (args.size is not None or args.max_side is not None):
        raise UnetkitError("--size and --max-side replace --scale: give one of the three")
    dist = torchrun_env(os.environ)  # None: a single process, as without torchrun
    data, folders = resolve_folders(args)
    if args.folds is not None and args.val_fraction is not None:
        raise UnetkitError("--folds deals the images into folds of 1/K each: leave out --val-fraction")
    if args.tta:
        raise UnetkitError("--tta scores a checkpoint with test-time augmentation: give it with --eval (or to "
                           "unet-infer)")  # fmt: skip
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("resume", "eval", "split", "json")}
    if data is not None and (args.data is not None or not args.resume):  # absolute, so --resume and export's
        given["data"] = data  # calibration find it from any folder; a resume derives it only from moved folders
    if folders is not None:
        given.update(images=folders.images, masks=folders.masks)
    if args.cache is not None:
        given["cache"] = absolute(args.cache)
    if args.init is not None:
        given["init"] = absolute(args.init)
        if not args.resume:  # a resumed run's weights come from its last.pth; its settings are recorded there
            given = inherited_settings(given["init"], given)
    if args.resume:
        path, out = _resume_paths(args)
        if not path.exists() and out.is_dir() and not run_files(out) and (out / SPLIT_FILE).exists():
            raise UnetkitError(f"--resume: {out} holds no {path.name}, as its run stopped before its first epoch "
                               "ended; start it again: the same command without --resume")  # fmt: skip
        cfg, checkpoint = resume_config(TrainConfig(data=Path("."), out=out), path, given)
        stale = remove_stale_temps(out)  # a checkpoint write cut short by SIGKILL (the OOM killer)
        if stale and (dist is None or dist.is_main):
            print(f"removed {stale} temporary file(s) that a killed run left in {out}", flush=True)
    else:
        if data is None:
            raise UnetkitError(
                "--data (a data set folder) or --images and --masks are required; try `unet-data synth --out "
                "data/synth`"
            )
        given["out"] = _new_run_dir(args.out)
        cfg, checkpoint = TrainConfig(**given), None
        if cfg.crop and args.scale is None and cfg.resize_flag == "--scale" and (dist is None or dist.is_main):
            print(f"note: --crop cuts its windows from inputs at the default --scale {cfg.scale:g}; give --scale 1 "
                  "to train on full-resolution windows", flush=True)  # fmt: skip
    require_training_stack(cfg.augment)  # a resumed run augments as it did at the start
    check_outputs([("--out", cfg.out, FOLDER), ("--cache", cfg.cache, FOLDER)])  # looks, creates nothing
    with training_processes(cfg, dist) as ddp:  # joins torchrun's process group for the run
        result = fit(cfg, checkpoint, ddp)
    if dist is not None and not dist.is_main:
        return EXIT_OK
    best = (f"best validation Dice {result.best_dice:.4f}" if cfg.monitor == "dice" else
            f"best validation loss {result.best_loss:.4f} (Dice {result.best_dice:.4f})")  # fmt: skip
    print(
        f"{best} at epoch {result.best_epoch} "
        f"({result.epochs_run} epoch{'' if result.epochs_run == 1 else 's'}"
        f"{', stopped early' if result.stopped_early else ''}"
        f"{', time limit reached' if result.out_of_time else ''}); "
        f"checkpoint: {result.run_dir / 'best.pth'}"
    )
    _final_eval(cfg, result.run_dir / "best.pth")
    return EXIT_OK


def _final_eval(cfg: TrainConfig, best: Path) -> None:
    """The best checkpoint on the validation side, per image and per group at the original size, with the
    worst images drawn and the numbers written beside it."""
    settings = EvalSettings(
        split="val", layout=cfg.layout, folders=cfg.folders, group_by=cfg.group_by,
        mask_threshold=cfg.mask_threshold, device=cfg.device, workers=cfg.workers, progress=cfg.progress,
        replace_picture=True,
    )  # fmt: skip
    report = evaluate_checkpoint(best, cfg.data, settings)
    stem = report_stem(best, cfg.data, "val")
    numbers = stem.with_name(stem.name + ".json")
    write_text_atomic(numbers, json.dumps(report.to_dict(), indent=1) + "\n")
    print("\n".join(report.lines()))
    print(f"  numbers: {numbers}")


def _new_run_dir(out: Path | None) -> Path:
    """A new run's folder: one given must hold no run; the default moves on to the next free name."""
    if out is not None:
        found = run_files(out)
        if found:
            raise UnetkitError(f"--out {out}: holds an earlier run ({', '.join(found)}); continue it with "
                               "--resume, or choose a new folder")  # fmt: skip
        return out
    free = next_free_run_dir(DEFAULTS.out)
    if free != DEFAULTS.out:
        print(f"{DEFAULTS.out} holds an earlier run: this run goes to {free}", flush=True)
    return free


def _resume_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(last.pth to resume, run folder): --resume FILE continues in FILE's folder, plain --resume in --out's."""
    if args.resume is True:
        out = args.out or DEFAULTS.out
        return out / "last.pth", out
    path = Path(args.resume)
    if args.out is not None and args.out.resolve() != path.parent.resolve():
        raise UnetkitError(f"--out {args.out}: --resume {path} continues the run in {path.parent}; leave --out out "
                           "or name that folder")  # fmt: skip
    return path, path.parent


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.eval is not None:
        return run_cli(PROG, lambda: _eval(args))
    return run_cli(PROG, lambda: _train(args))


if __name__ == "__main__":
    raise SystemExit(main())
