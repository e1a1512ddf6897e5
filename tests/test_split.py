"""Group-aware splits: no group on both sides, the split recorded per run and reused by --eval and --resume."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import error_lines, run_cli
from unetkit.core.errors import DataError
from unetkit.train.data.layouts import Pair, index_dataset
from unetkit.train.data.split import assign_groups, group_key_fn, make_split
from unetkit.train.data.synth import write_synthetic


def test_assign_groups_keeps_groups_whole_and_is_seeded():
    keys = [f"g{i // 4}" for i in range(40)] + ["solo"]  # ten groups of 4 and one of 1
    a = assign_groups(keys, 0.2, seed=3)
    assert a == assign_groups(keys, 0.2, seed=3) and a != assign_groups(keys, 0.2, seed=4)
    for key in set(keys):
        sides = {v for k, v in zip(keys, a, strict=True) if k == key}
        assert len(sides) == 1, key  # a group is never on both sides
    assert 6 <= sum(a) <= 10  # about 20 % of 41 images, in whole groups
    assert any(a) and not all(a)


def test_assign_groups_needs_two_groups_and_keeps_one_for_training():
    with pytest.raises(DataError, match=r"all 3 image.*one group.*--group-by none"):
        assign_groups(["car", "car", "car"], 0.2, seed=0)
    assert assign_groups(["a", "b"], 0.9, seed=0).count(True) == 1  # never every group to validation


def test_carvana_names_group_by_car(synth_small):
    index = index_dataset(synth_small)  # 48 images: 3 cars x 16 views
    split = make_split(index, "auto", 0.2, seed=0)
    cars = lambda pairs: {p.image.stem.rsplit("_", 1)[0] for p in pairs}  # noqa: E731
    assert len(cars(split.val)) == 1 and len(cars(split.train)) == 2
    assert not cars(split.val) & cars(split.train)
    assert len(split.val) == 16 and split.rule == "grouped by car: <car>_<NN> names"
    per_image = make_split(index, "none", 0.2, seed=0)
    assert len(per_image.val) == 10 and cars(per_image.val) & cars(per_image.train)  # the old, leaky split


def test_group_by_pattern_and_its_errors(tmp_path):
    pairs = [Pair(tmp_path / f"patient{p}_slice{s}.png", tmp_path / "m.png") for p in range(5) for s in range(3)]
    key_of, words = group_key_fn(r"^(patient\d+)_", "kvasir")
    assert {key_of(p) for p in pairs} == {f"patient{i}" for i in range(5)} and "patient" in words
    is_val = assign_groups([key_of(p) for p in pairs], 0.2, seed=0)
    val_patients = {key_of(p) for p, v in zip(pairs, is_val, strict=True) if v}
    train_patients = {key_of(p) for p, v in zip(pairs, is_val, strict=True) if not v}
    assert val_patients and not val_patients & train_patients
    with pytest.raises(DataError, match="needs a capture group"):
        group_key_fn(r"patient\d+", "kvasir")
    with pytest.raises(DataError, match="not a regular expression"):
        group_key_fn(r"(unclosed", "kvasir")
    key_of, _ = group_key_fn(r"^(case\d+)", "kvasir")
    with pytest.raises(DataError, match=r"patient0_slice0.png: --group-by '\^\(case\\d\+\)' does not match"):
        key_of(pairs[0])


def test_cityscapes_without_val_says_it_falls_back(tmp_path, caplog):
    for city in ("aachen", "bremen"):
        for i in range(2):
            name = f"{city}_00000{i}_000019"
            img = tmp_path / f"leftImg8bit/train/{city}/{name}_leftImg8bit.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 4)).save(img)
            gt = tmp_path / f"gtFine/train/{city}/{name}_gtFine_labelIds.png"
            gt.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 8), 7, np.uint8)).save(gt)
    index = index_dataset(tmp_path)
    with caplog.at_level("WARNING"):
        split = make_split(index, "auto", 0.5, seed=0)
    [warning] = [r.getMessage() for r in caplog.records]
    assert "no leftImg8bit/val/ folder" in warning and "seeded split" in warning
    assert {p.image.stem.split("_")[0] for p in split.val} in ({"aachen"}, {"bremen"})  # whole cities


def test_training_records_the_split_and_eval_reuses_it(grouped_run, tmp_path):
    data, run, proc = grouped_run
    record = json.loads((run / "split.json").read_text())
    assert record["rule"] == {"group_by": "auto", "groups": "grouped by car: <car>_<NN> names",
                              "val_fraction": 0.2, "seed": 0}  # fmt: skip
    val_cars = {image.split("/")[-1].rsplit("_", 1)[0] for image, _ in record["val"]}
    train_cars = {image.split("/")[-1].rsplit("_", 1)[0] for image, _ in record["train"]}
    assert not val_cars & train_cars and record["groups"] == {"train": len(train_cars), "val": len(val_cars)}
    assert all(image.startswith("train/") and mask.startswith("train_masks/") for image, mask in record["val"])
    assert f"{len(record['train'])} train / {len(record['val'])} val images" in proc.stdout
    # --eval --split val scores exactly the recorded images
    out = tmp_path / "val.json"
    first = run_cli("unet-train", "--eval", run / "best.pth", "--data", data, "--split", "val", "--json", out,
                    "--device", "cpu", "--no-progress", check=True)  # fmt: skip
    scored = {row["image"] for row in json.loads(out.read_text())["per_image"]}
    assert scored == {image for image, _ in record["val"]}
    # a seed on the command line cannot change the recorded split: --eval refuses training flags
    again = run_cli("unet-train", "--eval", run / "best.pth", "--data", data, "--split", "val", "--seed", "9",
                    "--device", "cpu", "--no-progress")  # fmt: skip
    assert again.returncode == 2 and "--seed is a training flag: leave it out" in again.stderr
    assert f"(val, {len(record['val'])} images in {len(val_cars)} group(s)" in first.stdout


def test_eval_refuses_a_data_set_that_no_longer_matches_the_split(grouped_run, tmp_path):
    data, run, _ = grouped_run
    changed = tmp_path / "data"
    shutil.copytree(data, changed)
    victim = sorted((changed / "train").iterdir())[0]
    victim.unlink()
    (changed / "train_masks" / f"{victim.stem}_mask.gif").unlink()
    proc = run_cli("unet-train", "--eval", run / "best.pth", "--data", changed, "--split", "val", "--device", "cpu")
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert "split.json: the data set at" in line and "does not match the split" in line
    assert f"1 recorded pair(s) are missing (e.g. train/{victim.name})" in line


def test_resume_uses_the_recorded_split(grouped_run, tmp_path):
    data, run, _ = grouped_run
    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    record = (resumed / "split.json").read_text()
    # remove one image of the data set the run recorded: resuming refuses with one line, before any epoch
    moved = tmp_path / "moved"
    image = sorted((data / "train").iterdir())[-1]
    shutil.move(image, moved)
    try:
        proc = run_cli("unet-train", "--out", resumed, "--resume", "--epochs", "3", "--device", "cpu",
                       "--no-progress")  # fmt: skip
    finally:
        shutil.move(moved, image)
    assert proc.returncode == 2, proc.stdout
    [line] = error_lines(proc)
    assert "does not match the split this run was trained with" in line and image.name in line
    assert line.endswith("; restore those files, or train a new run on this data")
    ok = run_cli("unet-train", "--out", resumed, "--resume", "--epochs", "3", "--device", "cpu", "--no-progress",
                 check=True)  # fmt: skip
    assert "resumed after epoch 2" in ok.stdout
    assert (resumed / "split.json").read_text() == record  # read back, never redrawn


def test_unet_data_check_reports_groups_per_side(synth_small):
    proc = run_cli("unet-data", "check", synth_small, "--no-progress", check=True)
    assert "split: train 32 images in 2 group(s), val 16 images in 1 group(s) (grouped by car" in proc.stdout
    assert "no group on both sides" in proc.stdout
    leaky = run_cli("unet-data", "check", synth_small, "--group-by", "none", "--no-progress", check=True)
    assert "val 10 images in 10 group(s) (one group per image)" in leaky.stdout
    bad = run_cli("unet-data", "check", synth_small, "--group-by", "[")
    assert bad.returncode == 2 and "--group-by '[': not a regular expression" in error_lines(bad)[0]


def test_per_image_split_is_the_first_releases_split(synth_small):
    """Runs recorded before group-aware splits (no group_by in their arguments) split per image: resuming or
    evaluating them must use the images they validated on, as the first releases drew them."""
    import torch

    from unetkit.train.config import TrainConfig

    assert TrainConfig.from_dict({"data": "d", "out": "o"}).group_by == "none"
    pairs = index_dataset(synth_small).pairs
    split = make_split(index_dataset(synth_small), "none", 0.2, seed=3)
    first_release = sorted(torch.randperm(48, generator=torch.Generator().manual_seed(3)).tolist()[:10])
    assert [pairs.index(p) for p in split.val] == first_release
    assert make_split(index_dataset(synth_small), "none", 0.2, seed=4).val != split.val


def test_a_split_far_from_the_fraction_asked_says_so(tmp_path, caplog):
    """Two groups of 10 and 6 images cannot give 20 % validation: whichever goes there, the share is said."""
    for name in [f"img0_{i}" for i in range(10)] + [f"img1_{i}" for i in range(6)]:
        for folder in ("images", "masks"):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.new("L" if folder == "masks" else "RGB", (8, 8)).save(tmp_path / folder / f"{name}.png")
    index = index_dataset(tmp_path)
    with caplog.at_level("WARNING"):
        split = make_split(index, r"^img(\d)", 0.2, seed=0)
    share = round(100 * len(split.val) / 16)
    said = (f"warning: the split puts {len(split.val)} of 16 images ({share}%) in validation, not the 20% asked: "
            "groups go whole to one side, and there are 2; --group-by none splits per image")  # fmt: skip
    assert said in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        make_split(index, "none", 0.2, seed=0)
    assert "in validation, not" not in caplog.text


def test_eval_of_a_side_of_the_split_on_another_data_set_points_at_split_all(grouped_run, tmp_path):
    data, run, _ = grouped_run
    other = tmp_path / "other"
    write_synthetic(other, 8, (96, 64), seed=7, progress=False, views=4)
    proc = run_cli("unet-train", "--eval", run / "best.pth", "--data", other, "--split", "val", "--device", "cpu",
                   "--no-progress", "--workers", "0")  # fmt: skip
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert "does not match the split this run was trained with: 24 recorded pair(s) are missing" in line
    assert line.endswith(f". --split val is a side of the run's own split (the run trained on {data}); --split all "
                         "scores every pair of another data set")  # fmt: skip


def test_k_fold_deals_whole_groups_into_folds_of_about_equal_size():
    from unetkit.train.data.split import fold_groups

    keys = [f"car{i // 4}" for i in range(40)] + [f"solo{i}" for i in range(7)]  # 10 groups of 4, 7 of 1
    folds = fold_groups(keys, 5, seed=0)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]
    for key in set(keys):  # a group never straddles two folds
        assert len({f for k, f in zip(keys, folds, strict=True) if k == key}) == 1
    sizes = [folds.count(f) for f in range(5)]
    assert sum(sizes) == 47 and max(sizes) - min(sizes) <= 1  # 9 or 10 images each
    assert fold_groups(keys, 5, seed=0) == folds and fold_groups(keys, 5, seed=1) != folds  # seeded
    with pytest.raises(DataError, match="--folds 5: the 4 image\\(s\\) form 2 group\\(s\\), fewer than the folds"):
        fold_groups(["a", "a", "b", "b"], 5, seed=0)


def test_every_image_validates_in_exactly_one_fold_and_the_run_records_it(grouped_run, tmp_path):
    data, _, _ = grouped_run
    index = index_dataset(data)
    vals = [make_split(index, "auto", 0.2, 0, (3, i)).val for i in range(3)]
    images = [p.image for val in vals for p in val]
    assert sorted(images) == sorted(p.image for p in index.pairs)  # 24 images, each in one validation fold
    split = make_split(index, "auto", 0.2, 0, (3, 1))
    assert split.rule.endswith("; fold 1 of 3") and len(split.train) + len(split.val) == 24
    run = tmp_path / "fold1"
    proc = run_cli("unet-train", "--data", data, "--out", run, "--folds", "3", "--fold", "1", "--epochs", "1",
                   "--scale", "1", "--base-channels", "2", "--workers", "0", "--device", "cpu", "--no-progress",
                   check=True)  # fmt: skip
    record = json.loads((run / "split.json").read_text())
    assert record["rule"]["folds"] == 3 and record["rule"]["fold"] == 1 and "val_fraction" not in record["rule"]
    # every fold's run gets the same partition whatever --seed it trains with (nnU-Net's fixed split seed)
    assert [p.image for p in make_split(index, "auto", 0.2, 7, (3, 1)).val] == [p.image for p in split.val]
    assert sorted(v[0] for v in record["val"]) == sorted(p.image.relative_to(data).as_posix() for p in split.val)
    assert "; fold 1 of 3)" in proc.stdout
    refused = run_cli("unet-train", "--data", data, "--out", tmp_path / "x", "--folds", "3", "--fold", "3",
                      "--device", "cpu")  # fmt: skip
    assert error_lines(refused) == ["unet-train: error: --fold must be in 0..2 (one of --folds 3)"]
    both = run_cli("unet-train", "--data", data, "--out", tmp_path / "x", "--folds", "3", "--val-fraction", "0.3",
                   "--device", "cpu")  # fmt: skip
    assert error_lines(both)[-1].endswith("--folds deals the images into folds of 1/K each: leave out --val-fraction")
