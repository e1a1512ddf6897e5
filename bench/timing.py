"""Measuring an engine the way trtexec and careful papers do: warm up, rotate inputs, time each call with
CUDA events (wall clock on the CPU), repeat until enough time and iterations have passed."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from unetkit.core.errors import UnetkitError
from unetkit.infer.engines import DTYPES


@dataclass(frozen=True)
class TimingPlan:
    warmup: int = 5
    min_iters: int = 20
    min_time: float = 2.0  # seconds of measured calls
    max_iters: int = 2000
    rotate: int = 3  # distinct inputs cycled through, so no cache sees the same data twice in a row

    def __post_init__(self) -> None:
        for ok, message in (
            (self.warmup >= 0, f"--warmup {self.warmup}: must be 0 or more"),
            (self.min_iters >= 1, f"--min-iters {self.min_iters}: must be at least 1"),
            (self.min_time >= 0, f"--min-time {self.min_time}: must be 0 or more seconds"),
        ):
            if not ok:
                raise UnetkitError(message)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[torch.Tensor], object], inputs: list[torch.Tensor], plan: TimingPlan) -> list[float]:
    """Seconds per call of `fn`, one entry per timed call, inputs rotated."""
    device = inputs[0].device
    for i in range(plan.warmup):
        fn(inputs[i % len(inputs)])
    synchronize(device)
    times: list[float] = []
    while (len(times) < plan.min_iters or sum(times) < plan.min_time) and len(times) < plan.max_iters:
        x = inputs[len(times) % len(inputs)]
        if device.type == "cuda":
            # On the inputs' device's stream: events recorded without one land on the current device's
            # stream, which times an idle cuda:0 while the work runs on cuda:N.
            stream = torch.cuda.current_stream(device)
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record(stream)
            fn(x)
            end.record(stream)
            end.synchronize()  # one call at a time: latency, not queue depth
            times.append(begin.elapsed_time(end) / 1000)
        else:
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return times


def random_inputs(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g).to(device=device, dtype=dtype) for _ in range(n)]


@contextlib.contextmanager
def matmul_tf32(enabled: bool) -> Iterator[None]:
    """Set matmul TF32 for the duration of a probe and restore it (PyTorch's default is off for matmul)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def matmul_peak_tflops(
    precision: str, device: torch.device, size: int | None = None, probes: int | None = None
) -> float:
    """Dense matrix-multiply throughput measured now, in the given precision: the hardware's practical peak.

    Other load on the machine can only slow a probe down, so the peak is the best of several probes
    (`best_rate`). FP32 on CUDA is probed with TF32 as cuDNN's convolutions use it (PyTorch's default: on), so
    an FP32 convolution network is compared with the matrix rate it actually gets.
    """
    # AMX reaches its bf16 rate only from ~2048; FP32 peaks at 1024 already, and costs 8x more at 2048
    n = size or (8192 if device.type == "cuda" else 1024 if precision == "fp32" else 2048)
    a, b = random_inputs((n, n), DTYPES[precision], device, 2)
    plan = TimingPlan(warmup=3, min_iters=10, min_time=0.3 if device.type == "cuda" else 0.15)
    runs = []
    with matmul_tf32(torch.backends.cudnn.allow_tf32 if device.type == "cuda" else False):
        for _ in range(probes or (5 if device.type == "cuda" else 3)):
            runs.append(time_calls(lambda _: torch.mm(a, b), [a], plan))
    return best_rate(2 * n**3, runs) / 1e12


def best_rate(work: float, runs: list[list[float]]) -> float:
    """`work` per second of the fastest run's median call: a median is robust to a stray slow call, and the
    best run is the one the least disturbed by other load."""
    medians = [statistics.median(times) for times in runs if times]
    if not medians:
        raise ValueError("no timed calls")
    return work / min(medians)
