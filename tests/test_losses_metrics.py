"""Losses and metrics against values worked out by hand."""

import math

import pytest
import torch

from unetkit.core.labels import predict_labels
from unetkit.core.metrics import (
    class_scores,
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    mask_agreement,
)
from unetkit.train.losses import (
    bce_loss,
    binary_focal_loss,
    ce_loss,
    dice_loss,
    focal_loss,
    make_loss,
    tversky_loss,
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
    assert dice_loss(binary_logits([1, 1, 0, 0]), labels([1, 0, 1, 0])).item() == pytest.approx(1 - 3 / 5)
    assert dice_loss(binary_logits([0, 0]), labels([0, 0])).item() == pytest.approx(0.0)  # empty, empty
    assert dice_loss(binary_logits([1, 1]), labels([1, 1])).item() == pytest.approx(0.0)  # perfect
    assert dice_loss(binary_logits([1, 1, 1]), labels([1, 0, 255])).item() == pytest.approx(1 - 3 / 4)


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
    assert dice_loss(logits, labels([0, 1, 1, 1])).item() == pytest.approx(expected, rel=1e-6)


def test_make_loss_combines_half_and_half():
    logits, target = binary_logits([1, 1, 0, 0]), labels([1, 0, 1, 0])
    combo = make_loss("bce+dice", 1)(logits, target)
    assert combo.item() == pytest.approx(0.5 * bce_loss(logits, target).item() + 0.5 * (1 - 3 / 5), rel=1e-6)
    with pytest.raises(ValueError, match="not available for a binary model"):
        make_loss("ce", 1)
    with pytest.raises(ValueError, match="multi-class"):
        make_loss("bce", 19)


def test_weighted_cross_entropy_terms():
    """--pos-weight weighs a foreground pixel's BCE term; --class-weights is PyTorch's weighted mean of CE."""
    logits, target = torch.tensor([0.5, -0.2, -1.0, 0.3]).view(1, 1, 1, 4), labels([1, 0, 1, 0])
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], (target == 1).float(), reduction="none")
    per = per.flatten()
    weighted = (3 * per[0] + per[1] + 3 * per[2] + per[3]) / 4  # pixels 0 and 2 are foreground
    assert bce_loss(logits, target, pos_weight=3.0).item() == pytest.approx(weighted.item(), rel=1e-6)
    multi = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    truth = torch.randint(0, 3, (2, 4, 5), generator=torch.Generator().manual_seed(1))
    truth[0, 0, :2] = 255
    weight = torch.tensor([1.0, 4.0, 2.0])
    expected = torch.nn.functional.cross_entropy(multi, truth, weight=weight, ignore_index=255)
    assert ce_loss(multi, truth, class_weights=(1.0, 4.0, 2.0)).item() == pytest.approx(expected.item(), rel=1e-5)
    assert make_loss("ce+dice", 3, class_weights=(1.0, 1.0, 1.0))(multi, truth).item() == pytest.approx(
        make_loss("ce+dice", 3)(multi, truth).item(), rel=1e-6
    )
    for args, message in (
        (("bce", 1, 1.0, (1.0, 2.0)), "--class-weights is for multi-class models"),
        (("ce", 3, 2.0), "--pos-weight is for binary models"),
        (("ce", 3, 1.0, (1.0, 2.0)), "--class-weights has 2 value\\(s\\) for 3 classes"),
        (("dice", 1, 2.0), "weigh the cross-entropy or focal term, which --loss dice has not"),
        (("tversky", 3, 1.0, (1.0, 2.0, 1.0)), "which --loss tversky has not"),
    ):
        with pytest.raises(ValueError, match=message):
            make_loss(*args)


def test_focal_and_tversky_against_their_definitions():
    """Focal is Lin et al.'s -(1-p)^2 log p on the true label (torchvision's sigmoid_focal_loss without alpha)
    and, at gamma 0, cross-entropy; Tversky at 0.5/0.5 is the Dice loss and charges misses 0.7, false alarms 0.3."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 4, 5, generator=gen) * 3
    target = torch.randint(0, 2, (2, 4, 5), generator=gen)
    target[0, 0] = 255
    valid = target != 255
    p, t = torch.sigmoid(logits[:, 0][valid]), target[valid].float()
    reference = (-((1 - p) ** 2) * t * torch.log(p) - p**2 * (1 - t) * torch.log(1 - p)).mean()
    assert binary_focal_loss(logits, target).item() == pytest.approx(reference.item(), rel=1e-5)
    assert binary_focal_loss(logits, target, gamma=0).item() == pytest.approx(bce_loss(logits, target).item(), rel=1e-6)
    weighted = binary_focal_loss(logits, target, gamma=0, pos_weight=3.0)
    assert weighted.item() == pytest.approx(bce_loss(logits, target, pos_weight=3.0).item(), rel=1e-6)
    assert binary_focal_loss(logits, target).item() < bce_loss(logits, target).item()  # easy pixels fade
    multi = torch.randn(2, 3, 4, 5, generator=gen)
    truth = torch.randint(0, 3, (2, 4, 5), generator=gen)
    truth[1, :, 0] = 255
    for weights in ((), (1.0, 4.0, 2.0)):
        assert focal_loss(multi, truth, class_weights=weights, gamma=0).item() == pytest.approx(
            ce_loss(multi, truth, class_weights=weights).item(), rel=1e-5
        )
    log_p = torch.log_softmax(multi, 1).gather(1, truth.clamp(max=2)[:, None])[:, 0][truth != 255]
    assert focal_loss(multi, truth).item() == pytest.approx((-((1 - log_p.exp()) ** 2) * log_p).mean().item(), rel=1e-5)
    # Tversky: hard predictions with tp 1, fp 2, fn 1 (smoothing 0.5): (1 + .5) / (1 + .3 * 2 + .7 * 1 + .5)
    hard, truth4 = binary_logits([1, 1, 1, 0, 0]), labels([1, 0, 0, 1, 0])
    assert tversky_loss(hard, truth4).item() == pytest.approx(1 - 1.5 / 2.8, rel=1e-6)
    assert tversky_loss(hard, truth4, alpha=0.5, beta=0.5).item() == pytest.approx(1 - 3 / 6, rel=1e-6)
    multi_hard = torch.tensor([[[[BIG, -BIG, -BIG]], [[-BIG, BIG, BIG]]]])  # classes 0, 1, 1 against 0, 0, 1
    # class 0: tp 1, fn 1 -> (1 + .5) / (1 + .7 + .5); class 1: tp 1, fp 1 -> (1 + .5) / (1 + .3 + .5)
    assert tversky_loss(multi_hard, labels([0, 0, 1])).item() == pytest.approx(1 - (1.5 / 2.2 + 1.5 / 1.8) / 2)
    missed, alarmed = binary_logits([0, 0]), binary_logits([1, 1])
    assert tversky_loss(missed, labels([1, 0])) > tversky_loss(alarmed, labels([1, 0]))
    # every name makes a loss, combinations half and half
    for name in ("focal+tversky", "bce+tversky", "focal", "tversky"):
        assert torch.isfinite(make_loss(name, 1)(logits, target))
    both = make_loss("focal+tversky", 3)(multi, truth)
    assert both.item() == pytest.approx(0.5 * focal_loss(multi, truth).item()
                                        + 0.5 * tversky_loss(multi, truth).item(), rel=1e-6)  # fmt: skip


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


def test_multiclass_means_count_only_classes_in_the_truth():
    # class 2 is absent from the truth; one valid pixel is predicted as it, one ignored pixel too
    truth = labels([0, 0, 0, 1, 1, 1, 255, 0])
    pred = labels([0, 0, 2, 1, 1, 0, 2, 0])
    scores = class_scores(confusion_counts(pred, truth, n_classes=3), n_classes=3)
    # class 0: tp 3 (pixels 0, 1, 7), fp 1 (5), fn 1 (2) -> Dice 6/8, IoU 3/5
    # class 1: tp 2, fp 0, fn 1 -> Dice 4/5, IoU 2/3
    assert scores.dice == [pytest.approx(0.75), pytest.approx(0.8), None]
    assert scores.iou == [pytest.approx(0.6), pytest.approx(2 / 3), None]
    assert scores.absent == [2] and scores.stray_pixels == [0, 0, 1] and scores.present == [0, 1]
    assert scores.mean_dice == pytest.approx((0.75 + 0.8) / 2)
    assert scores.mean_iou == pytest.approx((0.6 + 2 / 3) / 2)
    # the old rule averaged every class: the absent class scored 0 for one stray pixel
    old = dice_from_counts(confusion_counts(pred, truth, n_classes=3))
    assert sum(old) / 3 == pytest.approx((0.75 + 0.8 + 0.0) / 3)
    # binary keeps its one score, and an empty truth with an empty prediction is a perfect 1.0
    assert class_scores(confusion_counts(labels([0, 0]), labels([0, 0]), 1), 1).mean_dice == 1.0
    assert math.isnan(class_scores(confusion_counts(labels([1]), labels([255]), 3), 3).mean_dice)


def test_mask_agreement_pools_the_pixels_of_every_class():
    reference = torch.tensor([[0, 0, 1, 1]])
    assert mask_agreement(reference, reference, 3) == 1.0
    stray = torch.tensor([[0, 2, 1, 1]])  # one pixel of a class the reference lacks
    assert mask_agreement(stray, reference, 3) == pytest.approx(3 / 4)  # 3 of 4 pixels agree
    binary = torch.tensor([[1, 0, 0, 0]])  # binary: the foreground's Dice; agreeing background says nothing
    assert mask_agreement(binary, torch.tensor([[1, 1, 0, 0]]), 1) == pytest.approx(2 / 3)
    assert mask_agreement(torch.zeros(1, 4), torch.zeros(1, 4), 1) == 1.0  # nothing to find, none found


class _Fixed(torch.nn.Module):
    """Returns the logits it holds: one epoch's predictions, to drive the real evaluate()."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def test_a_validation_set_lacking_classes_no_longer_moves_the_schedule():
    from torch.utils.data import DataLoader

    from unetkit.train.loop import BatchSetup, EarlyStopping, evaluate

    truth = torch.tensor([[0] * 8 + [1] * 8]).view(1, 4, 4)  # classes 0 and 1; class 2 never appears
    loader = DataLoader([(torch.zeros(3, 4, 4, dtype=torch.uint8), truth[0])], batch_size=1)
    setup = BatchSetup(torch.device("cpu"), None, (0.5,) * 3, (0.25,) * 3)
    loss = make_loss("ce", 3)

    def predictions(wrong: int, as_class: int) -> torch.Tensor:
        """A model's labels that get `wrong` class-0 pixels wrong, predicting `as_class` there."""
        pred = truth[0].clone().view(-1)
        pred[:wrong] = as_class
        return pred.view(4, 4)

    def new_rule(pred: torch.Tensor) -> float:
        logits = torch.nn.functional.one_hot(pred.long(), 3).permute(2, 0, 1)[None].float() * BIG
        return evaluate(_Fixed(logits), loader, loss, 3, setup).mean_dice

    def old_rule(pred: torch.Tensor) -> float:  # every class averaged, absent-from-both as 1.0
        scores = dice_from_counts(confusion_counts(pred, truth[0], 3))
        return sum(scores) / 3

    def lr_after(scores: list[float]) -> float:
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "max", patience=0)
        for score in scores:
            schedule.step(score)
        return optimizer.param_groups[0]["lr"]

    # each epoch is better on the classes present (4, 4, 2, 2, 1, 1 wrong pixels, every second epoch's
    # mistakes going to class 2 instead of class 1), but every second epoch predicts class 2, which
    # validation lacks
    epochs = [predictions(w, c) for w, c in [(4, 1), (4, 2), (2, 1), (2, 2), (1, 1), (1, 2)]]
    scores = [new_rule(p) for p in epochs]
    assert scores == sorted(scores) and len(set(scores)) == 6
    assert scores[:2] == [pytest.approx((8 / 12 + 16 / 20) / 2), pytest.approx((8 / 12 + 1) / 2)]
    stopper = EarlyStopping(patience=1)
    assert all(stopper.step(score) for score in scores) and not stopper.stop  # each epoch the best so far
    assert lr_after(scores) == 1e-3
    # the old rule dropped at every epoch that predicted class 2: the plateau schedule cut the rate each time
    old = [old_rule(p) for p in epochs]
    assert all(old[i] < old[i - 1] for i in (1, 3, 5))
    assert lr_after(old) == pytest.approx(1e-3 * 0.1**3)
