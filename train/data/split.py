"""Train/validation splits that keep samples that belong together on one side, recorded per run.

Views of one car (or frames of one video, slices of one patient) are near-copies of each other: with one on
each side, validation measures memory, not generalization. Pairs are therefore grouped by a key and whole
groups are assigned, in a seeded order, to validation until it holds about `val_fraction` of the images.

Group rules (`--group-by`):
- `auto` (the default): Carvana names `<car>_<NN>` (layouts carvana and kaggle-carvana) group by car, a name
  without the `_<NN>` ending is its own group; Cityscapes without a val/ folder groups by city; every other
  layout splits per image (give a pattern where its images come in groups);
- `none`: every image is its own group;
- any other text is a regular expression searched in each image's file name without its extension; its first
  capture group is the key (e.g. `^(patient\\d+)_` or `^(\\w+?)-frame`).

Cityscapes keeps its official train/val split whatever the rule. The split a run trained with is written to
RUN/split.json (file lists relative to the data folder, the rule and the seed), so `unet-train --eval --split`
and `--resume` use exactly that split, and refuse when the data set no longer matches it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unetkit.core.atomic import write_text_atomic
from unetkit.core.errors import DataError

from .layouts import DatasetIndex, Pair

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
SPLIT_FORMAT = "unetkit.split"
CARVANA_NAME = re.compile(r"^(.+)_\d+$")
#: The seed of k-fold partitions (nnU-Net's 12345): not --seed, which runs of different folds may vary, as that
#: would deal each fold's run another partition (folds overlapping, images never validated).
FOLD_SEED = 12345
#: What `--group-by auto` means for each layout (layouts not listed split per image).
AUTO_RULES = {"carvana": "car", "kaggle-carvana": "car", "cityscapes": "city"}


@dataclass
class Split:
    """Which pairs train and which validate, and how that was decided."""

    train: list[Pair]
    val: list[Pair]
    rule: str  # what the groups are, in words
    keys: dict[Path, str]  # image path -> group key, for every pair

    def groups(self, side: str) -> int:
        pairs = self.val if side == "val" else self.train
        return len({self.keys[p.image] for p in pairs})

    def describe(self) -> str:
        return (
            f"{len(self.train)} train / {len(self.val)} val images, {self.groups('train')} / {self.groups('val')} "
            f"groups ({self.rule})"
        )


def group_key_fn(group_by: str, layout: str) -> tuple[Callable[[Pair], str], str]:
    """The function from a pair to its group key, and the rule in words; a bad pattern is a DataError."""
    if group_by == "none":
        return (lambda p: p.image.stem), "one group per image"
    if group_by == "auto":
        kind = AUTO_RULES.get(layout)
        if kind == "car":
            return _carvana_car, "grouped by car: <car>_<NN> names"
        if kind == "city":
            return (lambda p: p.image.stem.split("_")[0]), "grouped by city"
        return (lambda p: p.image.stem), "one group per image"
    try:
        pattern = re.compile(group_by)
    except re.error as exc:
        raise DataError(f"--group-by '{group_by}': not a regular expression ({exc})") from None
    if pattern.groups < 1:
        raise DataError(f"--group-by '{group_by}': needs a capture group, e.g. '^([^_]+)_' (its match is the key)")

    def key(pair: Pair) -> str:
        found = pattern.search(pair.image.stem)
        if found is None or found.group(1) is None:
            raise DataError(f"{pair.image}: --group-by '{group_by}' does not match its name '{pair.image.stem}'")
        return found.group(1)

    return key, f"grouped by --group-by '{group_by}'"


def _carvana_car(pair: Pair) -> str:
    found = CARVANA_NAME.match(pair.image.stem)
    return found.group(1) if found else pair.image.stem


def assign_groups(keys: Sequence[str], val_fraction: float, seed: int) -> list[bool]:
    """Whether each item goes to validation: whole groups, in a seeded order, taken while a group brings the
    validation count closer to `val_fraction` of the items; at least one group on each side."""
    groups: dict[str, int] = {}
    for key in keys:
        groups[key] = groups.get(key, 0) + 1
    names = sorted(groups)
    if len(names) < 2:
        raise DataError(
            f"all {len(keys)} image(s) are in one group ('{names[0] if names else ''}'): a split needs at least "
            "2 groups; use --group-by none to split per image, or another --group-by pattern"
        )
    target = len(keys) * val_fraction
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen: set[str] = set()
    count = 0
    for i in order:
        name = names[i]
        closer = not chosen or abs(count + groups[name] - target) < abs(count - target)
        if closer and len(chosen) + 1 < len(names):  # always keep a group for training
            chosen.add(name)
            count += groups[name]
    return [key in chosen for key in keys]


def fold_groups(keys: Sequence[str], folds: int, seed: int) -> list[int]:
    """The fold (0..folds-1) of each item for k-fold cross-validation: whole groups, the largest first (in a
    seeded order among equals), each to the fold holding the fewest images so far, so the folds' sizes differ
    by at most one group; a DataError when there are fewer groups than folds."""
    groups: dict[str, int] = {}
    for key in keys:
        groups[key] = groups.get(key, 0) + 1
    names = sorted(groups)
    if len(names) < folds:
        raise DataError(f"--folds {folds}: the {len(keys)} image(s) form {len(names)} group(s), fewer than the folds; "
                        "use fewer folds, or --group-by none to split per image")  # fmt: skip
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = sorted((names[i] for i in order), key=lambda name: -groups[name])  # stable: seeded among equals
    loads, fold_of = [0] * folds, {}
    for name in shuffled:
        fold = min(range(folds), key=lambda f: loads[f])
        fold_of[name] = fold
        loads[fold] += groups[name]
    return [fold_of[key] for key in keys]


def per_image(n: int, val_fraction: float, seed: int) -> list[bool]:
    """The per-image split of the first releases, kept exactly so their runs resume and evaluate on the
    images they validated on: a seeded permutation, its first round(n * val_fraction) to validation."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    chosen = set(order[:n_val])
    return [i in chosen for i in range(n)]


def make_split(
    index: DatasetIndex, group_by: str, val_fraction: float, seed: int, folds: tuple[int, int] | None = None
) -> Split:
    """The official split where the data set has one (Cityscapes), else a seeded split by groups: about
    `val_fraction` of the images to validation, or with `folds` (K, I) fold I of K (`fold_groups`, dealt with
    FOLD_SEED whatever `seed` is)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    pairs = index.pairs
    key_of, rule = group_key_fn(group_by, index.layout)
    keys = {p.image: key_of(p) for p in pairs}
    if any(p.split == "val" for p in pairs):
        if folds is not None:
            raise DataError(f"{index.root}: has its own validation split (a val/ folder); --folds splits a data set "
                            "that has none")  # fmt: skip
        train = [p for p in pairs if p.split != "val"]
        return Split(train, [p for p in pairs if p.split == "val"], "the data set's official split", keys)
    if index.layout == "cityscapes":
        log.warning("warning: %s has no leftImg8bit/val/ folder: using a seeded split of train/ instead", index.root)
    if len(pairs) < 2:
        raise DataError(f"{len(pairs)} image/mask pair(s): at least 2 are needed to train and validate")
    if folds is not None:  # one partition for every fold's run, whatever --seed each run trains with
        count, fold = folds
        of = fold_groups([keys[p.image] for p in pairs], count, FOLD_SEED)
        train = [p for p, f in zip(pairs, of, strict=True) if f != fold]
        val = [p for p, f in zip(pairs, of, strict=True) if f == fold]
        return Split(train, val, f"{rule}; fold {fold} of {count}", keys)
    if group_by == "none":
        is_val = per_image(len(pairs), val_fraction, seed)
    else:
        is_val = assign_groups([keys[p.image] for p in pairs], val_fraction, seed)
    train = [p for p, v in zip(pairs, is_val, strict=True) if not v]
    val = [p for p, v in zip(pairs, is_val, strict=True) if v]
    share = len(val) / len(pairs)
    if group_by != "none" and abs(share - val_fraction) > max(0.1, val_fraction / 2):
        log.warning("warning: the split puts %d of %d images (%.0f%%) in validation, not the %.0f%% asked: groups "
                    "go whole to one side, and there are %d; --group-by none splits per image", len(val), len(pairs),
                    100 * share, 100 * val_fraction, len(set(keys.values())))  # fmt: skip
    return Split(train, val, rule, keys)


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def split_record(
    split: Split,
    index: DatasetIndex,
    group_by: str,
    val_fraction: float,
    seed: int,
    folds: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """What split.json holds: the pairs of each side relative to the data folder, and the rule and seed."""
    rule: dict[str, Any] = {"group_by": group_by, "groups": split.rule, "val_fraction": val_fraction, "seed": seed}
    if folds is not None:  # the fraction and seed played no part in it
        rule.update(folds=folds[0], fold=folds[1], fold_seed=FOLD_SEED)
        del rule["val_fraction"], rule["seed"]
    return {
        "format": SPLIT_FORMAT,
        "version": 1,
        "data": str(index.root),
        "layout": index.layout,
        "rule": rule,
        "groups": {"train": split.groups("train"), "val": split.groups("val")},
        "train": [[_relative(p.image, index.root), _relative(p.mask, index.root)] for p in split.train],
        "val": [[_relative(p.image, index.root), _relative(p.mask, index.root)] for p in split.val],
    }


def write_split(path: str | os.PathLike, record: dict[str, Any]) -> None:
    write_text_atomic(Path(path), json.dumps(record, indent=1) + "\n")


def read_split(path: str | os.PathLike, index: DatasetIndex) -> Split:
    """The split recorded at `path`, applied to `index`; a DataError when the files no longer match it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        sides = {side: [(str(a), str(b)) for a, b in record[side]] for side in ("train", "val")}
        rule = record["rule"]
        group_by = str(rule["group_by"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable split record ({type(exc).__name__}: {exc})") from None
    if record.get("format") != SPLIT_FORMAT:
        raise DataError(f"{path}: not a unetkit split record")
    by_name = {(_relative(p.image, index.root), _relative(p.mask, index.root)): p for p in index.pairs}
    recorded = set(sides["train"]) | set(sides["val"])
    missing = sorted(recorded - set(by_name))
    new = sorted(set(by_name) - recorded)
    if missing or new:
        parts = []
        if missing:
            parts.append(f"{len(missing)} recorded pair(s) are missing (e.g. {missing[0][0]})")
        if new:
            parts.append(f"{len(new)} pair(s) are new (e.g. {new[0][0]})")
        raise DataError(
            f"{path}: the data set at {index.root} does not match the split this run was trained with: "
            f"{' and '.join(parts)}"
        )
    key_of, words = group_key_fn(group_by, index.layout)
    keys = {p.image: key_of(p) for p in index.pairs}
    train, val = [by_name[k] for k in sides["train"]], [by_name[k] for k in sides["val"]]
    return Split(train, val, str(rule.get("groups", words)), keys)
