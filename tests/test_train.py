"""unet-train end to end, through the real CLI: it learns what generalizes to unseen cars, resumes exactly,
logs, evaluates."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import error_lines, run_cli
from unetkit.core import load_checkpoint
from unetkit.core.metrics import class_scores, confusion_counts
from unetkit.train.config import TrainConfig, resume_conflicts
from unetkit.train.data.synth import write_synthetic
from unetkit.train.fit import algorithm_choice
from unetkit.train.loop import EvalResult, monitored, stalled_note

FAST = ["--base-channels", "8", "--workers", "0", "--lr", "3e-3", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """`make demo` at a small size: 48 synthetic 192x128 pairs of 24 cars (2 views each) split by car, a small
    U-Net trained for 20 epochs at scale 0.5 (96x64 inputs, batch 4; about 20 s on 2 idle cores), and 16
    images of 4 other cars held out."""
    data = tmp_path_factory.mktemp("learn_data")
    write_synthetic(data, 48, (192, 128), seed=0, progress=False, views=2)
    heldout = tmp_path_factory.mktemp("heldout")
    write_synthetic(heldout, 16, (192, 128), seed=1, progress=False, views=4)
    run = tmp_path_factory.mktemp("learn_run")
    proc = run_cli("unet-train", "--data", data, "--out", run, "--epochs", "20", "--batch-size", "4", *FAST,
                   check=True)  # fmt: skip
    return data, run, proc, heldout


@pytest.mark.slow
def test_small_unet_learns_the_synthetic_cars(trained_run):
    _, run, proc, _ = trained_run
    model, meta = load_checkpoint(run / "best.pth")
    assert meta.val_dice >= 0.88, proc.stdout  # on 5 cars it never trained on
    assert meta.val_iou >= 0.78
    assert f"best validation Dice {meta.val_dice:.4f}" in proc.stdout
    assert "38 train / 10 val images, 19 / 5 groups (grouped by car" in proc.stdout
    assert model.config.base_channels == 8 and meta.n_classes == 1 and meta.scale == 0.5
    assert meta.class_names == ("car",) and meta.extra["train_args"]["epochs"] == 20
    # one summary line per epoch, in order
    epochs = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert epochs[:3] == ["1/20", "2/20", "3/20"]


@pytest.mark.slow
def test_the_model_generalizes_to_held_out_cars_as_the_demo_reports(trained_run, tmp_path):
    _, run, _, heldout = trained_run
    _, meta = load_checkpoint(run / "best.pth")
    out = tmp_path / "heldout.json"
    proc = run_cli("unet-train", "--eval", run / "best.pth", "--data", heldout, "--json", out, "--device", "cpu",
                   "--no-progress", check=True)  # fmt: skip
    numbers = json.loads(out.read_text())
    assert numbers["images"] == 16 and numbers["groups"] == 4  # 4 cars, none seen in training or validation
    assert numbers["dice"] >= 0.85, proc.stdout  # measured 0.91 (docs/benchmarks.md)
    assert abs(numbers["dice"] - meta.val_dice) <= 0.08  # validation on unseen cars predicts unseen cars
    assert f"(the checkpoint's validation Dice: {meta.val_dice:.4f} at epoch {meta.epoch})" in proc.stdout


@pytest.mark.slow
def test_eval_reproduces_the_validation_score(trained_run):
    data, run, _, _ = trained_run
    _, meta = load_checkpoint(run / "best.pth")
    proc = run_cli("unet-train", "--eval", run / "best.pth", "--data", data, "--split", "val", "--device", "cpu",
                   "--no-progress", check=True)  # fmt: skip
    assert "(val, 10 images in 5 group(s), grouped by car: <car>_<NN> names; model input by scale 0.5)" in proc.stdout
    assert f"model input size: Dice {meta.val_dice:.4f}  IoU {meta.val_iou:.4f}" in proc.stdout


@pytest.mark.slow
def test_history_and_tensorboard_events_open_in_tensorboard(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, proc, _ = trained_run
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    epochs = sum(line.startswith("epoch ") for line in proc.stdout.splitlines())  # 20, fewer if stopped early
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1)) and epochs >= 10
    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"Loss/train", "Loss/val", "Dice/val", "IoU/val", "LR"} <= set(tags["scalars"])
    assert {"Input", "Ground Truth", "Prediction"} <= set(tags["images"])
    dice = [e.value for e in acc.Scalars("Dice/val")]
    assert len(dice) == epochs and dice == pytest.approx([h["Dice/val"] for h in history])
    picture = acc.Images("Prediction")[-1]
    assert (picture.width, picture.height) == (96, 64)


def test_resume_continues_with_the_same_state(tmp_path, synth_small):
    # Exact resume is a CPU promise: on CUDA, training turns cuDNN's benchmark mode on, which is not deterministic.
    args = ["--data", synth_small, "--base-channels", "4", "--workers", "0", "--lr", "3e-3", "--device", "cpu",
            "--no-progress"]  # fmt: skip
    run_cli("unet-train", *args, "--out", tmp_path / "straight", "--epochs", "3", check=True)
    run_cli("unet-train", *args, "--out", tmp_path / "resumed", "--epochs", "2", check=True)
    proc = run_cli("unet-train", "--out", tmp_path / "resumed", "--resume", "--epochs", "3", "--device", "cpu",
                   "--no-progress", check=True)  # fmt: skip
    assert "resumed after epoch 2" in proc.stdout
    assert [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("epoch ")] == ["3/3"]
    a = torch.load(tmp_path / "straight/last.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed/last.pth", weights_only=True)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["training"]["optimizer"]["state"][0]["step"] == b["training"]["optimizer"]["state"][0]["step"]
    assert a["meta"]["val_dice"] == b["meta"]["val_dice"]
    history = (tmp_path / "resumed/history.jsonl").read_text().splitlines()
    assert [json.loads(h)["epoch"] for h in history] == [1, 2, 3]


def test_last_pth_holds_what_resume_needs(tmp_path, synth_small):
    # a relative --data is recorded absolute, so --resume and export's calibration find it from any folder
    run_cli("unet-train", "--data", os.path.relpath(synth_small, tmp_path), "--out", "run", "--epochs", "1",
            "--base-channels", "2", "--workers", "0", "--device", "cpu", "--no-progress", cwd=tmp_path,
            check=True)  # fmt: skip
    training = torch.load(tmp_path / "run/last.pth", weights_only=True)["training"]
    assert training["config"]["data"] == str(synth_small.absolute())
    assert {"optimizer", "scheduler", "early_stopping", "epoch", "rng", "scaler", "config"} <= set(training)
    assert training["scheduler"]["patience"] == 3 and training["early_stopping"]["patience"] == 5
    assert training["optimizer"]["param_groups"][0]["lr"] == 1e-4  # Adam at the seed's learning rate


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--scale", "1.5"], "--scale must be in (0, 1]"),
        (["--loss", "ce"], "--loss: loss 'ce' is not available for a binary model"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--std", "0,1,1"], "--std must be positive"),
        (["--mean", "123.675,116.28,103.53"], "--mean and --std are in [0, 1] units (pixel / 255): divide values"),
        (["--mean", "0.5,0.5"], "'0.5,0.5' is not three numbers R,G,B"),
        (["--lr-patience", "-1"], "--lr-patience must be 0 or more"),
        (["--tta"], "--tta scores a checkpoint with test-time augmentation: give it with --eval"),
    ],
)
def test_bad_arguments_give_one_line(tmp_path, synth_small, args, message):
    if args[0] == "--device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    proc = run_cli("unet-train", "--data", synth_small, "--out", tmp_path, "--workers", "0", *args)
    assert proc.returncode == 2
    lines = [line for line in error_lines(proc) if "error:" in line]  # argparse's own errors follow its usage
    assert len(lines) == 1 and message in lines[0] and lines[0] == error_lines(proc)[-1], proc.stderr
    assert not (tmp_path / "best.pth").exists()


def test_monitor_loss_and_the_seed_tutorials_normalization(tmp_path, synth_small):
    """--monitor loss picks best.pth by the validation loss (the seed tutorial's rule), and --mean/--std are the
    model's normalization, stored in the checkpoint for every engine."""
    run_cli("unet-train", "--data", synth_small, "--out", tmp_path / "run", "--epochs", "3", "--monitor", "loss",
            "--lr-patience", "0", "--mean", "0,0,0", "--std", "1,1,1", "--base-channels", "2", "--workers", "0",
            "--device", "cpu", "--no-progress", "--no-augment", check=True)  # fmt: skip
    history = [json.loads(line) for line in (tmp_path / "run/history.jsonl").read_text().splitlines()]
    best = min(history, key=lambda h: h["Loss/val"])
    _, meta = load_checkpoint(tmp_path / "run/best.pth")
    assert meta.epoch == best["epoch"] and meta.val_dice == pytest.approx(best["Dice/val"])
    assert meta.mean == (0.0, 0.0, 0.0) and meta.std == (1.0, 1.0, 1.0)
    training = torch.load(tmp_path / "run/last.pth", weights_only=True)["training"]
    assert training["config"]["monitor"] == "loss" and training["scheduler"]["patience"] == 0
    assert training["scheduler"]["mode"] == "min"  # the loss itself: "max" on its negation inverts the threshold
    assert training["best_loss"] == pytest.approx(best["Loss/val"])


def test_a_focal_tversky_run_is_evaluated_with_its_own_loss(tmp_path, synth_small):
    """The loss a run trains and validates with is recorded, and --eval reports the same validation loss."""
    run_cli("unet-train", "--data", synth_small, "--out", tmp_path / "run", "--epochs", "1", "--loss", "focal+tversky",
            "--base-channels", "2", "--workers", "0", "--device", "cpu", "--no-progress", "--batch-size", "4",
            check=True)  # fmt: skip
    history = [json.loads(line) for line in (tmp_path / "run/history.jsonl").read_text().splitlines()]
    proc = run_cli("unet-train", "--eval", tmp_path / "run/best.pth", "--data", synth_small, "--split", "val",
                   "--device", "cpu", "--workers", "0", "--no-progress", check=True)  # fmt: skip
    assert f"loss {history[-1]['Loss/val']:.4f}" in proc.stdout
    assert load_checkpoint(tmp_path / "run/best.pth")[1].extra["train_args"]["loss"] == "focal+tversky"


def test_the_monitored_figure_and_the_early_stopping_note():
    ones = torch.ones(1, 4, 4, dtype=torch.long)
    result = EvalResult(loss=0.5, scores=class_scores(confusion_counts(ones, ones, 1), 1))
    assert monitored(result, "dice") == result.mean_dice == 1.0 and monitored(result, "loss") == -0.5
    assert stalled_note("dice", 0.6839, 0.6585) == (
        "; the validation loss still fell (0.6839 -> 0.6585): --monitor loss follows it"
    )
    assert stalled_note("dice", 0.6839, 0.6830) == ""  # under 1 %: noise
    assert stalled_note("loss", 0.6839, 0.6585) == stalled_note("dice", math.nan, 0.5) == ""


def test_a_diverged_run_stops_with_one_line_and_no_checkpoint(tmp_path, synth_small):
    """A loss gone NaN would otherwise train on to the last epoch and end with 'best Dice -inf'."""
    proc = run_cli("unet-train", "--data", synth_small, "--out", tmp_path, "--epochs", "3", "--base-channels", "2",
                   "--workers", "0", "--device", "cpu", "--no-progress", "--lr", "1e12")  # fmt: skip
    assert proc.returncode == 2
    assert error_lines(proc)[-1] == (
        "unet-train: error: epoch 1: the training loss is nan and the weights are lost; lower --lr (now 1e+12) or "
        "check that the masks label some pixels (unet-data check); no checkpoint was written"
    )
    assert not (tmp_path / "best.pth").exists() and not (tmp_path / "last.pth").exists()


def test_resume_follows_a_moved_data_set(tmp_path, synth_small):
    """A run's data set moved (or recorded relative to another folder): --resume --data NEW continues on it."""
    shutil.copytree(synth_small, tmp_path / "data")
    args = ["--base-channels", "2", "--workers", "0", "--device", "cpu", "--no-progress"]
    run_cli("unet-train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--epochs", "1", *args, check=True)
    (tmp_path / "data").rename(tmp_path / "moved")
    lost = run_cli("unet-train", "--out", tmp_path / "run", "--resume", "--epochs", "2", *args)
    assert error_lines(lost) == [
        f"unet-train: error: --resume {tmp_path / 'run/last.pth'}: the run's data is gone from where it was (--data "
        f"{tmp_path / 'data'}); give its new place with --data NEWDIR (or --images and --masks)"
    ]
    proc = run_cli("unet-train", "--out", tmp_path / "run", "--resume", "--epochs", "2", "--data", tmp_path / "moved",
                   *args, check=True)  # fmt: skip
    assert "resumed after epoch 1 (best Dice" in proc.stdout and f") in {tmp_path / 'run'}" in proc.stdout
    training = torch.load(tmp_path / "run/last.pth", weights_only=True)["training"]
    assert training["epoch"] == 2 and training["config"]["data"] == str(tmp_path / "moved")
    # named folders inside the data folder move with it
    named = ["--images", "train", "--masks", "train_masks", "--mask-suffix", "_mask"]
    run_cli("unet-train", "--data", tmp_path / "moved", *named, "--out", tmp_path / "run2", "--epochs", "1", *args,
            check=True)  # fmt: skip
    (tmp_path / "moved").rename(tmp_path / "again")
    proc = run_cli("unet-train", "--out", tmp_path / "run2", "--resume", "--epochs", "2", "--data",
                   tmp_path / "again", *args, check=True)  # fmt: skip
    config = torch.load(tmp_path / "run2/last.pth", weights_only=True)["training"]["config"]
    assert config["images"] == str(tmp_path / "again/train") and config["masks"] == str(tmp_path / "again/train_masks")


def test_resume_of_named_folders_without_data(tmp_path, synth_small):
    """A run on --images/--masks alone: --resume names only the flags given, and moved folders take the data
    folder they are under along."""
    shutil.copytree(synth_small, tmp_path / "data")
    shutil.copytree(synth_small, tmp_path / "other")
    args = ["--base-channels", "2", "--workers", "0", "--device", "cpu", "--no-progress", "--mask-suffix", "_mask"]
    named = ["--images", tmp_path / "data/train", "--masks", tmp_path / "data/train_masks"]
    run_cli("unet-train", *named, "--out", tmp_path / "run", "--epochs", "1", *args, check=True)
    proc = run_cli("unet-train", "--out", tmp_path / "run", "--resume", "--epochs", "2", "--images",
                   tmp_path / "other/train", "--masks", tmp_path / "other/train_masks", *args)  # fmt: skip
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert f"--images {tmp_path / 'other/train'}: the run was started with {tmp_path / 'data/train'}" in line
    assert "--data" not in line.split(" (a resumed run")[0]
    (tmp_path / "data").rename(tmp_path / "moved")
    proc = run_cli("unet-train", "--out", tmp_path / "run", "--resume", "--epochs", "2", "--images",
                   tmp_path / "moved/train", "--masks", tmp_path / "moved/train_masks", *args, check=True)  # fmt: skip
    config = torch.load(tmp_path / "run/last.pth", weights_only=True)["training"]["config"]
    assert config["data"] == str(tmp_path / "moved") and config["images"] == str(tmp_path / "moved/train")
    # --data above the two folders: the moved folders keep their place under it (the split names them so)
    shutil.copytree(synth_small, tmp_path / "top/x")
    named = ["--images", "x/train", "--masks", "x/train_masks"]
    run_cli("unet-train", "--data", tmp_path / "top", *named, "--out", tmp_path / "run2", "--epochs", "1", *args,
            check=True)  # fmt: skip
    (tmp_path / "top").rename(tmp_path / "top2")
    run_cli("unet-train", "--out", tmp_path / "run2", "--resume", "--epochs", "2", "--images",
            tmp_path / "top2/x/train", "--masks", tmp_path / "top2/x/train_masks", *args, check=True)  # fmt: skip
    config = torch.load(tmp_path / "run2/last.pth", weights_only=True)["training"]["config"]
    assert config["data"] == str(tmp_path / "top2") and config["images"] == str(tmp_path / "top2/x/train")


def test_a_run_killed_in_its_first_epoch_starts_again(tmp_path, synth_small):
    """Killed before epoch 1 ended, a run folder holds split.json and tb/ only: nothing to resume or to keep."""
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb/events.out.tfevents.1.host").write_bytes(b"x")
    (tmp_path / "split.json").write_text("{}")
    proc = run_cli("unet-train", "--out", tmp_path, "--resume")
    assert error_lines(proc) == [
        f"unet-train: error: --resume: {tmp_path} holds no last.pth, as its run stopped "
        "before its first epoch ended; start it again: the same command without --resume"
    ]
    run_cli("unet-train", "--data", synth_small, "--out", tmp_path, "--epochs", "1", "--base-channels", "2",
            "--workers", "0", "--device", "cpu", "--no-progress", check=True)  # fmt: skip
    assert (tmp_path / "last.pth").exists()


def test_resume_without_a_run_is_a_clear_error(tmp_path):
    proc = run_cli("unet-train", "--out", tmp_path, "--resume")
    assert proc.returncode == 2
    assert error_lines(proc) == [f"unet-train: error: {tmp_path / 'last.pth'}: checkpoint not found"]


def test_deterministic_kernels_hold_for_the_run_only_and_are_part_of_the_run(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    with algorithm_choice(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert cudnn.deterministic and not cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled()) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # for the run only
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with algorithm_choice(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # a user's own is kept
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    with algorithm_choice(False):  # the default: cuDNN benchmarks the bucketed shapes
        assert cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    stored = TrainConfig(data=Path("d"), out=Path("o"))
    assert TrainConfig.from_dict(TrainConfig(data=Path("d"), out=Path("o"), deterministic=True).to_dict()).deterministic
    assert resume_conflicts(stored, {"deterministic": True}) == ["--deterministic: the run was started without it"]


@pytest.mark.gpu
def test_two_deterministic_cuda_runs_end_with_the_same_weights(tmp_path, synth_small):
    """--deterministic on CUDA (mixed precision, cuDNN): two runs of the same settings are bit for bit alike."""
    args = ["--data", synth_small, "--epochs", "2", "--base-channels", "4", "--workers", "0", "--device", "cuda",
            "--no-progress", "--batch-size", "4", "--deterministic"]  # fmt: skip
    for name in ("a", "b"):
        proc = run_cli("unet-train", *args, "--out", tmp_path / name, check=True)
        assert "deterministic kernels only (--deterministic)" in proc.stdout + proc.stderr
    a = torch.load(tmp_path / "a/last.pth", weights_only=True)
    b = torch.load(tmp_path / "b/last.pth", weights_only=True)
    assert a["training"]["config"]["deterministic"] and b["training"]["config"]["deterministic"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
