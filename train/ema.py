"""An exponential moving average of the weights (`unet-train --ema DECAY`), as Ultralytics' ModelEMA keeps.

The average changes more slowly than the weights the optimizer moves, so it is less noisy from epoch to
epoch; the run validates it, picks best.pth by it and saves it as the checkpoint's weights (every engine and
export sees the average), while last.pth also keeps the optimizer's own weights for --resume. BatchNorm's
running statistics are averaged too. Its decay ramps up from 0 over the first updates (Ultralytics' tau), so
the average is not held back by the random initialization it started from.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from unetkit.core.model import UNet

#: Updates over which the decay ramps up: decay * (1 - exp(-updates / RAMP_UPDATES)) (Ultralytics' tau).
RAMP_UPDATES = 2000


def ema_rate(decay: float, updates: int) -> float:
    """The share of the average kept at update number `updates` (1-based): 0 at first, `decay` in the end."""
    return decay * (1.0 - math.exp(-updates / RAMP_UPDATES))


class WeightAverage:
    """The averaged copy of a model, updated after every optimizer step."""

    def __init__(self, model: UNet, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: UNet) -> None:
        """Move the average towards `model`'s weights and buffers (integer buffers, the BatchNorm batch
        counters, are copied)."""
        self.updates += 1
        keep = ema_rate(self.decay, self.updates)
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            value = current[name].detach()
            if average.dtype.is_floating_point:
                average.mul_(keep).add_(value, alpha=1.0 - keep)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs beside the averaged weights themselves (the checkpoint's state_dict)."""
        return {"decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)
        self.updates = int(state["updates"])
