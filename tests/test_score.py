"""unet-data score: what an engine wrote, scored against the data set's own masks at the original size."""

import json
import shutil

import pytest
from PIL import Image

from conftest import error_lines, run_cli


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, exported_checkpoint, calib_images):
    """The trained checkpoint's masks of 8 full-size synthetic cars (torch engine), and its own --eval."""
    out = tmp_path_factory.mktemp("pred") / "masks"
    ckpt = exported_checkpoint[0] / "best.pth"
    run_cli("unet-infer", calib_images / "train", "--checkpoint", ckpt, "--out", out, "--device", "cpu",
            "--no-progress", check=True)  # fmt: skip
    numbers = tmp_path_factory.mktemp("eval") / "eval.json"
    run_cli("unet-train", "--eval", ckpt, "--data", calib_images, "--json", numbers, "--device", "cpu",
            "--no-progress", "--workers", "0", check=True)  # fmt: skip
    return out, json.loads(numbers.read_text())


def test_the_written_masks_score_what_eval_reports_at_the_original_size(predicted, calib_images, tmp_path):
    out, evaluated = predicted
    proc = run_cli("unet-data", "score", out, "--data", calib_images, "--json", tmp_path / "s.json", check=True)
    score = json.loads((tmp_path / "s.json").read_text())
    assert score["schema"] == "unetkit.score/1" and score["scored"] == 8 and not score["missing"]
    # the same masks --eval computes from the same checkpoint: the same pooled figures, image by image too
    assert score["dice"] == pytest.approx(evaluated["dice"], abs=1e-6)
    assert score["iou"] == pytest.approx(evaluated["iou"], abs=1e-6)
    by_name = {row["image"]: row["dice"] for row in evaluated["per_image"]}
    assert {r["name"]: r["dice"] for r in score["images"]} == pytest.approx(by_name, abs=1e-6)
    assert f"{out} against {calib_images}: 8 of 8 images scored" in proc.stdout
    assert "precision " in proc.stdout and "recall " in proc.stdout and "worst: train/" in proc.stdout


def test_eval_says_what_post_processing_unet_infer_then_writes(predicted, exported_checkpoint, calib_images, tmp_path):
    _, evaluated = predicted
    out = tmp_path / "post"
    run_cli("unet-infer", calib_images / "train", "--checkpoint", exported_checkpoint[0] / "best.pth", "--out", out,
            "--keep-largest", "--fill-holes", "--device", "cpu", "--no-progress", check=True)  # fmt: skip
    run_cli("unet-data", "score", out, "--data", calib_images, "--json", tmp_path / "s.json", check=True)
    score = json.loads((tmp_path / "s.json").read_text())
    expected = {row["flags"]: row for row in evaluated["postprocessing"]}["--keep-largest --fill-holes"]
    assert score["dice"] == pytest.approx(expected["dice"], abs=1e-6)


def test_missing_and_misfit_predictions_are_named(predicted, calib_images, tmp_path):
    out, _ = predicted
    some = tmp_path / "some"
    shutil.copytree(out, some)
    masks = sorted(some.glob("*.png"))
    masks[0].unlink()  # no prediction for one image: left out, said
    Image.open(masks[1]).resize((64, 48), Image.NEAREST).save(masks[1])  # not its truth's size: that image fails
    proc = run_cli("unet-data", "score", some, "--data", calib_images)
    assert proc.returncode == 1
    assert f"{some} against {calib_images}: 6 of 8 images scored" in proc.stdout
    assert (
        f"warning: 1 image(s) have no prediction, left out of the score (e.g. train/{masks[0].stem}.jpg)" in proc.stdout
        or "warning: 1 image(s) have no prediction" in proc.stdout
    )
    assert f"failed: {masks[1]}: the prediction is 64x48, its truth" in proc.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_cli("unet-data", "score", empty, "--data", calib_images)
    assert nothing.returncode == 2
    assert error_lines(nothing) == [f"unet-data: error: {empty}: holds no prediction for any of the 8 images of "
                                    f"{calib_images} (predictions are <image name>.png)"]  # fmt: skip


def test_a_multi_class_prediction_of_no_class_is_that_images_failure(tmp_path):
    import numpy as np

    for sub in ("images", "masks", "pred"):
        (tmp_path / sub).mkdir()
    truth = np.zeros((8, 12), np.uint8)
    truth[:, 6:] = 2
    for name in ("a", "b"):
        Image.fromarray(np.full((8, 12, 3), 90, np.uint8)).save(tmp_path / f"images/{name}.jpg")
        Image.fromarray(truth).save(tmp_path / f"masks/{name}.png")
    Image.fromarray(truth).save(tmp_path / "pred/a.png")
    void = truth.copy()
    void[0] = 255
    Image.fromarray(void).save(tmp_path / "pred/b.png")
    data = ["--images", tmp_path / "images", "--masks", tmp_path / "masks", "--classes", "3"]
    proc = run_cli("unet-data", "score", tmp_path / "pred", *data, "--json", tmp_path / "s.json")
    assert proc.returncode == 1, proc.stderr
    assert (
        f"failed: {tmp_path / 'pred/b.png'}: holds 255, which is no class: a prediction gives every pixel one of 0-2"
        in proc.stdout
    )
    score = json.loads((tmp_path / "s.json").read_text())
    assert score["scored"] == 1 and score["dice"] == 1.0  # a is its own truth; classes 0 and 2 are present
    own = run_cli("unet-data", "score", tmp_path / "masks", *data)  # the truth would score itself 1.0
    assert own.returncode == 2
    assert f"{tmp_path / 'masks'}: holds the data set's own masks (e.g." in error_lines(own)[-1]
