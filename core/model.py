"""The U-Net of the seed tutorial, made to take any input size and to return logits.

The network pads its input once to a multiple of 16 (four 2x2 poolings) and crops its output once, so a
1918x1280 image gives a 1918x1280 prediction and the decoder never needs per-level padding. Both steps are
plain tensor ops on symbolic sizes, so the model exports to ONNX with dynamic batch, height and width.

Two options from the seed tutorial's advanced tips, both off by default:
- attention gates on the skip connections (Oktay et al. 2018, "Attention U-Net"; MONAI's AttentionUnet): each
  skip is weighted per pixel by a gate computed from it and the up-sampled decoder features, so the decoder
  can ignore background the encoder passed on;
- deep supervision (nnU-Net's): 1x1 heads on the decoder's 1/2, 1/4 and 1/8 levels whose logits training
  also scores. Only `forward(x, deep=True)` returns them; inference and export see the main head alone.
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
#: The smallest tile (unet-infer --tile) or training window (unet-train --crop) side: twice the stride, so even
#: the deepest level sees 2x2 positions (smaller ones are padded to 16 anyway, for no context).
MIN_SIDE = 2 * DOWNSAMPLE


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    in_channels: int = 3
    n_classes: int = 1
    base_channels: int = 64
    bilinear: bool = False
    attention: bool = False
    deep_supervision: bool = False

    def __post_init__(self) -> None:
        for name in ("in_channels", "n_classes", "base_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model {name} {value!r} (must be a whole number of at least 1)")
        for name in ("bilinear", *OPTIONS):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"model {name} {getattr(self, name)!r} (must be true or false)")

    @property
    def options(self) -> tuple[str, ...]:
        """The options this network has on (OPTIONS): what a reader older than them could not rebuild."""
        return tuple(name for name in OPTIONS if getattr(self, name))

    def to_dict(self) -> dict:
        """Options that are off are left out, so a plain U-Net's config reads in releases older than them."""
        return {k: v for k, v in asdict(self).items() if k not in OPTIONS or v}


#: Architecture options added after the first checkpoint format (see UNetConfig.to_dict).
OPTIONS = ("attention", "deep_supervision")
#: The decoder levels deep supervision scores besides the full-resolution head: 1/2, 1/4 and 1/8.
AUX_LEVELS = 3


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


def conv_bn(in_ch: int, out_ch: int) -> nn.Sequential:
    """1x1 conv (no bias: BatchNorm follows) and BatchNorm, which fuse_batchnorm folds into one conv."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))


class AttentionGate(nn.Module):
    """Additive attention gate: skip * sigmoid(psi(relu(W_x skip + W_g gate))), one weight per pixel.

    `gate` is the decoder's up-sampled features at the skip's resolution (MONAI's AttentionUnet; Oktay et al.
    gate from the coarser level and up-sample the weights, which comes to the same after the up-conv).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 2, 1)
        self.skip = conv_bn(channels, inner)
        self.gate = conv_bn(channels, inner)
        self.psi = nn.Sequential(*conv_bn(inner, 1), nn.Sigmoid())

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(F.relu(self.skip(skip) + self.gate(gate)))


class Up(nn.Module):
    """Double the resolution and halve the channels, concatenate the skip, then DoubleConv.

    The bilinear variant replaces the 2x2 transposed conv by bilinear up-sampling and a 1x1 conv with the
    same channel arithmetic, so the rest of the network is identical. With `attention` the skip passes an
    AttentionGate first.
    """

    def __init__(self, in_ch: int, out_ch: int, bilinear: bool, attention: bool = False) -> None:
        super().__init__()
        self.up: nn.Module
        if bilinear:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_ch, in_ch // 2, 1),
            )
        else:
            self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, 2, stride=2)
        self.attend = AttentionGate(in_ch // 2) if attention else None
        self.conv = DoubleConv(in_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        if self.attend is not None:
            skip = self.attend(skip, up)
        return self.conv(torch.cat([up, skip], dim=1))


class UNet(nn.Module):
    """Encoder of four DoubleConv + max-pool levels, a bottleneck, a mirrored decoder and a 1x1 head.

    Returns logits of shape (N, n_classes, H, W) for any H, W: apply sigmoid (binary) or softmax.
    """

    aux_heads: nn.ModuleList | None

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        c = self.config.base_channels
        widths = [c, 2 * c, 4 * c, 8 * c, 16 * c]
        self.inc = DoubleConv(self.config.in_channels, widths[0])
        self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(4))
        self.pool = nn.MaxPool2d(2)
        cfg = self.config
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], cfg.bilinear, cfg.attention) for i in reversed(range(4)))
        self.head = nn.Conv2d(widths[0], cfg.n_classes, 1)
        # coarsest first, as the decoder produces them: 1/8, 1/4, 1/2
        levels = range(AUX_LEVELS, 0, -1)
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(widths[i], cfg.n_classes, 1) for i in levels) if cfg.deep_supervision else None
        )

    def forward(self, x: torch.Tensor, deep: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Logits (N, n_classes, H, W); with `deep` (a deep-supervision network, training) a list of the
        main logits then the 1/2, 1/4 and 1/8 levels', each of size ceil(H / 2**k) x ceil(W / 2**k)."""
        h, w = x.shape[-2], x.shape[-1]
        # Pad bottom/right once with zeros (the normalized mean colour); no branch on the size, so the
        # exported graph keeps height and width symbolic.
        x = F.pad(x, (0, (-w) % DOWNSAMPLE, 0, (-h) % DOWNSAMPLE))
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(self.pool(skips[-1])))
        y = skips.pop()
        aux = []
        for level, up in enumerate(self.ups):
            y = up(y, skips.pop())
            if deep and self.aux_heads is not None and level < AUX_LEVELS:
                k = 2 ** (AUX_LEVELS - level)
                aux.append(self.aux_heads[level](y)[..., : -(-h // k), : -(-w // k)])
        main = self.head(y)[..., :h, :w]
        return [main, *reversed(aux)] if deep else main


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fuse_batchnorm(model: UNet) -> UNet:
    """Return an inference copy of `model` with every BatchNorm folded into the conv before it.

    Folding is done in FP32 before any cast to FP16, so exported and reduced-precision engines start from
    exact weights; it removes a third of the layers the GPU has to run. The copy is for inference only.
    """
    fused = copy.deepcopy(model).eval()
    for block in fused.modules():
        if not isinstance(block, nn.Sequential):
            continue
        for i in range(len(block) - 1):
            conv, bn = block[i], block[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                block[i] = fuse_conv_bn_eval(conv, bn)
                block[i + 1] = nn.Identity()
    return fused
