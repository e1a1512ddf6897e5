"""The device side of a folder run: upload, compute and download streams on CUDA, and busy time per stage.

On CUDA, uploads run on their own stream, compute on another and downloads on a third, ordered by stream
waits, with pinned host buffers, so one batch computes while the next uploads and the previous downloads.
On the CPU the same calls run in place without streams.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import Any

import torch


class StageClock:
    """Busy time per stage: wall time for host work, CUDA event time for device work."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds: dict[str, float] = defaultdict(float)
        self._spans: deque[tuple[str, torch.cuda.Event, torch.cuda.Event]] = deque()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def host(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[stage] += time.perf_counter() - start

    @contextlib.contextmanager
    def device(self, stage: str, stream: torch.cuda.Stream | None) -> Iterator[None]:
        if not self.cuda:
            with self.host(stage):
                yield
            return
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record(stream)
        yield
        end.record(stream)
        self._spans.append((stage, begin, end))
        self.settle()

    def settle(self, wait: bool = False) -> None:
        """Add up the device spans that have finished (all of them with `wait`)."""
        while self._spans and (wait or self._spans[0][2].query()):
            stage, begin, end = self._spans.popleft()
            end.synchronize()
            with self._lock:  # decode time is also added by worker threads
                self.seconds[stage] += begin.elapsed_time(end) / 1000


class Streams:
    """Upload, compute and download streams on CUDA; plain calls on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.h2d: torch.cuda.Stream | None = None
        self.compute: torch.cuda.Stream | None = None
        self.d2h: torch.cuda.Stream | None = None
        if self.cuda:
            self.h2d, self.compute, self.d2h = (torch.cuda.Stream(device) for _ in range(3))

    def computing(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.compute) if self.cuda else contextlib.nullcontext()

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        if self.h2d is None or self.compute is None:
            return host
        with torch.cuda.stream(self.h2d):
            dev = host.to(self.device, non_blocking=True)
        self.compute.wait_stream(self.h2d)
        dev.record_stream(self.compute)
        return dev

    def after_compute(self) -> None:
        """Make the download stream wait for the work queued so far on the compute stream."""
        if self.d2h is not None and self.compute is not None:
            self.d2h.wait_stream(self.compute)

    def download(self, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        """Copy to pinned host memory on the download stream (which the caller made wait for compute)."""
        if self.d2h is None:
            return tensors, None
        with torch.cuda.stream(self.d2h):
            host = {}
            for name, t in tensors.items():
                host[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
                t.record_stream(self.d2h)
            done = torch.cuda.Event(blocking=True)  # writers sleep on it instead of spinning
            done.record()
        return host, done
