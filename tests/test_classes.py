"""Your own multi-class data: masks of class ids in two named folders (`--classes`), from the data check to
training, evaluation and the masks unet-infer writes."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import error_lines, run_cli
from unetkit.core import load_checkpoint
from unetkit.core.errors import DataError
from unetkit.core.imageio import binary_mask, class_id_mask
from unetkit.core.meta import ResizeRule
from unetkit.train.data.dataset import SampleRule, read_pair
from unetkit.train.data.layouts import Pair
from unetkit.train.data.options import parse_classes

NAMES = "background,red,green,blue"
COLOURS = {1: (200, 40, 40), 2: (40, 200, 40), 3: (40, 40, 200)}


def write_squares(root, count=12):
    """`count` images of coloured squares on grey (two sizes), masks of class ids 0-3 as 'L' PNGs, the first
    four with a void (255) band."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(count):
        h, w = (48, 64) if i % 2 else (60, 80)
        labels = np.zeros((h, w), np.uint8)
        pixels = np.full((h, w, 3), 30, np.uint8)
        for c, colour in COLOURS.items():
            y, x = rng.integers(0, h - 14), rng.integers(0, w - 14)
            labels[y : y + 12, x : x + 12], pixels[y : y + 12, x : x + 12] = c, colour
        if i < 4:
            labels[:2] = 255
        Image.fromarray(pixels).save(root / "images" / f"s{i:02d}.png")
        Image.fromarray(labels).save(root / "labels" / f"s{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    return write_squares(tmp_path_factory.mktemp("squares"))


@pytest.fixture(scope="module")
def trained(squares, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    proc = run_cli("unet-train", "--images", squares / "images", "--masks", squares / "labels", "--classes", NAMES,
                   "--out", run, "--epochs", "2", "--base-channels", "4", "--workers", "0", "--device", "cpu",
                   "--no-progress", "--lr", "3e-3", "--class-weights", "0.5,2,2,2", check=True)  # fmt: skip
    return run, proc


def test_class_id_masks_are_checked_per_file(tmp_path):
    raw = np.array([[0, 1], [3, 255]], np.uint8)
    assert class_id_mask(raw, "m.png", 4).tolist() == raw.tolist()
    with pytest.raises(DataError, match=r"^m.png: values 3 are no class ids of --classes 3 \(0-2; 255 is ignored\)"):
        class_id_mask(raw, "m.png", 3)
    with pytest.raises(DataError, match=r"m\.jpg: class ids in a JPG file are changed at every edge by lossy"):
        class_id_mask(raw, "m.jpg", 4)
    # read as binary, such a mask says how to read it as classes, not only how to merge them
    with pytest.raises(DataError, match=r"class ids\? --classes 4 reads 0-3 as 4 classes; --mask-threshold would"):
        binary_mask(raw, "m.png")
    # a palette mask whose used entries happen to be black and white is still class ids, not 0/255 greys
    Image.new("RGB", (2, 2)).save(tmp_path / "i.png")
    bw = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    bw.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0] + [0] * 759)
    bw.save(tmp_path / "m.png")
    _, labels = read_pair(Pair(tmp_path / "i.png", tmp_path / "m.png"), SampleRule(ResizeRule(), "multiclass", None, 3))
    assert labels.tolist() == [[0, 1], [1, 0]]
    assert parse_classes("3") == ("class 0", "class 1", "class 2")
    assert parse_classes(" background, polyp ") == ("background", "polyp")


def test_the_data_check_reads_class_ids_with_classes_and_says_so_without(squares):
    folders = ["--images", "images", "--masks", "labels", "--no-progress"]
    binary = run_cli("unet-data", "check", squares, *folders)
    assert binary.returncode == 2
    assert "(12 mask(s) of class ids: --classes 4 reads them as classes)" in error_lines(binary)[0]
    ok = run_cli("unet-data", "check", squares, *folders, "--classes", NAMES, check=True)
    assert f"{squares}: folders layout, 12 pairs, 4 output channel(s)" in ok.stdout
    assert "class balance (share of labelled pixels): background" in ok.stdout and "blue" in ok.stdout
    assert "ignored pixels:" in ok.stdout
    more = run_cli("unet-data", "check", squares, *folders, "--classes", "5", check=True)
    assert "  warning: no mask holds class 4 (class 4): check --classes, or the masks" in more.stdout
    few = run_cli("unet-data", "check", squares, *folders, "--classes", "3")
    assert few.returncode == 2 and "values 3 are no class ids of --classes 3" in few.stderr
    both = run_cli("unet-data", "check", squares, *folders, "--classes", "4", "--mask-threshold", "128")
    assert error_lines(both) == ["unet-data: error: --mask-threshold binarises masks; masks of --classes hold class "
                                 "ids: give one of the two"]  # fmt: skip
    alone = run_cli("unet-data", "check", squares, "--classes", "3")
    assert error_lines(alone) == ["unet-data: error: --image-suffix, --mask-suffix, --mask-ext and --classes need "
                                  "--images and --masks (the built-in layouts define their masks)"]  # fmt: skip


def test_training_on_class_ids_makes_a_multi_class_model(trained, squares, tmp_path):
    run, proc = trained
    _, meta = load_checkpoint(run / "best.pth")
    assert meta.n_classes == 4 and meta.class_names == tuple(NAMES.split(",")) and meta.mask_kind == "multiclass"
    assert "loss ce+dice" in proc.stdout
    assert meta.extra["train_args"]["classes"] == NAMES.split(",")
    # the final evaluation scores with the run's own weighted loss: the same figure its validation reported
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    val_loss = next(h["Loss/val"] for h in history if h["epoch"] == meta.epoch)
    assert f"Dice {meta.val_dice:.4f}  IoU {meta.val_iou:.4f}  loss {val_loss:.4f}" in proc.stdout
    # --eval on the same folders needs no --classes: the checkpoint names them
    out = tmp_path / "eval.json"
    run_cli("unet-train", "--eval", run / "best.pth", "--images", squares / "images", "--masks", squares / "labels",
            "--device", "cpu", "--no-progress", "--json", out, check=True)  # fmt: skip
    numbers = json.loads(out.read_text())
    assert [c["name"] for c in numbers["per_class"]] == NAMES.split(",") and numbers["images"] == 12
    folders = ["--images", squares / "images", "--masks", squares / "labels"]
    renamed = run_cli("unet-train", "--eval", run / "best.pth", *folders, "--classes", "a,b,c,d", "--device", "cpu")
    assert error_lines(renamed) == [f"unet-train: error: --classes a,b,c,d: {run / 'best.pth'} names its classes "
                                    f"{NAMES}; leave --classes out to use them"]  # fmt: skip
    weighted = run_cli("unet-train", "--eval", run / "best.pth", *folders, "--class-weights", "1,1,1,1")
    assert "--class-weights is a training flag: leave it out" in error_lines(weighted)[0]
    # the masks unet-infer writes hold class ids, at each image's size
    run_cli("unet-infer", squares / "images", "--checkpoint", run / "best.pth", "--out", tmp_path / "pred",
            "--device", "cpu", "--no-progress", check=True)  # fmt: skip
    written = np.array(Image.open(tmp_path / "pred/s01.png"))
    assert written.shape == (48, 64) and set(np.unique(written).tolist()) <= {0, 1, 2, 3}


def test_class_weights_that_do_not_fit_the_classes_are_one_line(squares, tmp_path):
    proc = run_cli("unet-train", "--images", squares / "images", "--masks", squares / "labels", "--classes", "4",
                   "--class-weights", "1,2", "--out", tmp_path / "run", "--epochs", "1", "--workers", "0",
                   "--device", "cpu", "--no-progress")  # fmt: skip
    assert error_lines(proc) == ["unet-train: error: --class-weights has 2 value(s) for 4 classes"]


def test_a_threshold_for_a_multi_class_model_is_refused(squares, tmp_path):
    proc = run_cli("unet-train", "--images", squares / "images", "--masks", squares / "labels", "--classes", "4",
                   "--threshold", "0.7", "--out", tmp_path / "run", "--epochs", "1", "--workers", "0",
                   "--device", "cpu", "--no-progress")  # fmt: skip
    assert error_lines(proc) == ["unet-train: error: --threshold 0.7: a 4-class model takes each pixel's most "
                                 "probable class; the threshold is for binary models"]  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_fine_tuning_from_a_binary_checkpoint_keeps_its_weights_and_gives_a_new_head(
    squares, random_checkpoint, tmp_path
):
    """--init: the checkpoint's width and weights, a new head for 4 classes; a flag that disagrees is one line."""
    folders = ["--images", squares / "images", "--masks", squares / "labels", "--classes", "4"]
    common = ["--epochs", "1", "--workers", "0", "--device", "cpu", "--no-progress", "--no-augment"]
    bad = tmp_path / "bad.pth"  # a description that does not fit its own weights
    payload = torch.load(random_checkpoint, weights_only=True)
    payload["model"]["base_channels"] = 8
    torch.save(payload, bad)
    broken = run_cli("unet-train", *folders, "--init", bad, "--out", tmp_path / "broken", *common)
    (line,) = error_lines(broken)
    assert line.startswith(f"unet-train: error: {bad}: weights do not match the stored model config")
    clash = run_cli("unet-train", *folders, "--init", random_checkpoint, "--base-channels", "8", "--out",
                    tmp_path / "clash", *common)  # fmt: skip
    assert error_lines(clash) == [f"unet-train: error: --init {random_checkpoint}: --base-channels 8 (the checkpoint "
                                  "has 4); its weights need its own network and inputs"]  # fmt: skip
    proc = run_cli("unet-train", *folders, "--init", random_checkpoint, "--lr", "1e-12", "--out", tmp_path / "run",
                   *common, check=True)  # fmt: skip
    assert (f"initialized from {random_checkpoint}; its 1-channel head replaced by a new 4-channel one"
            in proc.stdout)  # fmt: skip
    tuned = torch.load(tmp_path / "run/best.pth", weights_only=True)
    start = torch.load(random_checkpoint, weights_only=True)["state_dict"]
    assert tuned["model"]["base_channels"] == 4 and tuned["state_dict"]["head.weight"].shape[0] == 4
    convs = [k for k, v in start.items() if k.endswith("weight") and v.dim() == 4 and not k.startswith("head.")]
    assert convs and all(torch.allclose(tuned["state_dict"][k], start[k], atol=1e-6) for k in convs)
    assert load_checkpoint(tmp_path / "run/best.pth")[1].extra["train_args"]["init"] == str(random_checkpoint)


def test_a_multi_class_run_that_recorded_a_threshold_still_resumes(trained, tmp_path):
    """Runs from before the refusal could record --threshold for a multi-class model: they resume as they were."""
    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    payload = torch.load(copy / "last.pth", weights_only=True)
    payload["training"]["config"]["threshold"] = 0.6
    torch.save(payload, copy / "last.pth")
    proc = run_cli("unet-train", "--out", copy, "--resume", "--epochs", "3", "--device", "cpu", "--workers", "0",
                   "--no-progress", "--classes", NAMES, check=True)  # fmt: skip  # the same classes may be given
    assert "resumed after epoch 2 (best Dice" in proc.stdout and "epoch 3/3" in proc.stdout


def test_cache_keys_of_binary_and_cityscapes_masks_are_as_before():
    """A new field in the sample rule must not orphan earlier --cache entries."""
    from unetkit.core.meta import ResizeRule
    from unetkit.train.data.dataset import SampleRule

    rule = ResizeRule("scale", scale=0.5)
    assert SampleRule(rule, "binary").key() == f"{rule!r}|binary|None"
    assert SampleRule(rule, "cityscapes", None, 19).key() == f"{rule!r}|cityscapes|None"
    assert SampleRule(rule, "multiclass", None, 4).key() == f"{rule!r}|multiclass|None|4"


def test_class_ids_in_a_built_in_layout_are_told_how_to_read_them(squares, tmp_path):
    """A Kvasir-style folder (images/ + masks/) of class-id masks: the hint names the flags that work there."""
    shutil.copytree(squares / "images", tmp_path / "kv/images")
    shutil.copytree(squares / "labels", tmp_path / "kv/masks")
    proc = run_cli("unet-data", "check", tmp_path / "kv", "--no-progress")
    assert (
        "(12 mask(s) of class ids: --images images --masks masks --classes 4 reads them as classes)"
        in (error_lines(proc)[0])
    )
    run_cli("unet-data", "check", tmp_path / "kv", "--images", "images", "--masks", "masks", "--classes", "4",
            "--no-progress", check=True)  # fmt: skip


def test_palette_for_a_binary_model_is_refused_before_any_write(squares, random_checkpoint, tmp_path):
    proc = run_cli("unet-infer", squares / "images", "--checkpoint", random_checkpoint, "--palette", "--device",
                   "cpu", "--out", tmp_path / "masks")  # fmt: skip
    assert error_lines(proc) == ["unet-infer: error: --palette colours the classes of a multi-class model; this one is "
                                 "binary (its masks are 0/255)"]  # fmt: skip
    assert not (tmp_path / "masks").exists()
