"""Training on patches (--crop, --fg-fraction): windows that hold foreground as often as asked, padding that
trains nothing, one size per batch, whole-image validation within a crop batch's pixels, exact resumes."""

import numpy as np
import pytest
import torch

from conftest import error_lines, run_cli
from unetkit.core.labels import IGNORE_INDEX
from unetkit.train.data.crop import (
    Cropper,
    crop_note,
    foreground_point,
    validation_note,
    whole_image_batch,
    window_start,
)

ARGS = ["--base-channels", "2", "--workers", "0", "--device", "cpu", "--no-progress", "--batch-size", "4"]


def test_a_window_fits_the_side_and_holds_the_point_it_is_given():
    rng = np.random.default_rng(0)
    starts = {window_start(100, 30, None, rng) for _ in range(2000)}
    assert min(starts) == 0 and max(starts) == 70  # every position that fits, both ends included
    for point in (0, 5, 50, 99):
        for _ in range(200):
            start = window_start(100, 30, point, rng)
            assert 0 <= start <= 70 and start <= point < start + 30
    assert window_start(20, 30, None, rng) == 0 and window_start(20, 30, 7, rng) == 0  # a short side is padded


def test_foreground_is_any_class_but_0_drawn_class_first():
    rng = np.random.default_rng(0)
    labels = np.zeros((50, 50), np.uint8)
    labels[:, 25:] = 1  # a big class
    labels[3, 3] = 2  # and a one-pixel class: drawn as often as the big one
    points = [foreground_point(labels, rng) for _ in range(400)]
    assert sum(p == (3, 3) for p in points) == pytest.approx(200, abs=40)
    assert all(p == (3, 3) or labels[p] == 1 for p in points)
    assert foreground_point(np.array([[0, IGNORE_INDEX]], np.uint8), rng) is None


def test_crops_hold_the_foreground_as_often_as_asked_and_pad_with_ignored_labels():
    image = np.full((200, 300, 3), 7, np.uint8)
    labels = np.zeros((200, 300), np.uint8)
    labels[150, 280] = 1  # one foreground pixel: a random 40x40 window holds it about 0.7 % of the time
    always, never = Cropper((40, 40), 1.0), Cropper((40, 40), 0.0)
    assert all(always(image, labels, seed)[1].sum() == 1 for seed in range(100))
    assert sum(int(never(image, labels, seed)[1].sum()) for seed in range(300)) < 15
    third = Cropper((40, 40), 0.33)
    assert sum(int(third(image, labels, seed)[1].sum()) for seed in range(600)) == pytest.approx(200, abs=45)
    a, b = third(image, labels, 5), third(image, labels, 5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # the seed alone decides the window
    small_image, small_labels = Cropper((64, 48), 0.5)(image[:30, :20], labels[:30, :20], 1)
    assert small_image.shape == (64, 48, 3) and small_labels.shape == (64, 48)
    assert (small_image[:30, :20] == 7).all() and (small_image[30:] == 0).all() and (small_image[:, 20:] == 0).all()
    assert (small_labels[:30, :20] == 0).all() and (small_labels[30:] == IGNORE_INDEX).all()


def test_whole_image_validation_keeps_to_a_crop_batchs_pixels():
    assert whole_image_batch(8, None, [(1024, 2048)]) == 8  # no crops: the batch size as given
    assert whole_image_batch(8, (512, 512), [(1024, 2048), (512, 512)]) == 1  # 8 crops' pixels: 1 full image
    assert whole_image_batch(16, (256, 256), [(512, 512)]) == 4 and whole_image_batch(2, (32, 32), [(64, 64)]) == 1
    assert crop_note((64, 64), [(64, 96)]) is None
    assert crop_note((512, 512), [(64, 96), (32, 48)], "--max-side") == (
        "--crop 512x512 is larger than the model inputs (the largest is 64x96): 1 % of each window is image, the "
        "rest padding that trains nothing; give a smaller --crop, or a larger --max-side"
    )


def test_a_run_on_crops_records_them_and_resumes_exactly_with_any_workers(tmp_path, synth_small):
    """Windows and augmentations follow the samples' seeds alone: a run with no worker processes and one with
    two, interrupted and resumed with one, end with the same weights (the DataLoader's workers call iter() on
    the batch sampler twice in their first epoch, which once cost a draw)."""
    args = ["--data", synth_small, "--crop", "32x48", "--fg-fraction", "0.5", "--lr", "3e-3", *ARGS]
    run_cli("unet-train", *args, "--out", tmp_path / "straight", "--epochs", "2", check=True)
    first = run_cli("unet-train", *args, "--workers", "2", "--out", tmp_path / "resumed", "--epochs", "1", check=True)
    said = first.stdout + first.stderr
    assert "warning: --crop" not in said  # 32x48 windows of 64x96 inputs
    assert "note: --crop cuts its windows from inputs at the default --scale 0.5; give --scale 1" in said
    assert ", windows 32x48 (0.5 made to hold foreground)" in said
    run_cli("unet-train", "--out", tmp_path / "resumed", "--resume", "--epochs", "2", "--device", "cpu",
            "--workers", "1", "--no-progress", check=True)  # fmt: skip
    a = torch.load(tmp_path / "straight/last.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed/last.pth", weights_only=True)
    assert a["training"]["config"]["crop"] == [32, 48] and a["training"]["config"]["fg_fraction"] == 0.5
    for key in a["state_dict"]:  # the same windows, so the same weights
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    again = run_cli("unet-train", "--out", tmp_path / "resumed", "--resume", "--epochs", "2", "--device", "cpu",
                    "--workers", "0", "--no-progress", check=True)  # fmt: skip
    assert "note: the run has trained 2 of --epochs 2: nothing to train" in again.stdout + again.stderr
    tiles = run_cli("unet-infer", synth_small / "train", "--checkpoint", tmp_path / "straight/best.pth", "--tile", "32",
                    "--out", tmp_path / "masks", "--device", "cpu", "--no-progress", check=True)  # fmt: skip
    assert ("note: --tile 32 is smaller than the 32x48 windows the model trained on (--crop): each tile sees less "
            "context than training gave it; give --tile 48 or more, or leave it out") in tiles.stdout  # fmt: skip
    refused = run_cli("unet-train", "--out", tmp_path / "resumed", "--resume", "--crop", "64x64", "--device", "cpu")
    assert refused.returncode == 2
    assert "last.pth: --crop 64x64: the run was started with 32x48 (" in error_lines(refused)[-1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--crop", "16x64"], "--crop needs HEIGHTxWIDTH of at least 32x32"),
        (["--fg-fraction", "0.5"], "--fg-fraction needs --crop (it is the share of crops made to hold foreground)"),
        (["--crop", "32x32", "--fg-fraction", "1.5"], "--fg-fraction must be in [0, 1]"),
    ],
)
def test_bad_crop_settings_are_one_line_before_work(tmp_path, synth_small, args, message):
    proc = run_cli("unet-train", "--data", synth_small, "--out", tmp_path / "run", *ARGS, *args)
    assert proc.returncode == 2 and error_lines(proc) == [f"unet-train: error: {message}"], proc.stderr
    assert not (tmp_path / "run").exists()


def test_an_image_larger_than_a_batch_of_crops_is_said_before_training():
    assert validation_note(8, (256, 256), [(512, 512)]) is None  # 2 images' worth of 8 crops
    assert validation_note(2, (256, 256), [(512, 512), (512, 768)]) is None  # 3 batches of crops: under 4
    assert validation_note(2, (256, 256), [(512, 512), (1024, 2048)]) == (
        "validation scores whole images: the largest model input, 1024x2048, holds 16.0 times the pixels of a "
        "training batch of 2 crops and is scored alone; if it does not fit in memory the run stops at its first "
        "validation (validation in tiles is not built yet)"
    )
