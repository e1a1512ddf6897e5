"""Optimizer, weight decay, learning-rate schedules with warmup, gradient accumulation and clipping."""

import json
import math
import re

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import error_lines, run_cli
from unetkit.core import load_checkpoint
from unetkit.train.config import DEFAULT_WEIGHT_DECAY, TrainConfig
from unetkit.train.loop import BatchSetup, Stepping, train_one_epoch
from unetkit.train.losses import make_loss
from unetkit.train.optim import (
    SGD_MOMENTUM,
    StepLr,
    decay_factor,
    describe_optimization,
    make_optimizer,
    parameter_groups,
    warmup_factor,
)

CPU = BatchSetup(torch.device("cpu"), None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


# ---- pure schedule maths ----------------------------------------------------------------------------------------
def test_poly_and_cosine_fall_from_one_to_zero_as_nnunet_and_torch_define_them():
    assert decay_factor("poly", 0, 10) == 1.0 and decay_factor("cosine", 0, 10) == 1.0
    assert decay_factor("poly", 5, 10) == pytest.approx(0.5**0.9)  # nnU-Net's PolyLRScheduler, exponent 0.9
    assert decay_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert decay_factor("cosine", 2.5, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert decay_factor("poly", 10, 10) == 0.0 and decay_factor("cosine", 10, 10) == pytest.approx(0.0)
    assert decay_factor("poly", 12, 10) == 0.0  # never negative past the end
    assert decay_factor("plateau", 7, 10) == 1.0  # ReduceLROnPlateau owns the rate between epochs
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        decay_factor("step", 1, 10)


def test_warmup_rises_linearly_and_the_first_step_already_moves():
    assert warmup_factor(0.25, 2) == 0.125 and warmup_factor(2, 2) == 1.0 and warmup_factor(3, 2) == 1.0
    assert warmup_factor(0.0, 0) == 1.0  # no warmup
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    lr = StepLr(optimizer, "cosine", epochs=4, warmup_epochs=1)
    # epoch 1 of 4 steps: warmup to the end of each step, cosine from the start of each step
    rates = [lr.set(1, step, 4) for step in range(4)]
    expected = [0.1 * decay_factor("cosine", s / 4, 4) * (s + 1) / 4 for s in range(4)]
    assert rates == pytest.approx(expected) and rates[0] > 0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(rates[-1])
    lr.restore()  # what last.pth stores and what the next epoch starts from
    assert optimizer.param_groups[0]["lr"] == 0.1
    # epoch 3, after warmup: the cosine alone, computed from the epoch count (so a resumed run gets the same)
    again = StepLr(optimizer, "cosine", epochs=4, warmup_epochs=1)
    assert again.set(3, 0, 4) == pytest.approx(0.1 * 0.5)


def test_plateau_warmup_scales_the_rate_reduce_on_plateau_left():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    optimizer.param_groups[0]["lr"] = 1e-4  # as ReduceLROnPlateau left it after an earlier epoch
    lr = StepLr(optimizer, "plateau", epochs=10, warmup_epochs=2)
    assert lr.active and lr.set(2, 1, 2) == pytest.approx(1e-4)  # the end of warmup: the plateau's rate
    assert lr.set(1, 0, 2) == pytest.approx(1e-4 * 0.25)
    assert not StepLr(optimizer, "plateau", epochs=10, warmup_epochs=0).active  # the seed's recipe: untouched


# ---- optimizers and weight decay --------------------------------------------------------------------------------
def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 1))


def test_weight_decay_skips_biases_and_normalization():
    net = _net()
    assert len(parameter_groups(net.parameters(), 0.0)) == 1  # the optimizer state of earlier runs still loads
    decay, plain = parameter_groups(net.parameters(), 0.01)
    assert [p.shape for p in decay["params"]] == [(4, 3, 3, 3), (1, 4, 1, 1)] and decay["weight_decay"] == 0.01
    assert [p.shape for p in plain["params"]] == [(4,), (4,), (4,), (1,)] and plain["weight_decay"] == 0.0


def test_each_optimizer_is_built_as_its_peers_use_it():
    assert type(make_optimizer(_net(), "adam", 1e-4, 0.0)) is torch.optim.Adam
    adamw = make_optimizer(_net(), "adamw", 1e-3, 0.05)
    assert type(adamw) is torch.optim.AdamW and [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    off = make_optimizer(_net(), "adamw", 1e-3, 0.0)  # AdamW's own default is 0.01: 0 must reach it
    assert [g["weight_decay"] for g in off.param_groups] == [0.0]
    sgd = make_optimizer(_net(), "sgd", 1e-2, 3e-5)
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == SGD_MOMENTUM == 0.99
    assert TrainConfig(data=".", out=".").weight_decay == 0.0  # the seed's Adam: none
    assert TrainConfig(data=".", out=".", optimizer="adamw").weight_decay == DEFAULT_WEIGHT_DECAY["adamw"] == 0.01
    assert TrainConfig(data=".", out=".", optimizer="sgd", weight_decay=0).weight_decay == 0  # given: kept


def test_the_run_states_how_it_optimizes_in_one_line():
    seed = TrainConfig(data=".", out=".")
    assert describe_optimization(seed) == (
        "optimizer: adam, lr 0.0001, no weight decay; rate x0.1 after 3 epochs without a better validation dice"
    )
    tuned = TrainConfig(data=".", out=".", optimizer="adamw", lr=1e-3, schedule="cosine", warmup_epochs=2,
                        epochs=30, accumulate=4, batch_size=2, clip_grad=1.0)  # fmt: skip
    assert describe_optimization(tuned) == (
        "optimizer: adamw, lr 0.001, weight decay 0.01 (not on biases or normalization); cosine schedule to 0 at "
        "epoch 30, after 2 warmup epochs; 4 batches per step (effective batch 8 per process); gradients clipped at "
        "norm 1"
    )


# ---- accumulation and clipping in the training loop -------------------------------------------------------------
def _data(n: int = 8) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 8, 8, generator=g)
    labels = (images.mean(1) > 0.5).to(torch.uint8)
    return TensorDataset(images, labels)


def _trained(batch: int, stepping: Stepping, lr: float = 0.5) -> tuple[torch.nn.Module, float]:
    """One epoch of plain SGD on a network without BatchNorm (whose statistics depend on the batch size)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, _, seen = train_one_epoch(net, DataLoader(_data(), batch_size=batch), make_loss("bce", 1), optimizer,
                                    scaler, CPU, progress=False, stepping=stepping)  # fmt: skip
    assert seen == 8
    return net, loss


def _weights(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_two_batches_accumulated_step_as_one_batch_of_both():
    whole, loss_whole = _trained(4, Stepping())
    halves, loss_halves = _trained(2, Stepping(accumulate=2))
    unaccumulated, _ = _trained(2, Stepping())
    assert torch.allclose(_weights(whole), _weights(halves), atol=1e-6)  # 2 steps of 4 = 2 steps of 2x2
    assert not torch.allclose(_weights(whole), _weights(unaccumulated), atol=1e-4)  # 4 steps differ
    assert loss_whole == pytest.approx(loss_halves, rel=1e-6)  # the reported loss is per image either way


def test_a_short_last_window_steps_with_the_mean_of_its_own_batches():
    # 8 images in batches of 2, accumulate 3: windows of 3 and 1 batches; the lone last batch counts whole
    whole, _ = _trained(2, Stepping(accumulate=4))  # one window of all 4 batches: the mean of 4 batch means
    short, _ = _trained(2, Stepping(accumulate=9))  # the only window is short (4 < 9): the same mean, not 4/9 of it
    assert torch.allclose(_weights(whole), _weights(short), atol=1e-7)
    assert torch.allclose(_weights(whole), _weights(_trained(8, Stepping())[0]), atol=1e-6)  # = one batch of 8


@pytest.mark.parametrize("accumulate, steps", [(1, 4), (2, 2), (3, 2), (4, 1), (9, 1)])
def test_an_epoch_takes_one_step_per_window_and_a_short_last_window_still_steps(accumulate, steps):
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 1, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_one_epoch(net, DataLoader(_data(), batch_size=2), make_loss("bce", 1), optimizer, scaler, CPU,
                    progress=False, stepping=Stepping(accumulate=accumulate))  # fmt: skip
    assert int(optimizer.state[net.weight]["step"]) == steps  # 4 batches of 2


def test_clipping_bounds_the_step_and_a_loose_bound_changes_nothing():
    plain, _ = _trained(8, Stepping(), lr=1.0)
    loose, _ = _trained(8, Stepping(clip_grad=1e9), lr=1.0)
    assert torch.equal(_weights(plain), _weights(loose))
    torch.manual_seed(0)
    start = _weights(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                         torch.nn.Conv2d(4, 1, 1)))  # fmt: skip
    tight, _ = _trained(8, Stepping(clip_grad=1e-3), lr=1.0)  # one step of plain SGD at lr 1: |step| = the norm
    assert float((_weights(tight) - start).norm()) == pytest.approx(1e-3, rel=1e-3)


# ---- through the CLI --------------------------------------------------------------------------------------------
ARGS = ["--base-channels", "2", "--workers", "0", "--device", "cpu", "--no-progress", "--batch-size", "4"]


def test_a_cosine_run_with_warmup_accumulation_and_clipping_logs_the_rates_it_used(tmp_path, synth_small):
    run = tmp_path / "run"
    proc = run_cli("unet-train", "--data", synth_small, "--out", run, "--epochs", "3", "--optimizer", "adamw",
                   "--lr", "1e-3", "--schedule", "cosine", "--warmup-epochs", "1", "--accumulate", "2",
                   "--clip-grad", "1", *ARGS, check=True)  # fmt: skip
    assert (
        "optimizer: adamw, lr 0.001, weight decay 0.01 (not on biases or normalization); cosine schedule to 0 at "
        "epoch 3, after 1 warmup epoch; 2 batches per step (effective batch 8 per process); gradients clipped at "
        "norm 1"
    ) in proc.stdout
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    train = int(re.search(r"data: .* (\d+) train / \d+ val images", proc.stdout).group(1))
    steps = math.ceil(math.ceil(train / 4) / 2)  # batches of 4 (one size), two batches per step
    assert history[0]["LR"] == pytest.approx(1e-3 * 1 / steps)  # the first step of the warmup
    assert history[1]["LR"] == pytest.approx(1e-3 * decay_factor("cosine", 1, 3))  # 0.75: warmup over
    assert history[2]["LR"] == pytest.approx(1e-3 * decay_factor("cosine", 2, 3))  # 0.25
    training = torch.load(run / "last.pth", weights_only=True)["training"]
    groups = training["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-3]  # the base rate: a resumed epoch computes its own from it
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert training["config"]["accumulate"] == 2 and training["config"]["schedule"] == "cosine"
    refused = run_cli("unet-train", "--out", run, "--resume", "--epochs", "5", "--device", "cpu", "--no-progress")
    assert refused.returncode == 2
    assert "--epochs 5: the run's cosine schedule takes the learning rate to 0 at epoch 3" in error_lines(refused)[-1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--accumulate", "0"], "--accumulate must be at least 1"),
        (["--clip-grad", "0"], "--clip-grad must be positive"),
        (["--weight-decay", "-1"], "--weight-decay must be 0 or more"),
        (["--warmup-epochs", "3", "--epochs", "3"], "--warmup-epochs must be 0 or more, and fewer than --epochs"),
    ],
)
def test_bad_optimization_settings_are_one_line_before_work(tmp_path, synth_small, args, message):
    proc = run_cli("unet-train", "--data", synth_small, "--out", tmp_path / "run", *ARGS, *args)
    assert proc.returncode == 2 and error_lines(proc) == [f"unet-train: error: {message}"], proc.stderr
    assert not (tmp_path / "run").exists()


def test_eval_refuses_optimization_flags(tmp_path, random_checkpoint, synth_small):
    proc = run_cli("unet-train", "--eval", random_checkpoint, "--data", synth_small, "--schedule", "poly",
                   "--device", "cpu")  # fmt: skip
    assert proc.returncode == 2 and "--schedule is a training flag: leave it out" in error_lines(proc)[-1]


# ---- weight averaging (--ema) -------------------------------------------------------------------------------------
def test_the_average_ramps_up_and_moves_by_the_rate_ultralytics_uses():
    from unetkit.train.ema import RAMP_UPDATES, WeightAverage, ema_rate

    assert ema_rate(0.999, 1) == pytest.approx(0.999 * (1 - math.exp(-1 / RAMP_UPDATES)))
    assert ema_rate(0.999, 10**6) == pytest.approx(0.999) and ema_rate(0.999, 1) < 0.001
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1))
    average = WeightAverage(model, 0.9)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()(torch.randn(4, 1, 2, 2))  # BatchNorm counts a batch and moves its statistics
    average.update(model)
    keep = ema_rate(0.9, 1)
    assert torch.allclose(average.model[0].weight, keep * start + (1 - keep) * model[0].weight)
    assert torch.allclose(average.model[1].running_mean, (1 - keep) * model[1].running_mean)  # the average began at 0
    assert average.model[1].num_batches_tracked == 1  # integer counters are copied, not averaged
    assert not any(p.requires_grad for p in average.model.parameters()) and average.updates == 1


def test_an_ema_run_saves_the_average_and_resumes_exactly(tmp_path, synth_small):
    args = ["--data", synth_small, "--ema", "0.5", "--lr", "3e-3", "--no-augment", *ARGS]
    run_cli("unet-train", *args, "--out", tmp_path / "straight", "--epochs", "2", check=True)
    first = run_cli("unet-train", *args, "--out", tmp_path / "resumed", "--epochs", "1", check=True)
    assert "weights averaged (EMA decay 0.5): the average is validated and saved" in first.stdout
    run_cli("unet-train", "--out", tmp_path / "resumed", "--resume", "--epochs", "2", "--device", "cpu",
            "--no-progress", check=True)  # fmt: skip
    a = torch.load(tmp_path / "straight/last.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed/last.pth", weights_only=True)
    averaged, trained = a["state_dict"], a["training"]["ema"]["trained_weights"]
    assert a["training"]["ema"]["updates"] == b["training"]["ema"]["updates"] > 0
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged)  # the average is what is saved
    for key in averaged:
        assert torch.equal(averaged[key], b["state_dict"][key]), key
        assert torch.equal(trained[key], b["training"]["ema"]["trained_weights"][key]), key
    # the checkpoint's validation Dice is the average's: --eval of the saved weights reproduces it
    _, meta = load_checkpoint(tmp_path / "straight/last.pth")
    proc = run_cli("unet-train", "--eval", tmp_path / "straight/last.pth", "--data", synth_small, "--split", "val",
                   "--device", "cpu", "--no-progress", "--workers", "0", "--batch-size", "4", check=True)  # fmt: skip
    assert f"model input size: Dice {meta.val_dice:.4f}" in proc.stdout
