"""Overlays stay visible on any colour: a contrasting tint and an outline."""

import torch
import torch.nn.functional as F

from unetkit.infer.transforms import OVERLAY_ALPHA, outline, overlay


def car_on_grey(color: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.full((3, 40, 60), 120, dtype=torch.uint8)
    labels = torch.zeros(40, 60, dtype=torch.uint8)
    labels[10:30, 15:45] = 1
    image[:, 10:30, 15:45] = torch.tensor(color, dtype=torch.uint8).view(3, 1, 1)
    return image, labels


def test_a_red_car_gets_a_tint_that_is_not_red():
    for paint in [(200, 20, 20), (20, 200, 30), (240, 240, 240), (20, 20, 20), (30, 60, 200)]:
        image, labels = car_on_grey(paint)
        out = overlay(image, labels, 1, "binary").float()
        inside = out[:, 20, 30]  # the middle of the car: tint at OVERLAY_ALPHA
        shift = (inside - torch.tensor(paint, dtype=torch.float32)).norm()
        assert shift > 0.3 * 255 * OVERLAY_ALPHA, (paint, inside)  # the mask shows on the car's own colour
        edge = out[:, 10, 30]  # the outline: the tint colour at full strength
        assert (edge - torch.tensor(paint, dtype=torch.float32)).norm() > 0.6 * 255, (paint, edge)
        assert torch.equal(out[:, 0, 0], image[:, 0, 0].float())  # the background is untouched
    red = overlay(*car_on_grey((200, 20, 20)), 1, "binary")[:, 10, 30]
    assert red[0] < red[1] and red[0] < red[2]  # cyan-ish on red, never red on red


def test_multiclass_overlay_outlines_class_borders():
    image = torch.full((3, 20, 20), 100, dtype=torch.uint8)
    labels = torch.zeros(20, 20, dtype=torch.uint8)
    labels[:, 10:] = 2
    out = overlay(image, labels, 3, "multiclass")
    assert not torch.equal(out[:, 5, 9], out[:, 5, 2])  # the border is drawn harder than the tint inside


def test_outline_marks_every_window_that_holds_two_labels():
    """The integral-image outline equals its definition: a window's max-pool differs from its min-pool."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        h, w = torch.randint(1, 30, (2,), generator=generator).tolist()
        labels = torch.randint(0, 3, (h, w), generator=generator, dtype=torch.uint8)
        labels = labels if h % 2 else (labels == 0).to(torch.uint8)  # sparse binary masks too
        width = int(torch.randint(1, 5, (1,), generator=generator))
        x, k = labels.float()[None, None], 2 * width + 1
        hi = F.max_pool2d(x, k, stride=1, padding=width)
        lo = -F.max_pool2d(-x, k, stride=1, padding=width)
        assert torch.equal(outline(labels, width), (hi != lo)[0, 0]), (h, w, width)
