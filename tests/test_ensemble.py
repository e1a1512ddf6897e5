"""Several checkpoints as one model: probabilities averaged, members checked alike, the run recorded as one."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import error_lines, make_meta, run_cli
from unetkit.core.checkpoint import save_checkpoint
from unetkit.core.model import UNet, UNetConfig
from unetkit.infer.engines.ensemble import ensemble_digest, ensemble_problem, mean_probability_logits
from unetkit.infer.predictor import Predictor
from unetkit.infer.record import RECORD_NAME


def test_the_mean_is_of_probabilities_and_handed_on_as_their_logits():
    torch.manual_seed(0)
    a, b = torch.randn(2, 1, 4, 5) * 4, torch.randn(2, 1, 4, 5) * 4
    mean = (torch.sigmoid(a) + torch.sigmoid(b)) / 2
    torch.testing.assert_close(torch.sigmoid(mean_probability_logits([a, b], 1)), mean)
    assert not torch.allclose(torch.sigmoid((a + b) / 2), mean, atol=1e-3)  # averaging logits would differ
    c, d = torch.randn(2, 3, 4, 5) * 4, torch.randn(2, 3, 4, 5) * 4
    softmax = (torch.softmax(c, 1) + torch.softmax(d, 1)) / 2
    torch.testing.assert_close(torch.softmax(mean_probability_logits([c, d], 3), 1), softmax)
    saturated = mean_probability_logits([torch.full((1, 1, 1, 1), 80.0)] * 2, 1)
    assert torch.isfinite(saturated).all()  # probabilities of 1 are clamped before their logit
    assert ensemble_digest(["b", "a"]) == ensemble_digest(["a", "b"]) != ensemble_digest(["a", "c"])


def test_models_that_read_images_differently_are_not_averaged():
    assert ensemble_problem([make_meta(), make_meta()], ["a.pth", "b.pth"]) is None
    assert ensemble_problem([make_meta(scale=0.5), make_meta(scale=0.25)], ["a.pth", "b.pth"]) == (
        "a.pth and b.pth differ in their resize rule (scale 0.5 and scale 0.25): an ensemble averages models that "
        "read images alike and predict the same classes"
    )
    assert "differ in their classes (1 and 3)" in ensemble_problem(
        [make_meta(), make_meta(n_classes=3, class_names=("a", "b", "c"))], ["a.pth", "b.pth"]
    )


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, random_checkpoint):
    """The session's random checkpoint and another one of the same kind (other weights)."""
    torch.manual_seed(1)
    other = tmp_path_factory.mktemp("other") / "best.pth"
    save_checkpoint(other, UNet(UNetConfig(base_channels=4)).eval(), make_meta())
    return random_checkpoint, other


def test_an_ensemble_predicts_the_mean_probability_of_its_members(two_checkpoints):
    a, b = two_checkpoints
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    with Predictor(a, device="cpu") as pa, Predictor(b, device="cpu") as pb:
        expected = (pa.predict(image, return_prob=True) + pb.predict(image, return_prob=True)) / 2
    with Predictor([b, a], device="cpu") as ensemble:
        assert ensemble.engine.label == "ensemble of 2 x torch fp32"
        np.testing.assert_allclose(ensemble.predict(image, return_prob=True), expected, atol=1e-5)


def test_unet_infer_runs_an_ensemble_and_records_it_as_one_model(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(folder / "x.png")
    common = ["unet-infer", folder, "--device", "cpu", "--no-progress", "--out", tmp_path / "out"]
    proc = run_cli(*common, "--checkpoint", a, "--checkpoint", b, check=True)
    assert "engine ensemble of 2 x torch fp32 on cpu, whole images" in proc.stdout
    record = json.loads((tmp_path / "out" / RECORD_NAME).read_text())
    assert (
        record["model"] == f"ensemble of {a.parent.name}/best.pth, {b.parent.name}/best.pth"
        or record["model"] == f"ensemble of {b.parent.name}/best.pth, {a.parent.name}/best.pth"
    )  # in the order of their digests
    single = run_cli(*common, "--checkpoint", a)  # one member alone is another model: not into this folder
    assert single.returncode == 2 and "holds the outputs of another model" in error_lines(single)[-1]
    torch.manual_seed(2)
    odd = tmp_path / "odd.pth"
    save_checkpoint(odd, UNet(UNetConfig(base_channels=4)).eval(), make_meta(scale=0.25))
    refused = run_cli(*common, "--checkpoint", a, "--checkpoint", odd)
    assert refused.returncode == 2
    assert error_lines(refused)[-1].endswith(
        "differ in their resize rule (scale 0.5 and scale 0.25): an ensemble averages models that read images alike "
        "and predict the same classes"
    )
    twice = run_cli(*common, "--checkpoint", a, "--checkpoint", a)  # it would count double
    assert error_lines(twice)[-1].endswith(f"{a} and {a} hold the same weights: an ensemble names each model once")
    fastest = run_cli(*common, "--checkpoint", a, "--checkpoint", b, "--engine", "fastest")
    assert error_lines(fastest)[-1].endswith("--engine fastest times one checkpoint's engines; name one --engine for "
                                             "an ensemble")  # fmt: skip


def test_an_onnx_ensemble_matches_the_torch_ensemble(two_checkpoints, tmp_path):
    """Each member runs its own exported file (found beside its checkpoint), and the mean is the same."""
    import shutil

    members = []
    for i, ckpt in enumerate(two_checkpoints):
        (tmp_path / f"m{i}").mkdir()
        members.append(shutil.copy(ckpt, tmp_path / f"m{i}" / "best.pth"))
        run_cli("unet-export", members[-1], "--no-trt", "--no-verify", "--device", "cpu", "--no-progress", check=True)
    image = np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    with Predictor(members, device="cpu") as eager, Predictor(members, engine="onnx", device="cpu") as onnx:
        assert onnx.engine.label == "ensemble of 2 x onnx fp32"
        np.testing.assert_allclose(onnx.predict(image, return_prob=True), eager.predict(image, return_prob=True),
                                   atol=1e-4)  # fmt: skip


def test_members_on_other_engines_or_precisions_are_refused(two_checkpoints):
    """One engine and precision for all: a member fed another input dtype would read wrong values (TensorRT
    takes a raw pointer), and the run's label would name one engine for two."""
    from unetkit.infer.engines import create_engine
    from unetkit.infer.engines.ensemble import EnsembleEngine, runtime_problem

    a, b = two_checkpoints
    fp32 = create_engine("torch", checkpoint=a, device="cpu", precision="fp32")
    bf16 = create_engine("torch", checkpoint=b, device="cpu", precision="bf16")
    assert runtime_problem([fp32, bf16], ["1", "2"]) == (
        f"an ensemble runs every member with one engine and precision; these differ: {a} on torch fp32, {b} on "
        "torch bf16"
    )
    with pytest.raises(Exception, match="one engine and precision"):
        EnsembleEngine([fp32, bf16], ["1", "2"])
    assert fp32.closed and bf16.closed  # a refused ensemble releases its members
