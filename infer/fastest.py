"""`unet-infer --engine fastest`: the fastest CPU engine for this checkpoint whose masks agree with eager
FP32, chosen only when asked.

Each candidate (eager FP32 and BF16, and the ONNX Runtime and OpenVINO engines on every artifact beside the
checkpoint) predicts the first input, then runs it once to warm up and is timed at least twice and for half a
second (its best call counts), at that input's model-input size and batch 1. Where the folder's images have
several model-input sizes, each candidate's first call at a new size is timed too and counted for the share
of images that bring a size it has not compiled (OpenVINO compiles one model per size and keeps six, which
a warm time at one size hides:
on 16 images of 16 sizes it was chosen at 0.9 ms/image and ran at 136). The lowest expected time wins and
every time is printed. A candidate is left out, with its reason, when its precision is not native on this CPU, its
artifact is missing, was exported without verification, or came from another checkpoint (a stale file), or
its mask on that input agrees with eager FP32's less than export's mask gate (0.999, its FP16 gate; 0.99
for int8; export holds FP32 files to max |dp| <= 1e-4, which is stricter): eager BF16 and OpenVINO BF16 run
a precision no export checked, so they are checked here. Eager FP32 is the reference, so it is always a
candidate.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unetkit.core.cpu import CpuCapabilities, cpu_capabilities
from unetkit.core.errors import UnetkitError
from unetkit.core.imageio import read_image
from unetkit.core.labels import predict_labels
from unetkit.core.meta import ModelMeta
from unetkit.core.metrics import agreement_gate, mask_agreement
from unetkit.core.preprocess import model_input

from .artifacts import sha256_file
from .engines import Engine, create_engine

log = logging.getLogger(__name__)
#: (engine, precision) tried, in this order. No eager fp16: PyTorch's CPU convolutions run it slower than fp32
#: even on AVX512-FP16 (docs/benchmarks.md: 6138 ms against 5013 ms per Carvana image on a Xeon with AMX).
CANDIDATES = (
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("onnx", "fp32"),
    ("onnx", "fp16"),
    ("onnx", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
)
WARMUP, TIMED, MIN_SECONDS, MAX_CALLS = 1, 2, 0.5, 100
#: Rows fewer (or more) than the probe input: the two new sizes a first call is timed at.
NEW_SIZE_ROWS = (16, 32)


@dataclass
class Probe:
    engine: str
    precision: str
    ms: float | None = None  # best of the timed calls, per image
    note: str = ""  # why it was left out
    agreement: float | None = None  # its mask's agreement with eager FP32 on the probe input
    new_size_ms: float | None = None  # its first call at a model-input size it had not run (None: not timed)
    expected_ms: float | None = None  # per image over the folder: ms plus the new sizes' share of that first call

    @property
    def label(self) -> str:
        return f"{self.engine} {self.precision}"


def precision_problem(precision: str, cpu: CpuCapabilities) -> str | None:
    """Why a precision is no candidate on this CPU: bf16 and fp16 only where they are native."""
    if precision == "bf16" and not cpu.bf16:
        return f"bf16 is not native on this CPU ({cpu.summary()})"
    if precision == "fp16" and not cpu.fp16:
        return f"fp16 is not native on this CPU ({cpu.summary()})"
    return None


def artifact_problem(extra: dict[str, Any], checkpoint_sha256: str) -> str | None:
    """Why an exported file may not be chosen: not verified at export, or exported from another checkpoint."""
    if extra.get("export_verified") is not True:
        return "not verified at export (written with --no-verify, or by an older unetkit); re-export it"
    if extra.get("source_sha256") != checkpoint_sha256:
        return "exported from another checkpoint (stale); re-export it"
    return None


def agreement_problem(agreement: float, precision: str) -> str:
    """Why a candidate is left out for its masks: below the agreement with eager FP32 that export gates its
    files on (`agreement_gate`), on the probe input; '' when it is close enough."""
    gate = agreement_gate(precision)
    if agreement >= gate:
        return ""
    return f"its mask agrees {agreement:.5f} with eager FP32 here, under the {gate} {precision} files are held to"


def new_size_share(sizes: Sequence[tuple[int, int]], kept: int | None = None) -> float:
    """The share of images, run in this order, that meet a model-input size the engine has not compiled: every
    size's first image, and with `kept` sizes kept compiled (least recently used dropped, as OpenVINO's cache)
    every image whose size was dropped since. 0 for a folder of one size."""
    if len(set(sizes)) < 2:
        return 0.0
    if kept is None:
        return len(set(sizes)) / len(sizes)
    cache: collections.OrderedDict[tuple[int, int], None] = collections.OrderedDict()
    misses = 0
    for size in sizes:
        if size in cache:
            cache.move_to_end(size)
            continue
        misses += 1
        cache[size] = None
        if len(cache) > kept:
            cache.popitem(last=False)
    return misses / len(sizes)


def expected_ms(warm_ms: float, new_size_ms: float | None, share: float) -> float:
    """Per image over a folder: the warm time, plus what a first call at a new size costs beyond it, for the
    share of images that bring one."""
    if new_size_ms is None:
        return warm_ms
    return warm_ms + max(0.0, new_size_ms - warm_ms) * share


def other_size(x: torch.Tensor, rows: int = 16) -> torch.Tensor:
    """`x` at another size (`rows` fewer, or more where it is small): what a first call at a new size runs."""
    if x.shape[-2] > 2 * rows:
        return x[..., :-rows, :].contiguous()
    return torch.nn.functional.pad(x, (0, 0, 0, rows))


def probe_input(images: list[Path], meta: ModelMeta, tile: int) -> torch.Tensor:
    """The first readable image's model input (1, C, H, W), or one tile of it (zero-padded where smaller): the
    shape the run starts with. An unreadable image is passed over silently: the run reports it."""
    for path in images[:10]:
        try:
            pixels = torch.from_numpy(read_image(path)).permute(2, 0, 1)
        except UnetkitError:
            continue
        x = model_input(pixels, meta)[None]
        if tile:
            x = x[..., :tile, :tile]
            x = torch.nn.functional.pad(x, (0, tile - x.shape[-1], 0, tile - x.shape[-2]))
        return x.contiguous()
    raise UnetkitError("--engine fastest: none of the first images could be read to probe the engines")


def _time(engine: Engine, x: torch.Tensor) -> float:
    """Best call per image, of at least TIMED calls and MIN_SECONDS of them (up to MAX_CALLS): a call of
    seconds is timed twice, one of milliseconds often enough that the machine's noise cannot pick the winner."""
    for _ in range(WARMUP):
        engine(x)
    times: list[float] = []
    while len(times) < TIMED or (sum(times) < MIN_SECONDS and len(times) < MAX_CALLS):
        start = time.perf_counter()
        engine(x)
        times.append(time.perf_counter() - start)
    return 1000 * min(times) / x.shape[0]


def _new_size_ms(engine: Engine, x: torch.Tensor) -> float:
    """The engine's first call at a size it has not run, per image: the better of two such sizes."""
    times = []
    for rows in NEW_SIZE_ROWS:
        start = time.perf_counter()
        engine(other_size(x, rows))
        times.append(1000 * (time.perf_counter() - start) / x.shape[0])
    return min(times)


def probe_engines(
    checkpoint: Path,
    x: torch.Tensor,
    report: Callable[[Probe], None] = lambda probe: None,
    cpu: CpuCapabilities | None = None,
    sizes: Sequence[tuple[int, int]] = (),
) -> tuple[Engine, list[Probe]]:
    """Time every candidate on `x` (a CPU model input) and return the one with the lowest expected time per
    image, still open, with every probe; `sizes` are the run's model-input sizes in its order, whose new sizes
    each engine pays a first call for (`new_size_share`; one size or none: no first call timed). `report` sees
    each probe as it finishes.
    UnetkitError when none can run."""
    cpu = cpu or cpu_capabilities()
    sha = sha256_file(checkpoint)
    probes: list[Probe] = []
    reference: torch.Tensor | None = None
    best: Engine | None = None
    best_ms = float("inf")
    for name, precision in CANDIDATES:
        probe = Probe(name, precision)
        probes.append(probe)
        probe.note = precision_problem(precision, cpu) or ""
        engine = None
        if not probe.note:
            try:
                engine = create_engine(name, checkpoint=checkpoint, device="cpu", precision=precision)
            except UnetkitError as exc:
                probe.note = str(exc)
        if engine is not None and name != "torch":
            probe.note = artifact_problem(dict(engine.meta.extra), sha) or ""
        if engine is not None and not probe.note:
            labels = predict_labels(engine(x)[0], engine.meta.threshold)
            reference = labels if reference is None else reference  # eager FP32 comes first
            probe.agreement = mask_agreement(labels, reference, engine.n_classes)
            probe.note = agreement_problem(probe.agreement, precision)
        if engine is not None and not probe.note:
            probe.ms = _time(engine, x)
            share = new_size_share(sizes, engine.compiled_sizes)
            probe.new_size_ms = _new_size_ms(engine, x) if share > 0 else None
            probe.expected_ms = expected_ms(probe.ms, probe.new_size_ms, share)
            if probe.expected_ms < best_ms:
                if best is not None:
                    best.close()
                best, best_ms, engine = engine, probe.expected_ms, None
        if engine is not None:
            engine.close()
        report(probe)
    if best is None:
        raise UnetkitError("--engine fastest: no CPU engine can run this checkpoint (see the lines above)")
    return best, probes
