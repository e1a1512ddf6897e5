"""The model-only scope: every engine at every batch size on device-resident inputs, against eager FP32.

Each row is one engine at one batch size: latency per batch and per image, images/s, peak device memory,
speedup over eager FP32 measured in the same run, mask agreement with eager FP32 on one image of the model's
own kind (the first of --images, else of the checkpoint's training data; else a synthetic car), and
achieved TFLOP/s against a matmul peak measured now in the same precision. An engine that cannot run is a
row with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.core.cpu import CpuCapabilities, cpu_capabilities
from unetkit.core.device import cuda_bf16_native
from unetkit.core.errors import UnetkitError
from unetkit.core.imageio import read_image
from unetkit.core.labels import predict_labels
from unetkit.core.meta import ModelMeta
from unetkit.core.metrics import mask_agreement
from unetkit.core.preprocess import model_input, resize_pixels
from unetkit.infer.engines import ENGINE_NAMES, PRECISIONS, Engine, EngineShapeError, canonical_precision, create_engine
from unetkit.train.data.synth import random_car, render

from .stats import HIGH_CV, images_per_second, per_image, summarize
from .timing import TimingPlan, random_inputs, synchronize, time_calls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSpec:
    name: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision}"

    @classmethod
    def parse(cls, text: str) -> EngineSpec:
        """'onnx:fp16' -> EngineSpec('onnx', 'fp16'); 'openvino:f32' -> EngineSpec('openvino', 'fp32')."""
        name, _, precision = text.partition(":")
        precision = canonical_precision(precision)
        if name not in ENGINE_NAMES or precision not in PRECISIONS:
            raise UnetkitError(f"--engines '{text}': expected ENGINE:PRECISION, e.g. torch:fp32, onnx:int8, "
                               "openvino:bf16, trt:fp16")  # fmt: skip
        return cls(name, precision)


#: What a share of the matmul peak above 100 % means: the probe ran slower than the hardware can, not that the
#: network beat the hardware.
OVER_PEAK = "over 100%: the peak probe was disturbed"
BASELINE = EngineSpec("torch", "fp32")
ALL_SPECS = (
    BASELINE,
    EngineSpec("torch", "fp16"),
    EngineSpec("torch", "bf16"),
    EngineSpec("compile", "fp16"),
    EngineSpec("onnx", "fp32"),
    EngineSpec("onnx", "fp16"),
    EngineSpec("onnx", "int8"),
    EngineSpec("openvino", "fp32"),
    EngineSpec("openvino", "bf16"),
    EngineSpec("openvino", "int8"),
    EngineSpec("trt", "fp16"),
    EngineSpec("trt", "int8"),
)


def eager_cpu_skip(precision: str, cpu: CpuCapabilities) -> str | None:
    """Why eager PyTorch in `precision` is left out on this CPU, or None: bf16 and fp16 run only where the
    CPU executes them natively (its flags say so); elsewhere they are emulated, slower than FP32."""
    native = {"bf16": cpu.bf16, "fp16": cpu.fp16}.get(precision, True)
    if native:
        return None
    needs = "AVX512-BF16 or AMX-BF16" if precision == "bf16" else "AVX512-FP16 or AMX-FP16"
    name = precision.upper()
    return (f"{name} is not native on this CPU ({cpu.summary()}; it needs {needs}), so eager {name} is "
            f"emulated and slower than FP32; ask for it with --engines torch:{precision}")  # fmt: skip


def default_skip(spec: EngineSpec, device: torch.device, cpu: CpuCapabilities | None = None) -> str | None:
    """Why an engine is left out of a default run here (it stays in the report with this reason)."""
    if device.type == "cpu":
        if spec.name == "compile":
            return "compiling for the CPU takes minutes per shape; ask for it with --engines compile:fp32"
        if spec.name == "torch" and spec.precision != "fp32":
            return eager_cpu_skip(spec.precision, cpu or cpu_capabilities())
    if spec.name == "compile" and spec.precision == "fp32":
        return "not a default row; ask for it with --engines"
    if spec.precision == "bf16" and device.type == "cuda" and not cuda_bf16_native(device):
        return "this GPU has no bf16 tensor cores (compute capability below 8.0): bf16 would be emulated"
    return None


def device_problem(engine: Engine, device: torch.device) -> str | None:
    """Why an engine's figures would not answer the question asked: it fell back to another device (ONNX
    Runtime without its CUDA provider runs on the CPU), so its row would time the CPU in a GPU report."""
    if engine.device.type == device.type:
        return None
    return f"runs on the {engine.device.type} here, not the {device.type}: {engine.detail}"


@dataclass
class Row:
    engine: str
    precision: str
    batch: int
    status: str = "ok"  # ok, unavailable, failed
    reason: str = ""
    latency_ms: dict[str, float] = field(default_factory=dict)  # per batch
    per_image_ms: dict[str, float] = field(default_factory=dict)
    images_per_s: float | None = None
    peak_memory_mb: float | None = None
    speedup_vs_eager_fp32: float | None = None
    dice_vs_eager_fp32: float | None = None
    tflops: float | None = None
    peak_share: float | None = None
    peak_share_note: str = ""  # set when the share is not to be believed (over 100 %)
    meets_target: bool | None = None
    detail: str = ""

    @property
    def label(self) -> str:
        return f"{self.engine} {self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


#: What the agreement image is when no image of the model's own kind is at hand.
SYNTHETIC_CAR = "a synthetic car"
#: Candidates tried before the synthetic car stands in (each one that fails to decode costs a read).
AGREEMENT_TRIES = 16


def agreement_input(
    meta: ModelMeta, image_hw: tuple[int, int], device: torch.device, candidates: Sequence[Path]
) -> tuple[torch.Tensor, str]:
    """The image every engine's mask is compared on, prepared as every engine's input (batch of 1), and what it
    is: the first of `candidates` that decodes (a damaged file is passed over), else a synthetic car. It is
    resized to `image_hw` first, so every engine sees a shape the timed rows use."""
    for path in candidates[:AGREEMENT_TRIES]:
        try:
            pixels = read_image(path)
        except UnetkitError:
            continue
        chw = resize_pixels(torch.from_numpy(pixels).permute(2, 0, 1), image_hw)
        return model_input(chw.to(device), meta)[None], str(path)
    rng = np.random.default_rng(0)
    pixels, _ = render(random_car(rng), rng, image_hw[1], image_hw[0])
    return model_input(torch.from_numpy(pixels).permute(2, 0, 1).to(device), meta)[None], SYNTHETIC_CAR


def agreement_measure(n_classes: int) -> str:
    """What the agreement column measures: Dice for a binary model, the share of pixels whose class agrees for a
    multi-class one (as export's gate)."""
    return "Dice" if n_classes == 1 else "share of pixels whose class agrees"


class DeviceMemory:
    """Peak device memory attributable to one engine: torch's own peak, or what left the device's free
    memory (for ONNX Runtime and TensorRT, which allocate outside torch), whichever is larger."""

    def __init__(self, device: torch.device) -> None:
        """Take the baseline before the engine is created, so its weights count."""
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.allocated = torch.cuda.memory_allocated(device)
            self.free = torch.cuda.mem_get_info(device)[0]
            self.lowest_free = self.free

    def sample(self) -> None:
        if self.cuda:
            self.lowest_free = min(self.lowest_free, torch.cuda.mem_get_info(self.device)[0])

    def peak_mb(self) -> float | None:
        if not self.cuda:
            return None
        torch_peak = torch.cuda.max_memory_allocated(self.device) - self.allocated
        return max(torch_peak, self.free - self.lowest_free) / 2**20


def bench_engine(
    spec: EngineSpec,
    make: Callable[[EngineSpec], Engine],
    batches: list[int],
    model_hw: tuple[int, int],
    plan: TimingPlan,
    reference: torch.Tensor | None,
    car: torch.Tensor,
    device: torch.device,
) -> tuple[list[Row], torch.Tensor | None]:
    """Rows for one engine at each batch size, and its labels on the car (the reference for the baseline)."""
    rows = [Row(spec.name, spec.precision, b) for b in batches]
    memory = DeviceMemory(device)
    try:
        engine = make(spec)
    except UnetkitError as exc:
        for row in rows:
            row.status, row.reason = "unavailable", str(exc)
        return rows, None
    with engine:
        problem = device_problem(engine, device)
        if problem:
            for row in rows:
                row.status, row.reason = "unavailable", problem
            return rows, None
        try:
            return _bench_rows(engine, rows, model_hw, plan, reference, car, memory)
        except Exception as exc:  # a backend that fails to compile or run fails its rows, not the whole report
            log.debug("%s failed", engine.label, exc_info=True)
            for row in rows:
                if row.status == "ok" and not row.latency_ms:
                    row.status, row.reason = "failed", failure_reason(exc)
            return rows, None


def failure_reason(exc: BaseException) -> str:
    """One line for a report: the exception's type and the first line of its message (Inductor's and
    TensorRT's messages run to pages)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}"[:300]


#: Under the model-only table when a row's agreement could not be measured (`agreement_figure` gave None).
NO_AGREEMENT = ("Dice -: neither mask has a foreground pixel on the agreement image (random weights, or nothing of "
                "the model's classes in it), so agreement is not measured")  # fmt: skip


def agreement_figure(labels: torch.Tensor, reference: torch.Tensor | None, n_classes: int) -> float | None:
    """A row's mask agreement with eager FP32 (`reference`; None for the baseline row itself), or None when a
    binary model finds no foreground in either mask: Dice would be a 1.0 that measured nothing."""
    if n_classes == 1 and not labels.any() and (reference is None or not reference.any()):
        return None
    return mask_agreement(labels, reference, n_classes) if reference is not None else 1.0


def _bench_rows(
    engine: Engine,
    rows: list[Row],
    model_hw: tuple[int, int],
    plan: TimingPlan,
    reference: torch.Tensor | None,
    car: torch.Tensor,
    memory: DeviceMemory,
) -> tuple[list[Row], torch.Tensor | None]:
    labels = predict_labels(engine(car.to(engine.device))[0], engine.meta.threshold).cpu()
    dice = agreement_figure(labels, reference, engine.n_classes)
    for row in rows:
        row.detail = engine.detail
        shape = (row.batch, 3, *model_hw)
        try:
            engine.check(shape)
            inputs = random_inputs(shape, engine.input_dtype, engine.device, plan.rotate)
            memory.sample()
            times = time_calls(engine, inputs, plan)
            memory.sample()
        except EngineShapeError as exc:
            row.status, row.reason = "unavailable", str(exc)
            continue
        except torch.cuda.OutOfMemoryError:
            row.status, row.reason = "failed", f"out of device memory at batch {row.batch}"
            torch.cuda.empty_cache()
            continue
        row.latency_ms = summarize(times)
        row.per_image_ms = per_image(row.latency_ms, row.batch)
        row.images_per_s = images_per_second(row.latency_ms["p50"], row.batch)
        row.peak_memory_mb = memory.peak_mb() if engine.device.type == "cuda" else None
        row.dice_vs_eager_fp32 = dice
        if row.latency_ms["cv"] > HIGH_CV:
            log.warning("warning: %s batch %d varies by %.1f%% between calls; its figures are less reliable",
                        engine.label, row.batch, 100 * row.latency_ms["cv"])  # fmt: skip
        del inputs  # before the next batch size allocates its own
    return rows, labels


def finish_rows(rows: list[Row], flops_per_image: int, peaks: dict[str, float], target_ms: float) -> None:
    """Fill what compares rows: speedup over eager FP32 at the same batch, TFLOP/s and share of peak, verdict."""
    base = {r.batch: r for r in rows if (r.engine, r.precision) == (BASELINE.name, BASELINE.precision)}
    for row in rows:
        if row.status != "ok":
            continue
        ref = base.get(row.batch)
        if ref is not None and ref.status == "ok":
            row.speedup_vs_eager_fp32 = ref.per_image_ms["p50"] / row.per_image_ms["p50"]
        row.tflops = flops_per_image * (row.images_per_s or 0.0) / 1e12
        peak = peaks.get(row.precision)
        row.peak_share = row.tflops / peak if peak else None
        row.peak_share_note = OVER_PEAK if row.peak_share is not None and row.peak_share > 1 else ""
        row.meets_target = row.per_image_ms["p50"] <= target_ms


def best_row(rows: list[Row], batch: int | None = None) -> Row | None:
    """The fastest row per image (p50) that ran, over every batch size or only `batch`'s."""
    ok = [r for r in rows if r.status == "ok" and batch in (None, r.batch)]
    return min(ok, key=lambda r: r.per_image_ms["p50"]) if ok else None


def engine_factory(checkpoint: Path, device: torch.device, compile_mode: str | None) -> Callable[[EngineSpec], Engine]:
    def make(spec: EngineSpec) -> Engine:
        return create_engine(spec.name, checkpoint=checkpoint, device=device, precision=spec.precision,
                             compile_mode=compile_mode)  # fmt: skip

    return make
