"""The contract at the bottom: ModelMeta as the one description of a model, the checkpoint formats, the one
pixels -> input and probabilities -> labels, settings checked before work, the training extra."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import cli_command, error_lines, make_meta
from unetkit.core import (
    CheckpointError,
    ModelMeta,
    UNet,
    UNetConfig,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from unetkit.core.errors import UnetkitError
from unetkit.core.labels import predict_labels, probabilities, to_labels
from unetkit.core.meta import MetaError
from unetkit.core.preprocess import model_input, normalize, scale_pixels
from unetkit.infer.artifacts import ArtifactError, decode_metadata, encode_metadata
from unetkit.infer.engines import EngineUnavailable, create_engine
from unetkit.infer.predictor import Predictor
from unetkit.infer.settings import InferSettings


def test_meta_round_trips_through_every_stored_form():
    meta = ModelMeta(n_classes=3, scale=0.25, threshold=0.4, class_names=("a", "b", "c"), mask_kind="multiclass",
                     val_dice=0.8, extra={"train_args": {"lr": 1e-3}})  # fmt: skip
    assert ModelMeta.from_dict(meta.to_dict()) == meta
    assert decode_metadata(encode_metadata(meta, precision="fp16"), "x.onnx") == meta.replace(precision="fp16")
    assert meta.replace(scale=0.5).scale == 0.5 and meta.replace(note="x").extra["note"] == "x"
    assert ModelMeta(n_classes=1, scale=1.0).names == ("foreground",)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"scale": 0.5, "mean": [0.5] * 3, "std": [0.2] * 3, "threshold": 0.5}, "lacks n_classes"),
        ({"n_classes": 1, "scale": 0.0}, "scale 0.0"),
        ({"n_classes": 1, "scale": 0.5, "threshold": math.nan}, "threshold nan"),
        ({"n_classes": 1, "scale": 0.5, "std": [0.2, 0.0, 0.2]}, "must be positive"),
        ({"n_classes": 1, "scale": 0.5, "mean": [0.5, 0.5]}, "needs 3 values"),
        ({"n_classes": 2, "scale": 0.5, "mask_kind": "binary"}, "binary models have one output channel"),
        ({"n_classes": "many", "scale": 0.5}, "wrong type"),
    ],
)
def test_meta_names_what_is_wrong(values, message):
    values = {"mean": [0.5] * 3, "std": [0.2] * 3, "threshold": 0.5, **values}
    with pytest.raises(MetaError, match=message):
        ModelMeta.from_dict(values)


def test_an_onnx_file_without_a_usable_description_is_refused():
    with pytest.raises(ArtifactError, match="no unetkit metadata"):
        decode_metadata({"producer": "someone"}, "foreign.onnx")
    broken = encode_metadata(make_meta(), scale=0)
    with pytest.raises(ArtifactError, match=r"broken\.onnx: invalid model description: scale 0"):
        decode_metadata(broken, "broken.onnx")


def test_format_1_checkpoints_still_load(tmp_path):
    """Format 1, as the first release wrote it: a free-form meta dict that repeats the model config."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=2)).eval()
    meta = {"n_classes": 1, "class_names": ["car"], "in_channels": 3, "mask_kind": "binary", "layout": "carvana",
            "scale": 0.5, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "threshold": 0.5,
            "ignore_index": 255, "val_dice": 0.9, "val_iou": 0.8, "epoch": 3, "train_args": {"lr": 1e-4},
            "model": model.config.to_dict(), "versions": {"unetkit": "0.1.0"}}  # fmt: skip
    payload = {"format": "unetkit.checkpoint", "format_version": 1, "model": model.config.to_dict(),
               "state_dict": model.state_dict(), "meta": meta}  # fmt: skip
    torch.save(payload, tmp_path / "v1.pth")
    checkpoint = read_checkpoint(tmp_path / "v1.pth")
    assert checkpoint.format_version == 1 and checkpoint.meta.val_dice == 0.9 and checkpoint.meta.layout == "carvana"
    assert "model" not in checkpoint.meta.extra and checkpoint.meta.extra["train_args"] == {"lr": 1e-4}
    loaded, _ = load_checkpoint(tmp_path / "v1.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    payload["meta"] = {**meta, "scale": -1}
    torch.save(payload, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth: damaged checkpoint, invalid model description: scale -1"):
        read_checkpoint(tmp_path / "bad.pth")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"meta": {"n_classes": 3, "mask_kind": "multiclass"}},
         "damaged checkpoint, n_classes 3 in its description, 1 in the network"),
        ({"model": {"base_channels": "x"}}, "damaged checkpoint, model base_channels 'x' (must be a whole number"),
        ({"drop": "head.weight"}, 'weights do not match the stored model config (Missing key(s) in state_dict: '
                                  '"head.weight".)'),
    ],
)  # fmt: skip
def test_a_checkpoint_that_contradicts_itself_is_one_line_naming_what(tmp_path, change, message):
    """A description that disagrees with its network would run and write meaningless masks; a broken config or
    missing weights are named, not reported as torch's first line."""
    model = UNet(UNetConfig(base_channels=2))
    save_checkpoint(tmp_path / "ok.pth", model, make_meta())
    payload = torch.load(tmp_path / "ok.pth", weights_only=True)
    for key in ("meta", "model"):
        payload[key].update(change.get(key, {}))
    payload["state_dict"].pop(change.get("drop", ""), None)
    torch.save(payload, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path / "bad.pth")
    assert str(caught.value).startswith(f"{tmp_path / 'bad.pth'}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_one_pixels_to_input_rule():
    """Training caches uint8 images scaled with rounding; inference feeds the same pixels the same way."""
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 37, 53), dtype=np.uint8))
    meta = make_meta(scale=0.5)
    scaled = scale_pixels(pixels, 0.5)
    assert scaled.dtype == torch.uint8 and tuple(scaled.shape) == (3, 18, 26)  # round(18.5) = 18 (to even)
    assert torch.equal(model_input(pixels, meta), normalize(scaled, meta.mean, meta.std))
    batch = torch.stack([pixels, pixels.flip(-1)])
    assert torch.equal(model_input(batch, meta)[1], model_input(pixels.flip(-1), meta))  # (N, C, H, W) as well
    assert torch.equal(scale_pixels(pixels, 1.0), pixels)


def test_one_probabilities_to_labels_rule():
    logits = torch.tensor([[[[-1.0, 0.5, 3.0]]]])  # (1, 1, 1, 3)
    assert to_labels(probabilities(logits), 0.5).tolist() == [[[0, 1, 1]]]
    assert predict_labels(logits[0], 0.7).tolist() == [[0, 0, 1]]  # (C, H, W) works as (N, C, H, W) does
    multi = torch.tensor([[[[1.0]], [[3.0]], [[2.0]]]])  # (1, 3, 1, 1)
    assert predict_labels(multi).tolist() == [[[1]]] and predict_labels(multi).dtype == torch.uint8


def test_inference_settings_fail_before_the_engine_loads(tmp_path):
    missing = tmp_path / "nope.pth"  # never opened: the settings are checked first
    for kwargs, message in [({"tile": -1}, "--tile -1"), ({"batch": 0}, "--batch 0"), ({"workers": 0}, "--workers 0"),
                            ({"tile": 64, "overlap": 64}, r"--overlap 64: must be in \[0, 32\]"),
                            ({"decoder": "gpu"}, "--decoder gpu"), ({"blend": "max"}, "--blend max")]:  # fmt: skip
        with pytest.raises(UnetkitError, match=message):
            Predictor(missing, **kwargs)
    assert InferSettings(tile=64).tile_overlap == 16 and InferSettings().for_device("cuda").batch_size == 8
    assert InferSettings().for_device("cpu").batch_size == 2 and InferSettings(batch=5).for_device("cuda").batch == 5


def test_a_closed_engine_refuses_to_run(random_checkpoint):
    with Predictor(random_checkpoint, device="cpu") as predictor:
        engine = predictor.engine
        assert predictor.predict(np.zeros((40, 60, 3), np.uint8)).shape == (40, 60)
    with pytest.raises(EngineUnavailable, match="closed"):
        engine(torch.zeros(1, 3, 16, 16))
    with create_engine("torch", checkpoint=random_checkpoint, device="cpu") as engine:
        assert not engine.closed
    assert engine.closed


def test_training_without_its_extra_says_which_packages_to_install(tmp_path, synth_small):
    """albumentations shadowed by a package that fails to import, as when it is not installed."""
    fake = tmp_path / "site" / "albumentations"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'albumentations'\")\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([*cli_command("unet-train"), "--data", synth_small, "--out", tmp_path / "run"],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 2
    assert error_lines(proc) == [
        "unet-train: error: training needs albumentations, which is not installed: pip install 'unetkit[train]'"
    ]
    assert not (tmp_path / "run").exists()
    # Without augmentation training needs no albumentations.
    tiny = ["--epochs", "1", "--base-channels", "2", "--scale", "0.5", "--workers", "0", "--device", "cpu",
            "--no-progress", "--no-augment"]  # fmt: skip
    proc = subprocess.run([*cli_command("unet-train"), "--data", synth_small, "--out", tmp_path / "plain", *tiny],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "plain" / "best.pth").is_file()
    # Inference needs none of it.
    code = "import unetkit.infer.predictor, unetkit.export.cli, unetkit.bench.cli, sys; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout == "ok\n"


class _BadFile(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        from unetkit.core.errors import DataError

        raise DataError(f"masks/{i}.png: values 7 are no class ids of --classes 3 (0-2; 255 is ignored)")


def test_an_error_in_a_dataloader_worker_is_its_own_line():
    """PyTorch re-raises a worker's error with the worker's traceback in its message; the CLIs print the line."""
    from unetkit.core.cli import worker_message
    from unetkit.core.errors import DataError

    with pytest.raises(DataError) as caught:
        next(iter(torch.utils.data.DataLoader(_BadFile(), num_workers=1)))
    assert "Original Traceback" in str(caught.value)  # what PyTorch does
    assert worker_message(caught.value) == "masks/0.png: values 7 are no class ids of --classes 3 (0-2; 255 is ignored)"
    assert worker_message(DataError("a.png: plain")) == "a.png: plain"
