"""The U-Net of the seed tutorial, made to take any input size and to return logits.

The network pads its input once to a multiple of 16 (four 2x2 poolings) and crops its output once, so a
1918x1280 image gives a 1918x1280 prediction and the decoder never needs per-level padding. Both steps are
plain tensor ops on symbolic sizes, so the model exports to ONNX with dynamic batch, height and width.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

#: Four 2x2 max-pool steps: height and width must be multiples of 2**4 inside the network.
DOWNSAMPLE = 16


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    in_channels: int = 3
    n_classes: int = 1
    base_channels: int = 64
    bilinear: bool = False

    def __post_init__(self) -> None:
        for name in ("in_channels", "n_classes", "base_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model {name} {value!r} (must be a whole number of at least 1)")
        if not isinstance(self.bilinear, bool):
            raise ValueError(f"model bilinear {self.bilinear!r} (must be true or false)")

    def to_dict(self) -> dict:
        return asdict(self)


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) twice; the convs have no bias because BatchNorm follows."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Double the resolution and halve the channels, concatenate the skip, then DoubleConv.

    The bilinear variant replaces the 2x2 transposed conv by bilinear up-sampling and a 1x1 conv with the
    same channel arithmetic, so the rest of the network is identical.
    """

    def __init__(self, in_ch: int, out_ch: int, bilinear: bool) -> None:
        super().__init__()
        self.up: nn.Module
        if bilinear:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_ch, in_ch // 2, 1),
            )
        else:
            self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, 2, stride=2)
        self.conv = DoubleConv(in_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """Encoder of four DoubleConv + max-pool levels, a bottleneck, a mirrored decoder and a 1x1 head.

    Returns logits of shape (N, n_classes, H, W) for any H, W: apply sigmoid (binary) or softmax.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        c = self.config.base_channels
        widths = [c, 2 * c, 4 * c, 8 * c, 16 * c]
        self.inc = DoubleConv(self.config.in_channels, widths[0])
        self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(4))
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], self.config.bilinear) for i in reversed(range(4)))
        self.head = nn.Conv2d(widths[0], self.config.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        # Pad bottom/right once with zeros (the normalized mean colour); no branch on the size, so the
        # exported graph keeps height and width symbolic.
        x = F.pad(x, (0, (-w) % DOWNSAMPLE, 0, (-h) % DOWNSAMPLE))
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)[..., :h, :w]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fuse_batchnorm(model: UNet) -> UNet:
    """Return an inference copy of `model` with every BatchNorm folded into the conv before it.

    Folding is done in FP32 before any cast to FP16, so exported and reduced-precision engines start from
    exact weights; it removes a third of the layers the GPU has to run. The copy is for inference only.
    """
    fused = copy.deepcopy(model).eval()
    for block in fused.modules():
        if isinstance(block, DoubleConv):
            for i in (0, 3):
                conv, bn = block[i], block[i + 1]
                assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                block[i] = fuse_conv_bn_eval(conv, bn)
                block[i + 1] = nn.Identity()
    return fused
