"""Losses and metrics against values worked out by hand."""

import math

import pytest
import torch

from unetkit.core.labels import predict_labels
from unetkit.core.metrics import (
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    mask_agreement,
)
from unetkit.train.losses import (
    bce_loss,
    binary_dice_loss,
    ce_loss,
    make_loss,
    multiclass_dice_loss,
)

BIG = 100.0  # a logit whose sigmoid is 1.0 in float32


def binary_logits(values):
    """[[1, 0, ...]] -> (1, 1, 1, n) logits of +-BIG."""
    return (torch.tensor(values, dtype=torch.float32) * 2 - 1).mul(BIG).view(1, 1, 1, -1)


def labels(values):
    return torch.tensor(values).view(1, 1, -1)


def test_bce_hand_values():
    assert bce_loss(torch.zeros(1, 1, 1, 1), labels([1])).item() == pytest.approx(math.log(2))
    logits = torch.tensor([2.0, -1.0]).view(1, 1, 1, 2)
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 2
    assert bce_loss(logits, labels([1, 0])).item() == pytest.approx(expected, rel=1e-6)


def test_bce_ignores_pixels_and_is_stable_for_huge_logits():
    logits = torch.tensor([2.0, -1.0, 1000.0]).view(1, 1, 1, 3)
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 2
    assert bce_loss(logits, labels([1, 0, 255])).item() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(bce_loss(torch.tensor([-1e4]).view(1, 1, 1, 1), labels([1])))


def test_binary_dice_hand_values():
    # pred 1,1,0,0 vs truth 1,0,1,0: overlap 1, sums 2 and 2 -> (2*1 + 1) / (4 + 1) with smoothing 1.
    assert binary_dice_loss(binary_logits([1, 1, 0, 0]), labels([1, 0, 1, 0])).item() == pytest.approx(1 - 3 / 5)
    assert binary_dice_loss(binary_logits([0, 0]), labels([0, 0])).item() == pytest.approx(0.0)  # empty, empty
    assert binary_dice_loss(binary_logits([1, 1]), labels([1, 1])).item() == pytest.approx(0.0)  # perfect
    assert binary_dice_loss(binary_logits([1, 1, 1]), labels([1, 0, 255])).item() == pytest.approx(1 - 3 / 4)


def test_cross_entropy_hand_values():
    assert ce_loss(torch.zeros(1, 4, 1, 1), labels([2])).item() == pytest.approx(math.log(4))
    logits = torch.tensor([[3.0, 0.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2)  # pixel 0 favours class 0
    expected = (-math.log(math.exp(3) / (math.exp(3) + 1)) + math.log(2)) / 2
    assert ce_loss(logits, labels([0, 1])).item() == pytest.approx(expected, rel=1e-6)
    assert ce_loss(logits, labels([255, 255])).item() == 0.0  # nothing valid, nothing to learn


def test_multiclass_dice_hand_values():
    pred = torch.tensor([0, 0, 1, 1])
    logits = torch.nn.functional.one_hot(pred, 2).T.float().mul(BIG).view(1, 2, 1, 4)
    # class 0: overlap 1, sums 2 + 1 -> 3/4; class 1: overlap 2, sums 2 + 3 -> 5/6.
    expected = 1 - (3 / 4 + 5 / 6) / 2
    assert multiclass_dice_loss(logits, labels([0, 1, 1, 1])).item() == pytest.approx(expected, rel=1e-6)


def test_make_loss_combines_half_and_half():
    logits, target = binary_logits([1, 1, 0, 0]), labels([1, 0, 1, 0])
    combo = make_loss("bce+dice", 1)(logits, target)
    assert combo.item() == pytest.approx(0.5 * bce_loss(logits, target).item() + 0.5 * (1 - 3 / 5), rel=1e-6)
    with pytest.raises(ValueError, match="not available for a binary model"):
        make_loss("ce", 1)
    with pytest.raises(ValueError, match="multi-class"):
        make_loss("bce", 19)


def test_dice_and_iou_hand_values():
    counts = confusion_counts(labels([1, 1, 0, 0]), labels([1, 0, 1, 0]), n_classes=1)
    assert counts.tolist() == [[1, 1, 1]]
    assert dice_from_counts(counts) == [pytest.approx(0.5)]
    assert iou_from_counts(counts) == [pytest.approx(1 / 3)]


def test_empty_and_perfect_masks_score_one():
    empty = confusion_counts(labels([0, 0, 0]), labels([0, 0, 0]), n_classes=1)
    perfect = confusion_counts(labels([1, 0, 1]), labels([1, 0, 1]), n_classes=1)
    missed = confusion_counts(labels([0, 0, 0]), labels([1, 0, 0]), n_classes=1)
    assert dice_from_counts(empty) == [1.0] and iou_from_counts(empty) == [1.0]
    assert dice_from_counts(perfect) == [1.0] and iou_from_counts(perfect) == [1.0]
    assert dice_from_counts(missed) == [0.0] and iou_from_counts(missed) == [0.0]


def test_multiclass_counts_skip_ignored_pixels():
    pred, truth = labels([0, 1, 2, 2, 1]), labels([0, 1, 1, 2, 255])
    counts = confusion_counts(pred, truth, n_classes=3)
    assert counts.tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 0]]
    assert dice_from_counts(counts) == [pytest.approx(1.0), pytest.approx(2 / 3), pytest.approx(2 / 3)]


def test_predict_labels_threshold_and_argmax():
    logits = torch.tensor([-1.0, 0.1, 2.0]).view(1, 1, 1, 3)
    assert predict_labels(logits, 0.5).view(-1).tolist() == [0, 1, 1]
    assert predict_labels(logits, 0.8).view(-1).tolist() == [0, 0, 1]  # sigmoid(2) = 0.88
    multi = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.0]]).view(1, 3, 1, 2)
    assert predict_labels(multi).view(-1).tolist() == [0, 1]


def test_mask_agreement():
    a = torch.tensor([[1, 1, 0, 0]])
    assert mask_agreement(a, a, 1) == 1.0
    assert mask_agreement(a, torch.tensor([[1, 0, 1, 0]]), 1) == pytest.approx(0.5)
