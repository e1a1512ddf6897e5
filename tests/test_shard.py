"""unet-infer over several parts: the partition, separate jobs merged by `unet-infer merge`, ranks under torchrun."""

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import error_lines, run_cli, run_torchrun
from unetkit.core.distributed import DistEnv
from unetkit.core.errors import UnetkitError
from unetkit.core.meta import ModelMeta
from unetkit.infer.io import discover
from unetkit.infer.shard import Part, choose_part, merge_parts, part_sizes, sort_key, write_manifest
from unetkit.train.data.synth import write_synthetic

# --batch 1: each image is computed alone whatever part it is in, so masks are bit for bit comparable
FAST = ["--device", "cpu", "--no-progress", "--batch", "1", "--workers", "2"]


# ---- the partition ----------------------------------------------------------------------------------------------
def test_parts_are_strided_slices_that_cover_the_sorted_files_once():
    files = [f"{i:03d}.jpg" for i in range(11)]
    parts = [Part(i, 4).select(files) for i in range(4)]
    assert parts[1] == ["001.jpg", "005.jpg", "009.jpg"]
    assert sorted(f for p in parts for f in p) == files
    assert [len(p) for p in parts] == part_sizes(11, 4) == [3, 3, 3, 2]
    assert part_sizes(2, 3) == [1, 1, 0]  # more parts than files: the last one owns nothing
    assert Part(1, 4).describe(11) == (
        "part 1 of 4 (--part-id): 3 of 11 images (sorted files 1, 5, 9); each part owns 2 or 3"
    )
    assert Part(0, 2, "torchrun").path(Path("out/sub.csv")).as_posix() == "out/sub.part-0-of-2.csv"


def test_the_part_comes_from_the_flags_or_from_torchrun():
    assert choose_part(None, None, None) is None
    assert choose_part(3, 2, None) == Part(2, 3)
    assert choose_part(None, None, DistEnv(1, 2, 1, 2)) == Part(1, 2, "torchrun")
    assert choose_part(None, None, DistEnv(0, 1)) == Part(0, 1, "torchrun")  # one GPU: a part of one, merged


@pytest.mark.parametrize(
    "num_parts, part_id, dist, message",
    [
        (2, 2, None, "--part-id 2 with --num-parts 2: parts are numbered 0 to 1"),
        (2, -1, None, "--part-id -1 with --num-parts 2: parts are numbered 0 to 1"),
        (0, 0, None, "--num-parts 0: must be at least 1"),
        (None, 1, None, "--part-id 1 needs --num-parts"),
        (4, None, None, "--num-parts 4 needs --part-id (which part this is, 0 to 3)"),
        (2, 0, DistEnv(0, 2), "--num-parts/--part-id and torchrun both split the folder"),
    ],
)
def test_a_bad_part_is_one_clear_error(num_parts, part_id, dist, message):
    with pytest.raises(UnetkitError, match=re.escape(message)):
        choose_part(num_parts, part_id, dist)


def test_the_merge_order_is_the_order_files_are_found_in(tmp_path):
    for name in ("a-b.jpg", "a/b.jpg", "a/c/d.jpg", "B.jpg", "a.jpg", "a0.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [it.relative.as_posix() for it in discover(tmp_path, tmp_path / "out", recursive=True)]
    assert sorted(found, key=sort_key) == found


# ---- real runs --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard_data")
    write_synthetic(root, 7, (192, 128), seed=3, progress=False)
    return root / "train"


@pytest.fixture(scope="module")
def single(tmp_path_factory, folder, random_checkpoint):
    """The whole folder in one process: the reference outputs."""
    out = tmp_path_factory.mktemp("single")
    run_cli("unet-infer", folder, "--checkpoint", random_checkpoint, "--out", out / "masks", "--rle", out / "sub.csv",
            *FAST, check=True)  # fmt: skip
    return out


def _same_masks(a, b):
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) == 7 + 1  # and the model's record
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


@pytest.mark.slow
def test_two_jobs_and_a_merge_match_one_process_byte_for_byte(tmp_path, folder, random_checkpoint, single):
    csv = tmp_path / "sub.csv"
    common = [folder, "--checkpoint", random_checkpoint, "--out", tmp_path / "masks", "--rle", csv, *FAST]
    first = run_cli("unet-infer", *common, "--num-parts", "2", "--part-id", "1", check=True)
    assert "part 1 of 2 (--part-id): 3 of 7 images (sorted files 1, 3, 5); each part owns 3 or 4" in first.stdout
    assert "part 1 of 2: 3 images: 3 written" in first.stdout
    early = run_cli("unet-infer", "merge", csv)  # part 0 has not run: refused, nothing written
    assert early.returncode == 2 and not csv.exists()
    assert error_lines(early) == [
        f"unet-infer: error: {tmp_path / 'sub.part-0-of-2.json'}: missing: part(s) 0 of 2 have not finished (run "
        "unet-infer ... --num-parts 2 --part-id 0)"
    ]
    run_cli("unet-infer", *common, "--num-parts", "2", "--part-id", "0", check=True)
    merged = run_cli("unet-infer", "merge", csv, check=True)
    assert f"merged 2 part(s) into {csv}: 7 rows, 0 failed image(s)" in merged.stdout
    assert csv.read_bytes() == (single / "sub.csv").read_bytes()
    _same_masks(tmp_path / "masks", single / "masks")
    manifest = json.loads((tmp_path / "sub.part-0-of-2.json").read_text())
    assert (manifest["part"], manifest["parts"], manifest["files"], manifest["rows"]) == (0, 2, 4, 4)

    # --resume works per part: part 0 redoes only its missing mask, and the merge is the same again
    (tmp_path / "masks" / sorted(p.name for p in folder.iterdir())[2]).with_suffix(".png").unlink()
    again = run_cli("unet-infer", *common, "--num-parts", "2", "--part-id", "0", "--resume", check=True)
    assert "part 0 of 2: 4 images: 1 written, 3 skipped (--resume), 0 failed" in again.stdout
    run_cli("unet-infer", "merge", csv, check=True)
    assert csv.read_bytes() == (single / "sub.csv").read_bytes()
    _same_masks(tmp_path / "masks", single / "masks")

    # parts that do not belong together are refused with one line
    (tmp_path / "sub.part-1-of-2.csv").write_text("img,rle_mask\n")
    changed = run_cli("unet-infer", "merge", csv)
    assert changed.returncode == 2
    assert error_lines(changed) == [
        f"unet-infer: error: {tmp_path / 'sub.part-1-of-2.csv'}: missing or changed since its part finished; run "
        "that part again"
    ]
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    (other / next(other.iterdir()).name).unlink()
    run_cli("unet-infer", other, "--checkpoint", random_checkpoint, "--out", tmp_path / "m2", "--rle", csv, *FAST,
            "--num-parts", "2", "--part-id", "1", check=True)  # fmt: skip
    mixed = run_cli("unet-infer", "merge", csv)
    assert mixed.returncode == 2
    assert error_lines(mixed) == [
        f"unet-infer: error: {tmp_path / 'sub.part-1-of-2.json'}: part 1 ran on another folder than part 0 "
        "(sub.part-0-of-2.json); the parts do not make one submission"
    ]
    (tmp_path / "sub.part-0-of-3.json").write_text("{}")
    stale = run_cli("unet-infer", "merge", csv)
    assert error_lines(stale) == [
        "unet-infer: error: sub.csv: parts of different splits lie beside it (of 2 and of 3); remove the stale ones"
    ]


@pytest.mark.slow
def test_two_torchrun_ranks_match_one_process_byte_for_byte(tmp_path, folder, random_checkpoint, single):
    csv = tmp_path / "sub.csv"
    proc = run_torchrun(2, "unetkit.infer", folder, "--checkpoint", random_checkpoint, "--out", tmp_path / "masks",
                        "--rle", csv, *FAST, "--dist-timeout", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "part 0 of 2 (torchrun): 4 of 7 images" in proc.stdout
    assert "part 1 of 2 (torchrun): 3 of 7 images" in proc.stdout
    assert proc.stdout.count("merged 2 part(s)") == 1  # rank 0 merged, once
    assert csv.read_bytes() == (single / "sub.csv").read_bytes()
    _same_masks(tmp_path / "masks", single / "masks")


def test_a_bad_part_range_stops_the_cli_before_work(tmp_path, folder, random_checkpoint):
    proc = run_cli("unet-infer", folder, "--checkpoint", random_checkpoint, "--out", tmp_path / "m", *FAST,
                   "--num-parts", "3", "--part-id", "3")  # fmt: skip
    assert proc.returncode == 2
    assert error_lines(proc) == ["unet-infer: error: --part-id 3 with --num-parts 3: parts are numbered 0 to 2"]
    assert not (tmp_path / "m").exists()


def test_parts_of_other_weights_or_resize_rules_are_not_merged(tmp_path):
    """Two checkpoints of one architecture and settings give different masks: the digest tells them apart, and
    a model resized another way gives masks of another resolution."""
    for name in ("a.png", "b.png"):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    items = discover(tmp_path / "in", tmp_path / "out")
    csv, meta = tmp_path / "sub.csv", ModelMeta(n_classes=1, scale=0.5)

    def part(i: int, digest: str, meta: ModelMeta, settings: dict | None = None) -> None:
        Part(i, 2).path(csv).write_text(f"img,rle_mask\n{items[i].relative.as_posix()},1 2\n")
        write_manifest(Part(i, 2), csv, items, [], meta, "torch fp32", digest, settings or {"tile": 0})

    part(0, "a" * 64, meta)
    part(1, "b" * 64, meta)
    with pytest.raises(UnetkitError, match=r"sub.part-1-of-2.json: part 1 ran with another checkpoint than part 0"):
        merge_parts(csv)
    part(1, "a" * 64, meta.replace(resize="max_side", max_side=64))
    with pytest.raises(
        UnetkitError, match=r"part 1 ran with other model settings \(resize, normalization, threshold\) than part 0"
    ):
        merge_parts(csv)
    part(1, "a" * 64, meta, {"tile": 0, "tta": True})  # mirrored TTA (or another tiling) changes the masks too
    with pytest.raises(UnetkitError, match=r"part 1 ran with other tiling, TTA or post-processing than part 0"):
        merge_parts(csv)
    part(1, "a" * 64, meta)
    assert merge_parts(csv).rows == 2
    manifest = Part(0, 2).path(csv, ".json")
    old = json.loads(manifest.read_text())
    del old["checkpoint_sha256"]  # as unetkit wrote part manifests before they recorded the digest
    manifest.write_text(json.dumps(old))
    with pytest.raises(UnetkitError, match=r"sub.part-0-of-2.json was written by an earlier unetkit"):
        merge_parts(csv)


def test_a_part_with_another_split_beside_its_csv_stops_before_work(tmp_path, folder, random_checkpoint):
    (tmp_path / "sub.part-2-of-3.json").write_text("{}")
    proc = run_cli("unet-infer", folder, "--checkpoint", random_checkpoint, "--out", tmp_path / "m", "--rle",
                   tmp_path / "sub.csv", *FAST, "--num-parts", "2", "--part-id", "0")  # fmt: skip
    assert proc.returncode == 2
    assert error_lines(proc) == [
        "unet-infer: error: sub.csv: parts of a split into 3 lie beside it (e.g. sub.part-2-of-3.json), and this "
        "run splits into 2; remove the stale parts (or choose another --rle)"
    ]
    assert not (tmp_path / "m").exists()


def test_merge_without_parts_is_one_line(tmp_path):
    proc = run_cli("unet-infer", "merge", tmp_path / "sub.csv")
    assert proc.returncode == 2
    assert error_lines(proc) == [
        f"unet-infer: error: {tmp_path / 'sub.csv'}: no finished parts (sub.part-I-of-K.json) beside it; run "
        "unet-infer with --rle sub.csv --num-parts K --part-id I first"
    ]


@pytest.mark.gpu
def test_one_gpu_rank_under_torchrun(tmp_path, folder, random_checkpoint, single):
    """World size 1 on cuda:0: the torchrun path's smoke test on one GPU, merged by rank 0."""
    import numpy as np
    from PIL import Image

    from unetkit.core.metrics import mask_agreement

    csv = tmp_path / "sub.csv"
    args = ["--out", tmp_path / "masks", "--rle", csv, "--no-progress", "--batch", "1", "--precision", "fp32"]
    proc = run_torchrun(1, "unetkit.infer", folder, "--checkpoint", random_checkpoint, *args, "--dist-timeout", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "part 0 of 1 (torchrun): 7 of 7 images" in proc.stdout and "on cuda:0" in proc.stdout
    assert "merged 1 part(s)" in proc.stdout
    assert [r.split(",")[0] for r in csv.read_text().splitlines()] == [
        r.split(",")[0] for r in (single / "sub.csv").read_text().splitlines()
    ]
    for mask in sorted((single / "masks").iterdir()):
        a, b = (np.asarray(Image.open(p)) > 127 for p in (mask, tmp_path / "masks" / mask.name))
        assert mask_agreement(a, b, 1) > 0.98  # CUDA (TF32 convolutions) against the CPU reference
