"""The seed tutorial's advanced tips as options: attention gates on the skips and deep supervision of the
decoder. Each is checked in the network, the loss, the checkpoint, and through the real CLIs."""

import onnx
import pytest
import torch

from conftest import error_lines, make_meta, run_cli
from unetkit.core import UNet, UNetConfig, fuse_batchnorm, load_checkpoint, read_checkpoint, save_checkpoint
from unetkit.core.model import AttentionGate
from unetkit.train.losses import deep_supervision_loss, deep_supervision_weights, level_target, make_loss

BOTH = UNetConfig(base_channels=4, n_classes=3, attention=True, deep_supervision=True)


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("hw", [(37, 53), (16, 16), (1, 1), (64, 96)])
def test_deep_outputs_are_the_main_logits_then_each_coarser_level(hw, bilinear):
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, n_classes=3, attention=True, deep_supervision=True, bilinear=bilinear))
    model.eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        main, *levels = model(x, deep=True)
        assert torch.equal(main, model(x))  # inference sees the same main head
    h, w = hw
    assert main.shape == (2, 3, h, w)
    assert [tuple(o.shape[-2:]) for o in levels] == [(-(-h // k), -(-w // k)) for k in (2, 4, 8)]
    # each level's target is the label map sampled to exactly its size
    labels = torch.randint(0, 3, (2, h, w))
    assert [tuple(level_target(labels, k).shape[-2:]) for k in (2, 4, 8)] == [tuple(o.shape[-2:]) for o in levels]


def test_a_plain_network_has_no_extra_heads_or_gates():
    model = UNet(UNetConfig(base_channels=4))
    assert model.aux_heads is None
    assert not any(isinstance(m, AttentionGate) for m in model.modules())
    assert UNetConfig().to_dict() == {"in_channels": 3, "n_classes": 1, "base_channels": 64, "bilinear": False}


def test_the_attention_gate_weighs_each_skip_pixel():
    """With its weight-map conv silenced, the gate passes skip * sigmoid(bias): the gate multiplies the skip."""
    torch.manual_seed(0)
    gate = AttentionGate(8).eval()
    conv, bn = gate.psi[0], gate.psi[1]
    with torch.no_grad():
        conv.weight.zero_()
        bn.bias.fill_(-2.0)
    skip, up = torch.randn(1, 8, 5, 7), torch.randn(1, 8, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(gate(skip, up), skip * torch.sigmoid(torch.tensor(-2.0)))
        bn.bias.fill_(0.0)
        conv.weight.normal_()
        weights = gate.psi(torch.relu(gate.skip(skip) + gate.gate(up)))
        assert weights.shape == (1, 1, 5, 7) and 0 < weights.min() < weights.max() < 1  # one weight per pixel
        torch.testing.assert_close(gate(skip, up), skip * weights)


def test_batchnorm_folds_out_of_the_gates_too():
    torch.manual_seed(0)
    model = UNet(BOTH)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    fused = fuse_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)


def test_deep_supervision_weights_and_loss():
    """nnU-Net's weights (halved per level, summing to 1) applied to each level's loss on its sampled target."""
    assert deep_supervision_weights(4) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert deep_supervision_weights(1) == [1.0]
    torch.manual_seed(0)
    loss_fn = make_loss("ce+dice", 3)
    target = torch.randint(0, 3, (2, 37, 53))
    target[0, :4] = 255  # ignored pixels stay ignored at every level
    outputs = [torch.randn(2, 3, -(-37 // k), -(-53 // k)) for k in (1, 2, 4, 8)]
    expected = sum(w * loss_fn(o, level_target(target, 2**i)) for i, (w, o) in
                   enumerate(zip([8 / 15, 4 / 15, 2 / 15, 1 / 15], outputs, strict=True)))  # fmt: skip
    torch.testing.assert_close(deep_supervision_loss(loss_fn, outputs, target), expected)
    torch.testing.assert_close(deep_supervision_loss(loss_fn, outputs[:1], target), loss_fn(outputs[0], target))
    assert level_target(target, 2)[0, 0, 0] == 255 and level_target(target, 2)[0, 0, 1] == target[0, 1, 3]


def test_level_targets_take_each_blocks_centre_as_nearest_exact_resizing_does():
    """A coarse cell's features cover its whole block: its label is the block's centre pixel, not its corner
    (which would shift the labels by 3.5 pixels at 1/8)."""
    from unetkit.core.preprocess import resize_masks

    labels = torch.arange(16 * 24).reshape(1, 16, 24)
    for k in (2, 4, 8):  # where the size divides, exactly what the masks' own resizing gives
        assert torch.equal(level_target(labels, k), resize_masks(labels, (16 // k, 24 // k)))
    assert level_target(labels, 8)[0, 0, 0] == labels[0, 4, 4]  # the 8x8 block's centre, not (0, 0)
    # a last block cut short (37 = 4 x 8 + 5 rows) takes its own pixel nearest the centre, inside the image
    odd = torch.arange(37 * 9).reshape(37, 9)
    assert level_target(odd, 8)[:, 0].tolist() == [odd[r, 4].item() for r in (4, 12, 20, 28, 36)]


def test_checkpoint_round_trip_and_format(tmp_path, random_checkpoint):
    """A network with an option is format 3 (an older unetkit asks for an upgrade rather than misreading it); a
    plain one stays format 2, which older releases read."""
    torch.manual_seed(0)
    model = UNet(BOTH).eval()
    path = tmp_path / "best.pth"
    save_checkpoint(path, model, make_meta(n_classes=3))
    assert torch.load(path, weights_only=True)["format_version"] == 3
    assert torch.load(random_checkpoint, weights_only=True)["format_version"] == 2
    assert "attention" not in torch.load(random_checkpoint, weights_only=True)["model"]
    loaded, _ = load_checkpoint(path)
    assert loaded.config == BOTH and read_checkpoint(path).format_version == 3
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    bad = torch.load(path, weights_only=True)
    bad["model"]["attention"] = "yes"
    torch.save(bad, tmp_path / "bad.pth")
    proc = run_cli("unet-export", tmp_path / "bad.pth", "--no-trt", "--no-progress")
    assert proc.returncode != 0
    assert error_lines(proc)[-1].endswith("damaged checkpoint, model attention 'yes' (must be true or false)")


def test_onnx_export_has_the_main_head_only_and_verifies(tmp_path):
    """Deep supervision's heads do not reach the exported graph, and the gates export and run in ONNX Runtime."""
    from unetkit.export.onnx_export import export_onnx
    from unetkit.export.verify import Reference, sample_inputs, verify
    from unetkit.infer.engines.ort import OnnxEngine

    torch.manual_seed(0)
    model = UNet(BOTH).eval()
    meta = make_meta(n_classes=3)
    path = export_onnx(model, meta, tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["logits"]
    assert not any("aux_heads" in i.name for i in graph.initializer)
    assert sum(n.op_type == "Sigmoid" for n in graph.node) == 4  # one gate per skip
    result = verify(OnnxEngine(path, torch.device("cpu")), Reference(model, meta), sample_inputs(meta), exact=True)
    assert result.passed, result.summary()


FAST = ["--workers", "0", "--device", "cpu", "--no-progress", "--lr", "3e-3", "--epochs", "2"]


def test_train_with_both_then_infer_export_and_fine_tune(tmp_path, synth_small):
    run = tmp_path / "run"
    proc = run_cli("unet-train", "--data", synth_small, "--out", run, "--base-channels", "4", "--attention",
                   "--deep-supervision", *FAST, check=True)  # fmt: skip
    assert "(transposed-conv up-sampling, attention gates)" in proc.stdout
    assert "loss bce+dice with deep supervision" in proc.stdout
    model, _ = load_checkpoint(run / "best.pth")
    assert model.config.attention and model.config.deep_supervision and model.aux_heads is not None
    # the extra heads trained: they moved from their initialization
    torch.manual_seed(0)
    fresh = UNet(model.config)
    assert not torch.equal(model.aux_heads[0].weight, fresh.aux_heads[0].weight)

    images = tmp_path / "images"
    images.mkdir()
    for src in sorted((synth_small / "train").iterdir())[:2]:
        (images / src.name).write_bytes(src.read_bytes())
    run_cli("unet-infer", images, "--checkpoint", run / "best.pth", "--out", tmp_path / "masks", "--device", "cpu",
            "--no-progress", check=True)  # fmt: skip
    assert len(list((tmp_path / "masks").glob("*.png"))) == 2
    # FP32, FP16 and the INT8 of the gated graph each verified against PyTorch (ONNX Runtime; OpenVINO reported)
    exported = run_cli("unet-export", run / "best.pth", "--no-trt", "--int8", "--no-progress", check=True)
    assert f"wrote 3 verified artifact(s) to {run}" in exported.stdout
    int8 = onnx.load(str(run / "best.int8.onnx")).graph
    assert sum(n.op_type == "Sigmoid" for n in int8.node) == 4 and [o.name for o in int8.output] == ["logits"]

    # --init takes the gates and leaves deep supervision's heads behind when the new run has none
    tuned_proc = run_cli("unet-train", "--data", synth_small, "--out", tmp_path / "plain", "--init", run / "best.pth",
                    "--base-channels", "4", *FAST)  # fmt: skip
    assert tuned_proc.returncode == 0, tuned_proc.stderr
    assert "deep supervision" not in tuned_proc.stdout.split("initialized from")[1].splitlines()[0]
    tuned, _ = load_checkpoint(tmp_path / "plain/best.pth")
    assert tuned.config.attention and not tuned.config.deep_supervision and tuned.aux_heads is None
    refused = run_cli("unet-train", "--data", synth_small, "--out", tmp_path / "x", "--init", tmp_path /
                      "plain/best.pth", "--deep-supervision", "--bilinear", *FAST)  # fmt: skip
    assert error_lines(refused) == [f"unet-train: error: --init {tmp_path / 'plain/best.pth'}: --bilinear true (the "
                                    "checkpoint has false); its weights need its own network and inputs"]  # fmt: skip


def test_fine_tuning_a_plain_checkpoint_with_deep_supervision(tmp_path, synth_small, random_checkpoint):
    proc = run_cli("unet-train", "--data", synth_small, "--out", tmp_path / "run", "--init", random_checkpoint,
                   "--deep-supervision", *FAST, "--epochs", "1", check=True)  # fmt: skip
    assert f"initialized from {random_checkpoint}; deep supervision's heads start afresh" in proc.stdout
    gated = run_cli("unet-train", "--data", synth_small, "--out", tmp_path / "gated", "--init", random_checkpoint,
                    "--attention", *FAST)  # fmt: skip
    assert error_lines(gated) == [f"unet-train: error: --init {random_checkpoint}: --attention true (the checkpoint "
                                  "has false); its weights need its own network and inputs"]  # fmt: skip
    resumed = run_cli("unet-train", "--out", tmp_path / "run", "--resume", "--attention", "--device", "cpu")
    assert len(error_lines(resumed)) == 1 and "--attention: the run was started without it" in error_lines(resumed)[0]


def test_eval_refuses_the_architecture_flags(tmp_path, random_checkpoint, synth_small):
    proc = run_cli("unet-train", "--eval", random_checkpoint, "--data", synth_small, "--attention")
    assert proc.returncode == 2 and "--attention is a training flag" in error_lines(proc)[-1]
