"""Latency statistics: pure functions on lists of seconds."""

from __future__ import annotations

import math
from collections.abc import Sequence

#: A coefficient of variation above this makes a measurement worth distrusting (trtexec warns at 2.5 %
#: with locked clocks; a shared, unlocked GPU or a CPU is noisier).
HIGH_CV = 0.05


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99, mean, standard deviation (population) and coefficient of variation, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    mean = sum(ms) / len(ms)
    std = math.sqrt(sum((v - mean) ** 2 for v in ms) / len(ms))
    return {
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "mean": mean,
        "std": std,
        "cv": std / mean if mean else 0.0,
        "n": len(ms),
    }


def per_image(batch_stats: dict[str, float], batch: int) -> dict[str, float]:
    """Per-batch latency statistics divided by the batch size (cv and n unchanged)."""
    return {k: (v if k in ("cv", "n") else v / batch) for k, v in batch_stats.items()}


def images_per_second(median_batch_ms: float, batch: int) -> float:
    return 1000 * batch / median_batch_ms if median_batch_ms > 0 else 0.0
