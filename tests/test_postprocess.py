"""Mask post-processing: components kept, dropped and filled exactly as OpenCV finds them, applied by unet-infer
to every output, refused where it cannot apply, and recorded so one output folder never mixes two rules."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import error_lines, make_meta, run_cli
from unetkit.core.checkpoint import load_checkpoint, save_checkpoint
from unetkit.core.errors import UnetkitError
from unetkit.core.model import UNet, UNetConfig
from unetkit.core.postprocess import PostProcess, candidates
from unetkit.infer.predictor import Predictor
from unetkit.infer.record import mask_settings
from unetkit.infer.rle import rle_encode
from unetkit.infer.settings import InferSettings


def _largest(mask: np.ndarray) -> np.ndarray:
    """OpenCV's 8-connected components; the largest, the first in row-major order on a tie."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n == 1:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    tied = [i + 1 for i in np.flatnonzero(areas == areas.max())]
    return labels == min(tied, key=lambda i: np.flatnonzero(labels.ravel() == i)[0])


def _without_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels]


def _filled(mask: np.ndarray) -> np.ndarray:
    n, labels = cv2.connectedComponents((mask == 0).astype(np.uint8), connectivity=4)
    border = set(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]).tolist())
    return mask.astype(bool) | np.isin(labels, [i for i in range(1, n) if i not in border])


def test_components_are_opencvs_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 40, 2)
        mask = (rng.random((h, w)) < rng.uniform(0.1, 0.7)).astype(np.uint8)
        assert (PostProcess(keep_largest=True).apply(mask, 1) == _largest(mask)).all()
        assert (PostProcess(min_area=5).apply(mask, 1) == _without_small(mask, 5)).all()
        assert (PostProcess(fill_holes=True).apply(mask, 1) == _filled(mask)).all()
        labels = rng.integers(0, 4, (h, w)).astype(np.uint8)  # each class on its own, touching the others
        expected = labels.copy()
        for c in (1, 2, 3):
            kept = _largest(labels == c)
            kept &= kept.sum() >= 3
            expected[(labels == c) & ~kept] = 0
        assert (PostProcess(keep_largest=True, min_area=3).apply(labels, 4) == expected).all()


def test_a_car_loses_its_specks_and_keeps_its_windows_filled():
    mask = np.zeros((40, 60), np.uint8)
    mask[5:30, 10:50] = 1  # the car
    mask[12:18, 20:30] = 0  # a window the model missed: a hole
    mask[35, 2] = mask[36, 3] = 1  # a speck of 2 pixels, diagonal neighbours: one component
    mask[0:3, 55:60] = 1  # a blob of 15 at the border
    kept = PostProcess(keep_largest=True).apply(mask, 1)
    assert kept.sum() == 25 * 40 - 60 and kept[35, 2] == kept[0, 55] == 0
    assert PostProcess(min_area=3).apply(mask, 1)[35:37, 2:4].sum() == 0  # the 2-pixel speck, not the blob
    assert PostProcess(min_area=3).apply(mask, 1)[0:3, 55:60].all()
    filled = PostProcess(True, 0, True).apply(mask, 1)
    assert filled.sum() == 25 * 40 and filled.dtype == np.uint8
    # background that reaches out only through a diagonal gap of the wall is still a hole (4-connected)
    ring = np.ones((5, 5), np.uint8)
    ring[1:4, 1:4] = 0
    ring[0, 0] = 0
    ring[1, 1] = 1  # the hole now touches the corner's background diagonally only
    assert PostProcess(fill_holes=True).apply(ring, 1)[1:4, 1:4].all() and ring[0, 0] == 0


def test_rules_that_cannot_apply_are_refused_and_flags_round_trip():
    plain = np.ones((2, 2), np.uint8)
    assert PostProcess().apply(plain, 1) is plain and not PostProcess().active  # nothing asked: untouched
    with pytest.raises(UnetkitError, match=r"--min-area -1: must be 0"):
        PostProcess(min_area=-1)
    with pytest.raises(UnetkitError, match=r"--fill-holes fills binary masks; this model has 3 classes"):
        PostProcess(fill_holes=True).check(3)
    with pytest.raises(UnetkitError, match=r"--keep-largest: the pixels a class loses become class 0, which for this "
                       r"Cityscapes model is road, not background"):  # fmt: skip
        PostProcess(keep_largest=True).apply(np.zeros((4, 4), np.uint8), 19, "cityscapes")
    for bad in (2.5, "5", True):
        with pytest.raises(UnetkitError, match=r"--min-area .*: must be 0"):
            PostProcess(min_area=bad)
    with pytest.raises(UnetkitError, match=r"--keep-largest: True or False, not 'no'"):
        Predictor("never-read.pth", keep_largest="no")  # refused before anything is loaded or written
    with pytest.raises(UnetkitError, match=r"--fill-holes: True or False, not 1"):
        PostProcess(fill_holes=1)
    assert not PostProcess(min_area=1).active and PostProcess(min_area=1).record() == {}  # keeps every component
    assert PostProcess(fill_holes=True).apply(np.ones((3, 3), bool), 1).dtype == np.uint8
    assert mask_settings(InferSettings(keep_largest=True, min_area=9)) == {
        "tile": 0,
        "postprocess": {"keep_largest": True, "min_area": 9},
    }  # what folders and part manifests record
    assert mask_settings(InferSettings(min_area=1)) == {"tile": 0}
    both = PostProcess(True, 40, True)
    assert both.flags() == "--keep-largest --min-area 40 --fill-holes"
    assert both.record() == {"keep_largest": True, "min_area": 40, "fill_holes": True} and PostProcess().record() == {}
    assert [p.flags() for p in candidates(1)] == ["--keep-largest", "--fill-holes", "--keep-largest --fill-holes"]
    assert [p.flags() for p in candidates(19, "multiclass")] == ["--keep-largest"] and not candidates(19, "cityscapes")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, synth_small, random_checkpoint):
    """An untrained model whose head is shifted to its median logit, so its masks are half foreground in specks
    and blobs, with 4 synthetic cars and its masks of them without post-processing: (checkpoint, images, masks)."""
    images = tmp_path_factory.mktemp("pp") / "images"
    images.mkdir()
    for path in sorted((synth_small / "train").glob("*.jpg"))[:4]:
        shutil.copy(path, images)
    model, meta = load_checkpoint(random_checkpoint)
    with torch.no_grad():
        x = torch.from_numpy(np.array(Image.open(next(images.glob("*.jpg"))))).permute(2, 0, 1)[None].float() / 255
        model.head.bias -= model(x).median()
    checkpoint = images.parent / "noisy" / "best.pth"
    save_checkpoint(checkpoint, model, meta)
    plain = images.parent / "plain"
    run_cli("unet-infer", images, "--checkpoint", checkpoint, "--out", plain, "--device", "cpu", "--no-progress",
            "--save-prob", "--overlay", check=True)  # fmt: skip
    return checkpoint, images, plain


def test_unet_infer_writes_post_processed_masks_overlays_and_rle(noisy):
    checkpoint, images, plain = noisy
    out = images.parent / "post"
    csv = images.parent / "post.csv"
    proc = run_cli("unet-infer", images, "--checkpoint", checkpoint, "--out", out, "--device", "cpu",
                   "--keep-largest", "--min-area", "20", "--overlay", "--save-prob", "--rle", csv, "--no-progress",
                   check=True)  # fmt: skip
    assert "whole images, post-processing --keep-largest --min-area 20, batch 2" in proc.stdout
    rows = dict(line.split(",") for line in csv.read_text().splitlines()[1:])
    changed = 0
    for path in sorted(p for p in plain.glob("*.png") if not p.name.endswith(".prob.png")):
        before = np.asarray(Image.open(path)) // 255
        after = np.asarray(Image.open(out / path.name)) // 255
        assert (after == PostProcess(True, 20).apply(before, 1)).all()
        changed += int((after != before).any())
        assert rows[path.with_suffix(".jpg").name] == rle_encode(after)  # the CSV holds the processed mask
        prob = path.with_name(f"{path.stem}.prob.png")
        assert prob.read_bytes() == (out / prob.name).read_bytes()  # probabilities are the model's, untouched
        # the overlay shows the mask as written: pixels removed from it are left as the photo has them
        photo = np.asarray(Image.open(images / f"{path.stem}.jpg"), dtype=np.float32)
        removed = (before == 1) & (after == 0)
        overlays = [np.asarray(Image.open(d / f"{path.stem}.overlay.jpg"), dtype=np.float32) for d in (plain, out)]
        drawn = [np.abs(o - photo)[removed].mean() for o in overlays]
        assert drawn[1] < drawn[0] / 3, drawn
    assert changed == 4  # every image lost specks
    record = json.loads((out / "unetkit-infer.json").read_text())
    assert record["settings"] == {"tile": 0, "postprocess": {"keep_largest": True, "min_area": 20}}
    # the same model from Python: the same masks
    with Predictor(checkpoint, device="cpu", keep_largest=True, min_area=20) as predictor:
        first = sorted(images.glob("*.jpg"))[0]
        expected = np.asarray(Image.open(out / f"{first.stem}.png")) // 255
        assert (predictor.predict(first) == expected).all()


def test_a_folder_keeps_one_post_processing_and_multi_class_cannot_fill(noisy, tmp_path):
    checkpoint, images, plain = noisy
    snapshot = {p.name: p.read_bytes() for p in plain.glob("*.png")}
    proc = run_cli("unet-infer", images, "--checkpoint", checkpoint, "--out", plain, "--device", "cpu",
                   "--keep-largest", "--resume", "--no-progress")  # fmt: skip
    assert proc.returncode == 2
    assert error_lines(proc) == [f"unet-infer: error: --out {plain}: its masks were made with whole images without "
                                 "--tta, this run uses whole images without --tta, post-processing --keep-largest; "
                                 "--resume with the same, or give another --out"]  # fmt: skip
    assert {p.name: p.read_bytes() for p in plain.glob("*.png")} == snapshot
    torch.manual_seed(0)
    multi = tmp_path / "multi" / "best.pth"
    save_checkpoint(multi, UNet(UNetConfig(n_classes=3, base_channels=4)).eval(), make_meta(3))
    refused = run_cli("unet-infer", images, "--checkpoint", multi, "--out", tmp_path / "m", "--device", "cpu",
                      "--fill-holes")  # fmt: skip
    assert refused.returncode == 2 and not (tmp_path / "m").exists()
    assert error_lines(refused) == ["unet-infer: error: --fill-holes fills binary masks; this model has 3 classes, "
                                    "and a hole among several would need a class to fill it with"]  # fmt: skip
    negative = run_cli("unet-infer", images, "--checkpoint", checkpoint, "--min-area", "-5")
    assert error_lines(negative) == ["unet-infer: error: --min-area -5: must be 0 (keep every component) or more "
                                     "pixels"]  # fmt: skip


@pytest.mark.gpu
def test_on_cuda_the_written_masks_are_the_plain_ones_post_processed(noisy, tmp_path):
    """The streamed CUDA pipeline: masks downloaded, post-processed on the writer threads, overlays drawn on the
    host from downloaded pixels; the same rule as the CPU path, applied to CUDA's own plain masks."""
    checkpoint, images, _ = noisy
    common = ["--checkpoint", checkpoint, "--device", "cuda", "--precision", "fp32", "--no-progress"]
    run_cli("unet-infer", images, *common, "--out", tmp_path / "plain", check=True)
    run_cli("unet-infer", images, *common, "--out", tmp_path / "post", "--keep-largest", "--fill-holes", "--overlay",
            check=True)  # fmt: skip
    for path in sorted((tmp_path / "plain").glob("*.png")):
        before = np.asarray(Image.open(path)) // 255
        after = np.asarray(Image.open(tmp_path / "post" / path.name)) // 255
        assert (after == PostProcess(keep_largest=True, fill_holes=True).apply(before, 1)).all()
        with Image.open(tmp_path / "post" / f"{path.stem}.overlay.jpg") as overlay:
            assert overlay.size == after.shape[::-1]
