"""One folder over K parts (processes, GPUs, machines), and one Kaggle CSV merged from their part CSVs.

Part I of K takes files I, I+K, I+2K, ... of the sorted list, as nnU-Net's -num_parts/-part_id does: it
depends on the folder alone, so separate jobs agree without talking, parts differ by at most one file, and
each part's files spread over the whole list. With --rle a part writes `<name>.part-I-of-K.csv` and a
manifest `<name>.part-I-of-K.json` (written last: the part is complete once it exists) that says which
folder, model and part it is; the merge checks every manifest before it writes `<name>.csv` in the order a
single process would have written it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from unetkit.core.atomic import atomic_path, write_text_atomic
from unetkit.core.distributed import DistEnv
from unetkit.core.errors import UnetkitError
from unetkit.core.meta import ModelMeta

from .artifacts import sha256_file
from .io import Item

T = TypeVar("T")
MANIFEST_FORMAT = "unetkit.infer-part"
#: What must be the same in every part for their rows to make one submission (with the checkpoint's digest).
MODEL_KEYS = ("n_classes", "scale", "resize", "input_size", "max_side", "mean", "std", "threshold", "mask_kind")
_PART_NAME = re.compile(r"\.part-(\d+)-of-(\d+)\.json$")


@dataclass(frozen=True)
class Part:
    """Part `index` (0-based) of `count`, chosen by `by` (--part-id or torchrun)."""

    index: int
    count: int
    by: str = "--part-id"

    def select(self, items: Sequence[T]) -> list[T]:
        """This part's share of the sorted `items`: every count-th one from `index`."""
        return list(items[self.index :: self.count])

    def describe(self, n: int) -> str:
        """Which part this is and how many of the n files it owns (and how the others fare)."""
        sizes = part_sizes(n, self.count)
        spread = f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)} or {max(sizes)}"
        first = ", ".join(str(i) for i in range(self.index, min(n, self.index + 3 * self.count), self.count))
        return (
            f"part {self.index} of {self.count} ({self.by}): {sizes[self.index]} of {n} images (sorted files "
            f"{first or 'none'}{', ...' if sizes[self.index] > 3 else ''}); each part owns {spread}"
        )

    def path(self, csv_path: Path, suffix: str = ".csv") -> Path:
        """submission.csv -> submission.part-I-of-K.csv (or .json for the manifest)."""
        return csv_path.with_name(f"{csv_path.stem}.part-{self.index}-of-{self.count}{suffix}")


def part_sizes(n: int, count: int) -> list[int]:
    """Files per part for n files in `count` strided parts: the first n % count parts get one more."""
    return [len(range(i, n, count)) for i in range(count)]


def choose_part(num_parts: int | None, part_id: int | None, dist: DistEnv | None) -> Part | None:
    """The part this process runs: from --num-parts/--part-id, else from torchrun's RANK and WORLD_SIZE, else
    None (the whole folder). Every inconsistency is one UnetkitError, before any work."""
    if num_parts is None and part_id is None:
        return Part(dist.rank, dist.world_size, "torchrun") if dist is not None else None
    if dist is not None:
        raise UnetkitError(
            "--num-parts/--part-id and torchrun both split the folder: under torchrun each rank takes its part "
            "by itself, so leave the flags out"
        )
    if num_parts is None:
        raise UnetkitError(f"--part-id {part_id} needs --num-parts (how many parts the folder is split into)")
    if num_parts < 1:
        raise UnetkitError(f"--num-parts {num_parts}: must be at least 1")
    if part_id is None:
        raise UnetkitError(f"--num-parts {num_parts} needs --part-id (which part this is, 0 to {num_parts - 1})")
    if not 0 <= part_id < num_parts:
        raise UnetkitError(f"--part-id {part_id} with --num-parts {num_parts}: parts are numbered 0 to {num_parts - 1}")
    return Part(part_id, num_parts)


def sort_key(relative: str) -> tuple[str, ...]:
    """The order `io.discover` lists files in (paths compare part by part), for a CSV row's `img` name."""
    return PurePosixPath(relative).parts


def folder_fingerprint(items: Sequence[Item]) -> str:
    """SHA-256 of the whole sorted file list: parts of one run agree on it, parts of different folders don't."""
    return hashlib.sha256("\n".join(it.relative.as_posix() for it in items).encode()).hexdigest()


def model_identity(meta: ModelMeta) -> dict[str, Any]:
    """What decides a mask: parts run by different engines agree on it, different models do not."""
    values = meta.to_dict()
    return {key: values[key] for key in MODEL_KEYS}


def write_manifest(
    part: Part,
    csv_path: Path,
    all_items: Sequence[Item],
    failed: Sequence[str],
    meta: ModelMeta,
    engine: str,
    checkpoint_sha256: str,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Record a finished part beside its CSV (atomically, after the CSV); returns the manifest's path.
    `checkpoint_sha256` names the weights (an exported file's is its checkpoint's: `record.model_identity`)."""
    part_csv = part.path(csv_path)
    with open(part_csv, newline="") as f:
        rows = sum(1 for _ in csv.reader(f)) - 1
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "part": part.index,
        "parts": part.count,
        "folder_files": len(all_items),
        "folder_sha256": folder_fingerprint(all_items),
        "files": len(part.select(all_items)),
        "rows": rows,
        "failed": list(failed),
        "csv": part_csv.name,
        "csv_sha256": sha256_file(part_csv),
        "model": model_identity(meta),
        "checkpoint_sha256": checkpoint_sha256,
        "engine": engine,
        "settings": settings,  # tiling, TTA, post-processing (record.mask_settings): they decide the masks too
    }
    path = part.path(csv_path, ".json")
    write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return path


@dataclass
class MergeResult:
    path: Path
    parts: int
    rows: int
    failed: list[str]


def merge_parts(csv_path: Path) -> MergeResult:
    """Write `csv_path` from every `<name>.part-I-of-K.csv`, rows in the folder's sorted order; refuses with
    one UnetkitError when a part is missing or unfinished, or the parts disagree (folder, count, model)."""
    manifests = _manifests(csv_path)
    rows: list[list[str]] = []
    failed: list[str] = []
    for path, manifest in manifests:
        part_csv = path.with_name(Path(manifest["csv"]).name)
        if not part_csv.exists() or sha256_file(part_csv) != manifest["csv_sha256"]:
            raise UnetkitError(f"{part_csv}: missing or changed since its part finished; run that part again")
        with open(part_csv, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != ["img", "rle_mask"]:
                raise UnetkitError(f"{part_csv}: not a part CSV (its header is {header})")
            rows.extend(reader)
        failed.extend(manifest["failed"])
    names = [row[0] for row in rows]
    if len(set(names)) != len(names):
        raise UnetkitError(f"{csv_path.name}: the parts hold some images twice; they were not split from one run")
    expected = manifests[0][1]["folder_files"]
    if len(rows) + len(failed) != expected:
        raise UnetkitError(
            f"{csv_path.name}: the parts hold {len(rows)} rows and {len(failed)} failures for a folder of "
            f"{expected} images"
        )
    rows.sort(key=lambda row: sort_key(row[0]))
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")  # the dialect infer.writer writes a single run's CSV in
        out.writerow(["img", "rle_mask"])
        out.writerows(rows)
    return MergeResult(csv_path, len(manifests), len(rows), sorted(failed, key=sort_key))


def _finished_parts(csv_path: Path) -> list[tuple[Path, int, int]]:
    """(manifest, part, count) of every finished part beside `csv_path`, of any split."""
    found = sorted(csv_path.parent.glob(f"{_glob_escape(csv_path.stem)}.part-*-of-*.json"))
    parsed = [(p, _PART_NAME.search(p.name)) for p in found]
    return [(p, int(m.group(1)), int(m.group(2))) for p, m in parsed if m]


def check_no_other_split(csv_path: Path, count: int) -> None:
    """UnetkitError, before any work, when parts of a split into another number of parts lie beside the CSV:
    the merge would refuse them only after every part had run."""
    others = sorted({k for _, _, k in _finished_parts(csv_path) if k != count})
    if others:
        first = next(p for p, _, k in _finished_parts(csv_path) if k == others[0])
        raise UnetkitError(
            f"{csv_path.name}: parts of a split into {' and '.join(map(str, others))} lie beside it (e.g. "
            f"{first.name}), and this run splits into {count}; remove the stale parts (or choose another --rle)"
        )


def _manifests(csv_path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every part's manifest, checked to come from one split of one folder with one model."""
    named = _finished_parts(csv_path)
    if not named:
        raise UnetkitError(
            f"{csv_path}: no finished parts ({csv_path.stem}.part-I-of-K.json) beside it; run unet-infer with "
            f"--rle {csv_path.name} --num-parts K --part-id I first"
        )
    counts = sorted({k for _, _, k in named})
    if len(counts) > 1:
        raise UnetkitError(
            f"{csv_path.name}: parts of different splits lie beside it (of {' and of '.join(map(str, counts))}); "
            "remove the stale ones"
        )
    count = counts[0]
    have = {i: p for p, i, _ in named}
    missing = [i for i in range(count) if i not in have]
    if missing:
        absent = Part(missing[0], count).path(csv_path, ".json")
        raise UnetkitError(
            f"{absent}: missing: part(s) {', '.join(map(str, missing))} of {count} have not finished (run "
            f"unet-infer ... --num-parts {count} --part-id {missing[0]})"
        )
    out: list[tuple[Path, dict[str, Any]]] = []
    for i in range(count):
        path = have[i]
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UnetkitError(f"{path}: unreadable part manifest ({exc})") from None
        if manifest.get("format") != MANIFEST_FORMAT or (manifest.get("part"), manifest.get("parts")) != (i, count):
            raise UnetkitError(f"{path}: not the manifest of part {i} of {count}")
        out.append((path, manifest))
    reference = out[0][1]
    dated = [p.name for p, m in out if "checkpoint_sha256" not in m]
    if dated and len(dated) < len(out):
        raise UnetkitError(
            f"{csv_path.name}: {', '.join(dated)} was written by an earlier unetkit (no checkpoint digest), the "
            "other parts by this one; run those parts again"
        )
    for path, manifest in out[1:]:
        for key, how in (("folder_sha256", "on another folder"), ("checkpoint_sha256", "with another checkpoint"),
                         ("model", "with other model settings (resize, normalization, threshold)"),
                         ("settings", "with other tiling, TTA or post-processing")):  # fmt: skip
            if manifest.get(key) != reference.get(key):
                raise UnetkitError(
                    f"{path}: part {manifest['part']} ran {how} than part 0 ({out[0][0].name}); "
                    "the parts do not make one submission"
                )
    return out


def _glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)
