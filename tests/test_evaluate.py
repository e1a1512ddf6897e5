"""Evaluation a user can act on: per image and per group at the original size, the worst images drawn, JSON."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from unetkit.core.labels import IGNORE_INDEX, IGNORED_COLOR, palette
from unetkit.core.metrics import class_scores
from unetkit.train.report import EvalReport, ImageScore
from unetkit.train.worst import PRED_ONLY, TRUTH_ONLY, WRONG, difference


def counts(*rows):
    return torch.tensor(rows, dtype=torch.int64)


def make_report(images, n_classes=1, names=("car",)):
    return EvalReport("best.pth", "data", "all", list(names), n_classes, "by car", "scale 0.5", images,
                      class_scores(sum(s.counts for s in images), n_classes), loss=0.1)  # fmt: skip


def test_report_numbers_by_hand():
    a1 = ImageScore("train/a_01.jpg", "a", 10, 10, counts([8, 2, 0]))  # Dice 16/18, IoU 8/10
    a2 = ImageScore("train/a_02.jpg", "a", 10, 10, counts([2, 0, 2]))  # Dice 4/6, IoU 2/4
    b1 = ImageScore("train/b_01.jpg", "b", 10, 10, counts([0, 0, 0]))  # empty truth, empty prediction: 1.0
    report = make_report([a1, a2, b1])
    # pooled: tp 10, fp 2, fn 2 -> Dice 20/24, IoU 10/14
    assert report.pooled.mean_dice == pytest.approx(20 / 24) and report.pooled.mean_iou == pytest.approx(10 / 14)
    assert report.mean_image() == (pytest.approx((16 / 18 + 4 / 6 + 1) / 3), pytest.approx((0.8 + 0.5 + 1) / 3))
    # group a pooled: tp 10, fp 2, fn 2; group b: 1.0; worst group first
    assert report.per_group() == [("a", 2, pytest.approx(20 / 24), pytest.approx(10 / 14)), ("b", 1, 1.0, 1.0)]
    assert [s.name for s, _, _ in report.worst(2)] == ["train/a_02.jpg", "train/a_01.jpg"]
    data = report.to_dict()
    assert data["schema"] == "unetkit.eval/1" and data["images"] == 3 and data["groups"] == 2
    assert data["worst"] == ["train/a_02.jpg", "train/a_01.jpg", "train/b_01.jpg"]
    assert data["per_image"][0] == {"image": "train/a_01.jpg", "group": "a", "height": 10, "width": 10,
                                    "dice": pytest.approx(16 / 18), "iou": pytest.approx(0.8)}  # fmt: skip


def test_post_processing_is_scored_pooled_beside_the_plain_masks():
    # keep-largest drops a1's 2 stray pixels and a2's one found one: pooled tp 9, fp 0, fn 3 -> Dice 18/21
    a1 = ImageScore("a1.jpg", "a", 10, 10, counts([8, 2, 0]), {"--keep-largest": counts([8, 0, 0])})
    a2 = ImageScore("a2.jpg", "a", 10, 10, counts([2, 0, 2]), {"--keep-largest": counts([1, 0, 3])})
    report = make_report([a1, a2])  # plain: tp 10, fp 2, fn 2 -> Dice 20/24
    assert report.postprocessing() == [("--keep-largest", pytest.approx(18 / 21), pytest.approx((1 + 2 / 5) / 2))]
    plain_mean = (16 / 18 + 4 / 6) / 2
    assert report.to_dict()["postprocessing"] == [{"flags": "--keep-largest", "dice": round(18 / 21, 6),
                                                   "mean_image_dice": round(0.7, 6),
                                                   "dice_change": round(18 / 21 - 20 / 24, 6),
                                                   "mean_image_dice_change": round(0.7 - plain_mean, 6)}]  # fmt: skip
    lines = report.lines()
    at = lines.index("  post-processing (unet-infer flags): Dice pooled, per image (change)")
    assert lines[at + 1] == f"    --keep-largest  {18 / 21:.4f} (+0.0238)  0.7000 ({0.7 - plain_mean:+.4f})"


def test_multiclass_report_scores_present_classes_and_names_absent_ones():
    # class 0 and 1 present; class 2 absent from the truth but predicted on 3 pixels of class 0
    one = ImageScore("x.png", "x", 4, 4, counts([5, 0, 3], [8, 0, 0], [0, 3, 0]))
    empty = ImageScore("void.png", "void", 4, 4, counts([0, 0, 0], [0, 0, 0], [0, 0, 0]))  # all ignored
    report = make_report([one, empty], n_classes=3, names=("road", "sky", "bus"))
    data = report.to_dict()
    assert data["absent_classes"] == ["bus"]
    assert data["per_class"][2] == {"name": "bus", "present": False, "dice": None, "iou": None, "stray_pixels": 3}
    assert data["dice"] == pytest.approx((10 / 13 + 1.0) / 2)  # road 2*5/(10+3), sky 1.0; bus left out
    assert data["per_image"][1]["dice"] is None  # nothing to score in an all-ignored image: null, not NaN
    assert math.isnan(report.per_image()[1][1])
    text = "\n".join(report.lines())
    assert "bus              absent from the truth (left out of the mean; 3 pixel(s) predicted as it)" in text


def test_difference_colours_false_positives_and_misses_apart():
    truth = np.array([[1, 1, 0, 0]], np.uint8)
    pred = np.array([[1, 0, 1, 0]], np.uint8)
    out = difference(truth, pred, np.zeros((1, 4, 3), np.uint8), 1)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == TRUTH_ONLY and tuple(out[0, 2]) == PRED_ONLY
    assert tuple(out[0, 3]) == (0, 0, 0)


def test_ignored_pixels_of_multi_class_pictures_take_a_colour_no_class_has():
    for kind, n in (("cityscapes", 19), ("multiclass", 200)):
        colours = palette(n, kind)
        assert tuple(colours[IGNORE_INDEX]) == IGNORED_COLOR
        assert IGNORED_COLOR not in {tuple(c) for c in colours[:n]}  # Cityscapes' greys included
    truth = np.array([[0, 1, IGNORE_INDEX]], np.uint8)
    out = difference(truth, np.array([[0, 2, 1]], np.uint8), np.zeros((1, 3, 3), np.uint8), 3)
    assert [tuple(c) for c in out[0]] == [(0, 0, 0), WRONG, IGNORED_COLOR]


def test_eval_cli_reports_per_image_and_group_with_a_picture_and_json(grouped_run, tmp_path):
    data, run, train_proc = grouped_run
    out = tmp_path / "numbers.json"
    proc = run_cli("unet-train", "--eval", run / "best.pth", "--data", data, "--json", out, "--device", "cpu",
                   "--no-progress", check=True)  # fmt: skip
    numbers = json.loads(out.read_text())
    assert {"schema", "checkpoint", "data", "split", "images", "groups", "grouping", "resize", "scored_at", "dice",
            "iou", "mean_image_dice", "mean_image_iou", "model_size", "recorded_val_dice", "recorded_epoch",
            "per_class", "absent_classes", "per_image", "per_group", "worst", "picture",
            "tta", "postprocessing"} == set(numbers)  # fmt: skip
    assert numbers["images"] == 24 and numbers["groups"] == 6 and numbers["scored_at"] == "original image size"
    assert {row["group"] for row in numbers["per_group"]} == {row["group"] for row in numbers["per_image"]}
    assert all(row["height"] == 64 and row["width"] == 96 for row in numbers["per_image"])
    post = numbers["postprocessing"]  # what each unet-infer post-processing would change, scored on these images
    assert [p["flags"] for p in post] == ["--keep-largest", "--fill-holes", "--keep-largest --fill-holes"]
    assert all(p["dice_change"] == pytest.approx(p["dice"] - numbers["dice"], abs=2e-6) for p in post)
    assert "  post-processing (unet-infer flags): Dice pooled, per image (change)\n" in proc.stdout
    width = max(len(p["flags"]) for p in post)
    for p in post:
        change = round(p["dice"] - numbers["dice"], 4) + 0.0  # never shown as -0.0000
        assert f"    {p['flags']:<{width}}  {p['dice']:.4f} ({change:+.4f})  {p['mean_image_dice']:.4f}" in proc.stdout
    worst = sorted(numbers["per_image"], key=lambda r: r["dice"])[0]["image"]
    assert numbers["worst"][0] == worst and f"worst images (Dice): {worst}" in proc.stdout
    picture = run / "best-eval-grouped_data0-all-worst.png"
    assert numbers["picture"] == str(picture) and f"picture of the worst 4: {picture}" in proc.stdout
    with Image.open(picture) as img:
        img.load()
        assert img.width == 4 * 320 + 6 and img.height > 4 * 200  # four rows of four panels
    # another evaluation into the same name (the same data again, or another folder of that name) keeps it
    stamp = picture.stat().st_mtime_ns
    mirrored = tmp_path / "tta.json"
    again = run_cli("unet-train", "--eval", run / "best.pth", "--data", data, "--device", "cpu", "--no-progress",
                    "--tta", "--json", mirrored, check=True)  # fmt: skip
    second = run / "best-eval-grouped_data0-all-worst-2.png"
    assert f"picture of the worst 4: {second}" in again.stdout and picture.stat().st_mtime_ns == stamp
    # --tta scores the mirrored-averaged predictions; the loss stays that of the plain logits
    tta = json.loads(mirrored.read_text())
    assert not numbers["tta"] and tta["tta"] and "; mirrored TTA):" in again.stdout
    assert f"loss {tta['model_size']['loss']:.4f} (of the plain prediction)" in again.stdout
    assert tta["model_size"]["loss"] == pytest.approx(numbers["model_size"]["loss"], rel=1e-5)
    assert tta["dice"] != numbers["dice"]
    # the end of training reported the validation side the same way, and wrote its numbers beside best.pth
    val = json.loads((run / "best-eval-grouped_data0-val.json").read_text())
    assert val["split"] == "val" and f"numbers: {run / 'best-eval-grouped_data0-val.json'}" in train_proc.stdout
    assert val["model_size"]["dice"] == pytest.approx(val["recorded_val_dice"], abs=1e-6)


def test_multiclass_evaluation_end_to_end_names_absent_classes(tmp_path):
    from unetkit.core import UNet, UNetConfig, save_checkpoint
    from unetkit.train.data.layouts import CITYSCAPES_CLASSES
    from unetkit.train.evaluate import EvalSettings, evaluate_checkpoint

    for split, city in (("train", "aachen"), ("val", "lindau")):
        name = f"{city}_000000_000019"
        img = tmp_path / f"data/leftImg8bit/{split}/{city}/{name}_leftImg8bit.png"
        img.parent.mkdir(parents=True)
        Image.new("RGB", (24, 16), (90, 120, 60)).save(img)
        ids = np.full((16, 24), 7, np.uint8)  # road
        ids[:5] = 23  # sky
        ids[:, :2] = 0  # void: ignored
        gt = tmp_path / f"data/gtFine/{split}/{city}/{name}_gtFine_labelIds.png"
        gt.parent.mkdir(parents=True)
        Image.fromarray(ids).save(gt)
    torch.manual_seed(0)
    meta = make_meta_19()
    save_checkpoint(tmp_path / "best.pth", UNet(UNetConfig(n_classes=19, base_channels=2)).eval(), meta)
    report = evaluate_checkpoint(tmp_path / "best.pth", tmp_path / "data", EvalSettings(device="cpu", progress=False))
    data = report.to_dict()
    assert data["images"] == 2 and data["groups"] == 2  # by city
    assert set(data["absent_classes"]) == set(CITYSCAPES_CLASSES) - {"road", "sky"}
    present = [c for c in data["per_class"] if c["present"]]
    assert [c["name"] for c in present] == ["road", "sky"]
    assert data["dice"] == pytest.approx(sum(c["dice"] for c in present) / 2)
    with Image.open(report.picture) as img:
        img.load()
        assert img.mode == "RGB"


def make_meta_19():
    from unetkit.core.meta import ModelMeta
    from unetkit.train.data.layouts import CITYSCAPES_CLASSES

    return ModelMeta(n_classes=19, scale=1.0, class_names=CITYSCAPES_CLASSES, mask_kind="cityscapes")
