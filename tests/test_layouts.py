"""Each layout is detected and paired; each bad-input case names its file."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import error_lines, run_cli
from unetkit.core.errors import DataError
from unetkit.core.imageio import binary_mask
from unetkit.core.labels import IGNORE_INDEX
from unetkit.train.data.checks import check_dataset, describe_unmatched
from unetkit.train.data.layouts import (
    FolderSpec,
    cityscapes_train_ids,
    detect_layout,
    folder_root,
    index_dataset,
)


def image(path: Path, size=(24, 16), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def mask(path: Path, size=(24, 16), values=(0, 255)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0]), values[0], np.uint8)
    arr[: size[1] // 2] = values[1]
    Image.fromarray(arr).save(path)
    return path


def test_seed_carvana_layout(tmp_path):
    image(tmp_path / "imgs/001.jpg")
    mask(tmp_path / "masks/001_mask.jpg")
    image(tmp_path / "imgs/002.png")
    mask(tmp_path / "masks/002_mask.png")
    image(tmp_path / "imgs/lonely.jpg")
    mask(tmp_path / "masks/orphan_mask.png")
    (tmp_path / "imgs/notes.txt").write_text("not an image")
    index = index_dataset(tmp_path)
    assert index.layout == "carvana" and index.mask_kind == "binary" and index.n_classes == 1
    assert [(p.image.name, p.mask.name) for p in index.pairs] == [
        ("001.jpg", "001_mask.jpg"),
        ("002.png", "002_mask.png"),
    ]
    assert [p.name for p in index.unmatched_images] == ["lonely.jpg"]
    assert [p.name for p in index.unmatched_masks] == ["orphan_mask.png"]
    lines = describe_unmatched(index)
    assert "1 image(s) without a mask: imgs/lonely.jpg" in lines[0]
    assert "1 mask(s) without an image: masks/orphan_mask.png" in lines[1]


def test_kaggle_carvana_layout(synth_small):
    index = index_dataset(synth_small)
    assert index.layout == "kaggle-carvana" and len(index.pairs) == 48
    first = index.pairs[0]
    assert first.mask.name == first.image.stem + "_mask.gif"


def test_kvasir_layout(tmp_path):
    for name in ("cju0qkwl35piu0993l0dewei2", "cju0s690hkp960855tjuaqvv0"):
        image(tmp_path / "images" / f"{name}.jpg")
        mask(tmp_path / "masks" / f"{name}.jpg")
    index = index_dataset(tmp_path)
    assert index.layout == "kvasir" and index.class_names == ["polyp"] and len(index.pairs) == 2


def test_cityscapes_layout_maps_label_ids_and_keeps_the_official_split(tmp_path):
    for split, city, name in [("train", "aachen", "aachen_000000_000019"), ("val", "lindau", "lindau_000000_000019")]:
        image(tmp_path / f"leftImg8bit/{split}/{city}/{name}_leftImg8bit.png", (8, 4))
        ids = np.array([[7, 8, 26, 33], [0, 1, 6, 255]] * 2, np.uint8)
        ids = np.repeat(ids, 2, axis=1)
        gt = tmp_path / f"gtFine/{split}/{city}/{name}_gtFine_labelIds.png"
        gt.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids).save(gt)
        Image.fromarray(ids).save(gt.with_name(f"{name}_gtFine_color.png"))  # other gtFine files are ignored
    image(tmp_path / "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png", (8, 4))
    index = index_dataset(tmp_path)
    assert index.layout == "cityscapes" and index.n_classes == 19 and index.mask_kind == "cityscapes"
    assert [p.split for p in index.pairs] == ["train", "val"]
    report = check_dataset(index, progress=False)
    assert report.problems == []
    counts = report.label_counts
    # road (7) -> 0, sidewalk (8) -> 1, car (26) -> 13, bicycle (33) -> 18, void ids (0, 1, 6, 255) -> ignored
    # each id fills 2 columns of 2 rows in each of the 2 images
    assert counts[0] == counts[1] == counts[13] == counts[18] == 2 * 2 * 2
    assert counts[IGNORE_INDEX] == 4 * 2 * 2 * 2


@pytest.mark.parametrize(
    "values, message",
    [
        ((0, 1, 2, 40, 250), "values 40, 250 are not Cityscapes labelIds (0-33, void 255); use the *_gtFine_labelIds"),
        ((0, 1, 2, 3, 4, 255), "holds only 0-18 and 255, as a trainIds mask does (labelIds run to 33); use the"),
        ((0, 1, 4, 6), "every pixel is a void class (none of the 19 trained labelIds), so the mask scores nothing"),
    ],
)
def test_cityscapes_masks_that_are_not_label_ids_stop_the_check(tmp_path, values, message):
    """Train ids or colours saved under labelIds names would map (nearly) every pixel to void: the run would
    train on nothing and end without a checkpoint, so the check names the file instead."""
    for split, city, name in [("train", "aachen", "aachen_000000_000019"), ("val", "lindau", "lindau_000000_000019")]:
        image(tmp_path / f"leftImg8bit/{split}/{city}/{name}_leftImg8bit.png", (6, 4))
        gt = tmp_path / f"gtFine/{split}/{city}/{name}_gtFine_labelIds.png"
        gt.parent.mkdir(parents=True, exist_ok=True)
        ids = np.resize(np.array(values if split == "val" else (7, 26, 0), np.uint8), (4, 6))
        Image.fromarray(ids).save(gt)
    proc = run_cli("unet-data", "check", tmp_path, "--no-progress")
    assert proc.returncode == 2
    bad = tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    assert f"{bad}: {message}" in proc.stderr
    assert "aachen" not in proc.stderr  # the good labelIds mask passes
    assert "sizes (WxH): 6x4 (1)" in proc.stdout  # what decoded is described; the bad pair is not counted


def test_cityscapes_trainids_masks_without_void_are_found_over_the_data_set(tmp_path):
    """TrainIds masks without a void pixel hold values every labelIds mask may hold (0-18), so no single file
    shows it; a data set without any of the labelIds 19-33 (sky, car, person, ...) does."""
    for split, city, name in [("train", "aachen", "aachen_000000_000019"), ("val", "lindau", "lindau_000000_000019")]:
        image(tmp_path / f"leftImg8bit/{split}/{city}/{name}_leftImg8bit.png", (6, 4))
        gt = tmp_path / f"gtFine/{split}/{city}/{name}_gtFine_labelIds.png"
        gt.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.resize(np.array((0, 7, 8, 13, 18), np.uint8), (4, 6))).save(gt)
    proc = run_cli("unet-data", "check", tmp_path, "--no-progress")
    assert proc.returncode == 2
    assert (f"{tmp_path}: no mask holds any of the labelIds 19-33 (traffic light to bicycle), as masks of trainIds "
            "(0-18) do not; use the *_gtFine_labelIds.png files") in proc.stderr  # fmt: skip
    one = tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.resize(np.array((0, 7, 26), np.uint8), (4, 6))).save(one)  # a car: labelIds after all
    assert check_dataset(index_dataset(tmp_path), progress=False).problems == []


def test_cityscapes_ids_in_a_jpeg_are_refused():
    ids = np.array([[7, 26]], np.uint8)
    assert cityscapes_train_ids(ids, "a_gtFine_labelIds.png").tolist() == [[0, 13]]
    with pytest.raises(DataError, match=r"a_gtFine_labelIds\.jpg: class ids in a lossy \(JPEG\) file are changed"):
        cityscapes_train_ids(ids, "a_gtFine_labelIds.jpg")


def test_masks_as_gif_png_jpeg_with_0_255_and_0_1(tmp_path):
    image(tmp_path / "train/a.jpg")
    mask(tmp_path / "train_masks/a_mask.gif", values=(0, 255))
    image(tmp_path / "train/b.jpg")
    mask(tmp_path / "train_masks/b_mask.png", values=(0, 1))
    image(tmp_path / "train/c.jpg")
    mask(tmp_path / "train_masks/c_mask.jpg", values=(3, 250))  # lossy: thresholded at 128
    report = check_dataset(index_dataset(tmp_path), progress=False)
    assert report.problems == []
    assert report.label_counts[0] == report.label_counts[1] == 3 * 24 * 8


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda r: None, "data folder not found"),
        (lambda r: (r / "stuff").mkdir(parents=True), "no known data layout"),
        (lambda r: [(r / d).mkdir(parents=True) for d in ("imgs", "masks")], "no image/mask pairs found"),
    ],
)
def test_unusable_folders(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message):
        index_dataset(root)


def test_check_names_corrupt_mismatched_and_bad_mask_files(tmp_path):
    image(tmp_path / "imgs/good.jpg")
    mask(tmp_path / "masks/good_mask.png")
    (tmp_path / "imgs/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    mask(tmp_path / "masks/corrupt_mask.png")
    image(tmp_path / "imgs/big.jpg", size=(30, 16))
    mask(tmp_path / "masks/big_mask.png")
    image(tmp_path / "imgs/multi.jpg")
    mask(tmp_path / "masks/multi_mask.png", values=(0, 7))
    good = tmp_path / "imgs/truncated.jpg"
    image(good, size=(64, 64))
    good.write_bytes(good.read_bytes()[:200])
    mask(tmp_path / "masks/truncated_mask.png", size=(64, 64))
    report = check_dataset(index_dataset(tmp_path), progress=False)
    problems = "\n".join(report.problems)
    assert len(report.problems) == 4
    assert "corrupt.jpg: cannot read image" in problems
    assert "truncated.jpg: cannot read image" in problems
    assert "big_mask.png: mask is 24x16 but its image big.jpg is 30x16" in problems
    assert "multi_mask.png: binary mask has values {0, 7}; expected 0/1 or 0/255" in problems
    with pytest.raises(DataError, match="4 bad file"):
        report.raise_if_problems()


def test_unet_data_check_cli(tmp_path, synth_small):
    ok = run_cli("unet-data", "check", synth_small, "--no-progress", check=True)
    assert "kaggle-carvana layout, 48 pairs" in ok.stdout
    assert "sizes (WxH): 192x128 (48)" in ok.stdout
    assert "class balance" in ok.stdout and "car " in ok.stdout
    image(tmp_path / "imgs/x.jpg")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks/x_mask.png").write_bytes(b"garbage")
    bad = run_cli("unet-data", "check", tmp_path, "--no-progress")
    assert bad.returncode == 2
    assert "x_mask.png: cannot read image" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli("unet-data", "check", tmp_path / "nowhere")
    assert missing.returncode == 2 and error_lines(missing) == [
        f"unet-data: error: {tmp_path / 'nowhere'}: data folder not found"
    ]


def test_detect_layout_prefers_specific_layouts(tmp_path):
    for d in ("train", "train_masks", "imgs", "masks"):
        (tmp_path / d).mkdir()
    assert detect_layout(tmp_path) == "kaggle-carvana"


def test_named_folders_pair_by_stem_after_suffixes(tmp_path):
    # DRIVE: images/21_training.tif + 1st_manual/21_manual1.gif
    for n in (21, 22):
        image(tmp_path / f"DRIVE/images/{n}_training.tif")
        mask(tmp_path / f"DRIVE/1st_manual/{n}_manual1.gif")
    spec = FolderSpec(tmp_path / "DRIVE/images", tmp_path / "DRIVE/1st_manual", "_training", "_manual1")
    index = index_dataset(folder_root(spec), folders=spec)
    assert index.layout == "folders" and index.n_classes == 1 and index.root == tmp_path / "DRIVE"
    assert [(p.image.name, p.mask.name) for p in index.pairs] == [
        ("21_training.tif", "21_manual1.gif"),
        ("22_training.tif", "22_manual1.gif"),
    ]
    # CVC-ClinicDB: Original/1.tif + "Ground Truth"/1.tif, the same stem; --mask-ext keeps other files out
    image(tmp_path / "CVC/Original/1.tif")
    mask(tmp_path / "CVC/Ground Truth/1.tif")
    mask(tmp_path / "CVC/Ground Truth/1.png")  # a second mask format of the same name
    with pytest.raises(DataError, match="two masks for one image"):
        index_dataset(tmp_path / "CVC", folders=FolderSpec(tmp_path / "CVC/Original", tmp_path / "CVC/Ground Truth"))
    spec = FolderSpec(tmp_path / "CVC/Original", tmp_path / "CVC/Ground Truth", mask_exts=("tif",))
    assert [p.mask.name for p in index_dataset(tmp_path / "CVC", folders=spec).pairs] == ["1.tif"]
    # and two images of one name: which one the mask labels is not left to sort order
    image(tmp_path / "CVC/Original/1.png")
    with pytest.raises(DataError, match=r"two images for one mask \(.*Ground Truth/1\.tif\): .*Original/1\.png and "
                       r".*Original/1\.tif; keep one"):  # fmt: skip
        index_dataset(tmp_path / "CVC", folders=spec)


def test_named_folders_errors_name_the_files_and_the_remedy(tmp_path):
    for n in (21, 22, 23):
        image(tmp_path / f"images/{n}_training.tif")
        mask(tmp_path / f"masks/{n}_manual1.gif")
    image(tmp_path / "images/lonely_training.tif")
    with pytest.raises(DataError) as info:  # nothing pairs: the endings that would pair them are suggested
        index_dataset(tmp_path, folders=FolderSpec(tmp_path / "images", tmp_path / "masks"))
    assert "no image in" in str(info.value) and "(e.g. image 21_training.tif, mask 21_manual1.gif)" in str(info.value)
    assert "try --image-suffix '_training' --mask-suffix '_manual1'" in str(info.value)
    with pytest.raises(DataError, match=r"no mask name ends in --mask-suffix '_mask' \(e.g. 21_manual1.gif\)"):
        index_dataset(tmp_path, folders=FolderSpec(tmp_path / "images", tmp_path / "masks", mask_suffix="_mask"))
    index = index_dataset(
        tmp_path, folders=FolderSpec(tmp_path / "images", tmp_path / "masks", "_training", "_manual1")
    )
    assert len(index.pairs) == 3
    assert describe_unmatched(index) == ["1 image(s) without a mask: images/lonely_training.tif"]
    with pytest.raises(DataError, match="nowhere: --masks folder not found"):
        index_dataset(tmp_path, folders=FolderSpec(tmp_path / "images", tmp_path / "nowhere"))


def test_named_folders_through_the_clis(tmp_path):
    for n in range(4):
        image(tmp_path / f"data/pics/{n}.jpg")
        mask(tmp_path / f"data/labels/{n}_seg.png")
    proc = run_cli("unet-data", "check", "--images", tmp_path / "data/pics", "--masks", tmp_path / "data/labels",
                   "--mask-suffix", "_seg", "--no-progress", check=True)  # fmt: skip
    assert f"{tmp_path / 'data'}: folders layout, 4 pairs" in proc.stdout
    assert "val 1 images in 1 group(s) (one group per image)" in proc.stdout
    # relative to --data when both are given
    proc = run_cli("unet-data", "check", tmp_path / "data", "--images", "pics", "--masks", "labels",
                   "--mask-suffix", "_seg", "--no-progress", check=True)  # fmt: skip
    assert "folders layout, 4 pairs" in proc.stdout
    bad = run_cli("unet-data", "check", "--images", tmp_path / "data/pics", "--masks", tmp_path / "data/labels")
    assert bad.returncode == 2
    [line] = error_lines(bad)
    assert "no image in" in line and "try --mask-suffix '_seg'" in line
    alone = run_cli("unet-train", "--images", tmp_path / "data/pics", "--out", tmp_path / "run")
    assert alone.returncode == 2 and "--images and --masks go together" in error_lines(alone)[0]


def test_relative_named_folders_with_an_unpaired_image(tmp_path):
    """Relative --images/--masks (as the README's Kvasir command gives them) with one image lacking its mask:
    the report names it relative to the data folder instead of failing to relate the two paths."""
    for n in range(4):
        image(tmp_path / f"data/pics/{n}.jpg")
        mask(tmp_path / f"data/labels/{n}.png")
    image(tmp_path / "data/pics/lonely.jpg")
    proc = run_cli("unet-data", "check", "--images", "data/pics", "--masks", "data/labels", "--no-progress",
                   cwd=tmp_path, check=True)  # fmt: skip
    assert "1 image(s) without a mask: pics/lonely.jpg" in proc.stdout
    assert f"{tmp_path / 'data'}: folders layout, 4 pairs" in proc.stdout


def test_noisy_lossless_masks_are_an_error_that_names_the_remedy(tmp_path):
    image(tmp_path / "imgs/a.jpg")
    noisy = np.zeros((16, 24), np.uint8)
    noisy[:8] = 255
    noisy[0, :3] = (3, 128, 252)  # stray grey values, as in real CVC-ClinicDB masks
    (tmp_path / "masks").mkdir()
    Image.fromarray(noisy).save(tmp_path / "masks/a_mask.png")
    with pytest.raises(DataError, match=r"binary mask has values \{0, 3, 128, 252, 255\}.*--mask-threshold 128"):
        binary_mask(noisy, tmp_path / "masks/a_mask.png")
    assert binary_mask(noisy, "m.png", threshold=128).sum() == 8 * 24 - 1  # 3 became background
    proc = run_cli("unet-data", "check", tmp_path, "--no-progress")
    assert proc.returncode == 2
    assert "1 bad file(s)" in proc.stderr and "(1 mask(s) with stray grey values: --mask-threshold 128 " in proc.stderr
    ok = run_cli("unet-data", "check", tmp_path, "--mask-threshold", "128", "--no-progress", check=True)
    assert "ok: every pair decodes" in ok.stdout


def test_training_lists_ten_problems_and_counts_the_rest(tmp_path):
    from unetkit.core.meta import ResizeRule
    from unetkit.train.data.checks import DataReport
    from unetkit.train.data.dataset import SampleRule
    from unetkit.train.data.layouts import DatasetIndex

    report = DataReport(DatasetIndex(tmp_path, "folders", [], ["x"], "binary"), SampleRule(ResizeRule(), "binary"))
    report.problems = [f"{tmp_path}/m{i}.png: bad" for i in range(12)]
    with pytest.raises(DataError) as short:
        report.raise_if_problems(limit=10)
    lines = str(short.value).splitlines()
    assert lines[0] == f"12 bad file(s) in {tmp_path}; fix or remove them:" and len(lines) == 12
    assert lines[-1] == "  ... and 2 more (`unet-data check` lists them all)"
    with pytest.raises(DataError) as full:
        report.raise_if_problems()
    assert len(str(full.value).splitlines()) == 13


def test_masks_without_any_foreground_stop_the_check(tmp_path):
    """A threshold above every mask value reads every mask as background: nothing to learn, said before work."""
    for n in range(3):
        image(tmp_path / f"images/{n}.jpg")
        mask(tmp_path / f"masks/{n}.png", values=(0, 7))
    proc = run_cli("unet-data", "check", tmp_path, "--mask-threshold", "128", "--no-progress")
    assert proc.returncode == 2
    assert f"{tmp_path}: no mask has a foreground pixel, so there is nothing to learn" in proc.stderr
    ok = run_cli("unet-data", "check", tmp_path, "--mask-threshold", "7", "--no-progress", check=True)
    assert "polyp 50.0%" in ok.stdout
