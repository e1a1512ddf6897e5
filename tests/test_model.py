import pytest
import torch

from unetkit.core import UNet, UNetConfig, fuse_batchnorm
from unetkit.core.model import count_parameters


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("hw", [(1280, 1918), (640, 959), (37, 53), (16, 16), (1, 1), (17, 200)])
def test_output_has_the_input_size(hw, bilinear):
    model = UNet(UNetConfig(base_channels=2, n_classes=3, bilinear=bilinear)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    assert out.shape == (2, 3, *hw)


def test_default_is_the_seed_unet():
    model = UNet()
    # 64-128-256-512-1024 encoder, transposed-conv decoder, 1x1 head: 31,037,633 weights with BN
    # (milesial's UNet(3, 1) has the same layers).
    assert count_parameters(model) == 31_037_633
    assert model.config == UNetConfig(in_channels=3, n_classes=1, base_channels=64, bilinear=False)
    assert isinstance(model.ups[0].up, torch.nn.ConvTranspose2d)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 1  # shared, used four times


def test_returns_logits_not_probabilities():
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32) * 5)
    assert out.min() < 0 or out.max() > 1  # a sigmoid output could do neither


def test_padding_does_not_leak_into_the_crop():
    """A size that needs padding gives the same values as the same pixels inside a larger padded input."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4)).eval()
    x = torch.randn(1, 3, 30, 45)
    padded = torch.nn.functional.pad(x, (0, 3, 0, 2))  # 32x48: what the model pads to itself
    with torch.no_grad():
        assert torch.equal(model(x), model(padded)[..., :30, :45])


def test_fuse_batchnorm_matches_and_removes_batchnorm(random_checkpoint):
    from unetkit.core import load_checkpoint

    model, _ = load_checkpoint(random_checkpoint)
    fused = fuse_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)
