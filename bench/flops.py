"""The U-Net's cost per image: counted by PyTorch's FLOP counter on the meta device (no memory, no time),
and, for the tests, written out by hand from the layer shapes."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from unetkit.core.model import DOWNSAMPLE, UNet, UNetConfig


def counted_flops(config: UNetConfig, height: int, width: int) -> int:
    """FLOPs (multiply and add counted separately) of one forward pass on a height x width input."""
    with torch.device("meta"):
        model = UNet(config).eval()
        x = torch.empty(1, config.in_channels, height, width)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def unet_conv_flops(config: UNetConfig, height: int, width: int) -> int:
    """The same count by hand: 2 * MACs of every convolution (3x3 pairs, 2x2 transposed, 1x1 head and
    attention gates; deep supervision's heads do not run in inference),
    on the input padded to a multiple of 16 as the model pads it. Pooling, ReLU and BatchNorm are not
    matrix work and are not counted, as PyTorch's counter does not count them either."""
    h = -(-height // DOWNSAMPLE) * DOWNSAMPLE
    w = -(-width // DOWNSAMPLE) * DOWNSAMPLE
    c = config.base_channels
    widths = [c, 2 * c, 4 * c, 8 * c, 16 * c]

    def conv(cin: int, cout: int, k: int, hh: int, ww: int) -> int:
        return 2 * cin * cout * k * k * hh * ww

    def double(cin: int, cout: int, hh: int, ww: int) -> int:
        return conv(cin, cout, 3, hh, ww) + conv(cout, cout, 3, hh, ww)

    total = double(config.in_channels, widths[0], h, w)
    for level in range(1, 5):
        total += double(widths[level - 1], widths[level], h >> level, w >> level)
    for level in range(4, 0, -1):  # up from `level` to `level - 1`
        hh, ww = h >> (level - 1), w >> (level - 1)
        cin = widths[level]
        if config.bilinear:
            total += conv(cin, cin // 2, 1, hh, ww)
        else:  # a 2x2 stride-2 transposed conv: each input pixel feeds a 2x2 output block
            total += 2 * cin * (cin // 2) * 4 * (hh // 2) * (ww // 2)
        if config.attention:  # two 1x1 convs to the gate's inner width, and one to its single weight map
            inner = max(cin // 4, 1)
            total += 2 * conv(cin // 2, inner, 1, hh, ww) + conv(inner, 1, 1, hh, ww)
        total += double(cin, widths[level - 1], hh, ww)
    return total + conv(widths[0], config.n_classes, 1, h, w)
