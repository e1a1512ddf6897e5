"""The unet-infer pipeline: decode -> upload -> preprocess -> infer -> stitch -> postprocess -> download -> write.

Decoding and encoding run on a thread pool; the device work is queued from one thread. On CUDA, uploads
run on their own stream, compute on another and downloads on a third, ordered by stream waits, with pinned
host buffers; the host thread only ever waits for the oldest image's download before handing it to a
writer, so while one batch computes the next is uploading and the previous is downloading and being
written. Bounded windows of in-flight decodes and writes keep memory flat however many images there are.
On the CPU the same code runs without streams. One bad image is named, skipped and listed at the end.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from unetkit.train.atomic import atomic_path
from unetkit.train.errors import DataError, UnetkitError
from unetkit.train.layouts import palette as label_palette

from .batching import BatchRunner, Job
from .engines import Engine, EngineShapeError
from .io import JPEG_EXTENSIONS, Item, decode_to_tensor, write_jpeg, write_png
from .nvjpeg import GpuJpegDecoder, exif_rotated
from .rle import rle_encode
from .transforms import confidence, model_input, overlay, to_labels, to_size

log = logging.getLogger(__name__)
DECODERS = ("auto", "cpu", "nvjpeg")
STAGES = ("decode", "upload", "compute", "download", "write")


@dataclass(frozen=True)
class InferOptions:
    tile: int = 0  # 0: whole images
    overlap: int | None = None  # pixels; None: tile // 4
    blend: str = "gaussian"
    batch: int = 8
    save_prob: bool = False
    overlay: bool = False
    palette: bool = False
    rle: Path | None = None
    resume: bool = False
    workers: int = 4
    decoder: str = "auto"
    progress: bool = True


@dataclass
class RunSummary:
    images: int = 0
    written: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # busy seconds per stage (stages overlap)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        s = self.settings
        mode = f"tile {s['tile']} overlap {s['overlap']} ({s['blend']})" if s.get("tile") else "whole images"
        out = [
            f"{self.images} images: {self.written} written, {self.skipped} skipped (--resume), "
            f"{len(self.failures)} failed; {self.seconds:.1f} s, {self.images_per_s:.2f} images/s",
            f"engine {s['engine']} on {s['device']}, {mode}, batch {s['batch']}, decoder {s['decoder']}",
        ]
        if self.written:
            per = ", ".join(f"{k} {1000 * self.stages.get(k, 0.0) / self.written:.1f}" for k in STAGES)
            out.append(f"busy ms per image (stages overlap): {per}")
        out += [f"failed: {path}: {why}" for path, why in self.failures]
        return out


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


class _Streams:
    """Upload, compute and download streams on CUDA; plain calls on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.h2d, self.compute, self.d2h = (torch.cuda.Stream(device) for _ in range(3))
        else:
            self.h2d = self.compute = self.d2h = None

    def computing(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.compute) if self.cuda else contextlib.nullcontext()

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return host
        with torch.cuda.stream(self.h2d):
            dev = host.to(self.device, non_blocking=True)
        self.compute.wait_stream(self.h2d)
        dev.record_stream(self.compute)
        return dev

    def download(self, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        """Copy to pinned host memory on the download stream (which the caller made wait for compute)."""
        if not self.cuda:
            return tensors, None
        with torch.cuda.stream(self.d2h):
            host = {}
            for name, t in tensors.items():
                host[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
                t.record_stream(self.d2h)
            done = torch.cuda.Event(blocking=True)  # writers sleep on it instead of spinning
            done.record()
        return host, done


class Pipeline:
    """One folder run; see the module docstring."""

    def __init__(self, engine: Engine, options: InferOptions) -> None:
        self.engine, self.options, self.meta = engine, options, engine.meta
        self.streams = _Streams(engine.device)
        self.clock = StageClock(self.streams.cuda)
        self.runner = BatchRunner(
            engine, engine.n_classes, options.batch, options.tile, options.overlap, options.blend, engine.static_shapes,
            check=engine.check,
        )  # fmt: skip
        if options.decoder not in DECODERS:
            raise UnetkitError(f"--decoder '{options.decoder}': choose one of {', '.join(DECODERS)}")
        self.jpeg: GpuJpegDecoder | None = None
        if options.decoder != "cpu":
            reason = GpuJpegDecoder.unavailable(engine.device)
            if reason and options.decoder == "nvjpeg":
                raise UnetkitError(f"--decoder nvjpeg: {reason}")
            self.jpeg = None if reason else GpuJpegDecoder(engine.device)
        if options.rle and engine.n_classes != 1:
            raise UnetkitError("--rle writes Carvana's binary format; this model has several classes")
        self.palette = label_palette(engine.n_classes, self.meta.get("mask_kind", "binary"))
        engine.check_batch(options.batch)  # a TensorRT profile must take the batch: one line before any work
        if engine.shapes is not None and options.tile:  # and the tile; whole images are checked one by one
            engine.check((options.batch, 3, options.tile, options.tile))

    # ---- decode (thread pool) -------------------------------------------------------------------------------
    def _read(self, item: Item) -> torch.Tensor | bytes:
        """Worker thread: JPEG bytes for the GPU decoder, else pixels decoded by the CPU reading rule."""
        with self.clock.host("decode"):
            if self.jpeg is not None and item.source.suffix.lower() in JPEG_EXTENSIONS:
                data = item.source.read_bytes()
                if not exif_rotated(data):
                    return data
            return decode_to_tensor(item.source, pin=self.streams.cuda)

    def _pixels(self, group: list[tuple[Item, Future]]) -> list[torch.Tensor | DataError]:
        """Each read of `group` as uint8 (3, H, W) on the device, ready for the compute stream, or the DataError
        that image raised. The group's JPEG bytes are decoded on the GPU in one call."""
        datas: list[torch.Tensor | bytes | DataError] = []
        for _, future in group:
            try:
                datas.append(future.result())
            except DataError as exc:
                datas.append(exc)
        jpegs = [i for i, d in enumerate(datas) if isinstance(d, bytes)]
        if jpegs:
            with self.clock.host("decode"):  # the decoder blocks the host until its stream is done
                decoded = self._decode_jpegs([datas[i] for i in jpegs], [group[i][0] for i in jpegs])
            for i, image in zip(jpegs, decoded, strict=True):
                datas[i] = image
        out: list[torch.Tensor | DataError] = []
        for data in datas:
            if isinstance(data, DataError) or data.is_cuda:  # an error, or already (3, H, W) on the GPU
                out.append(data)
                continue
            with self.clock.device("upload", self.streams.h2d):
                out.append(self.streams.upload(data).permute(2, 0, 1))
        return out

    def _decode_jpegs(self, datas: list[bytes], items: list[Item]) -> list[torch.Tensor | DataError]:
        """nvJPEG for the whole list; when it fails (one bad file fails the call) file by file, and the CPU
        reading rule for the files nvJPEG refuses (CMYK, some progressive JPEGs, corrupt ones)."""
        try:
            return list(self.jpeg.decode(datas, self.streams.compute))
        except RuntimeError:
            pass
        out: list[torch.Tensor | DataError] = []
        for data, item in zip(datas, items, strict=True):
            try:
                out.append(self.jpeg.decode([data], self.streams.compute)[0])
            except RuntimeError:
                try:
                    out.append(decode_to_tensor(item.source, pin=True))
                except DataError as exc:
                    out.append(exc)
        return out

    # ---- write (thread pool) --------------------------------------------------------------------------------
    def _write(self, item: Item, host: dict[str, torch.Tensor], done: Any) -> str | None:
        if done is not None:
            done.synchronize()
        with self.clock.host("write"):
            mask = host["mask"].numpy()
            multi = self.engine.n_classes > 1
            picture = mask if multi else mask * np.uint8(255)
            write_png(item.mask, picture, self.palette if multi and self.options.palette else None)
            if "prob" in host:
                write_png(item.sibling(".prob.png"), host["prob"].numpy())
            if "overlay" in host:
                write_jpeg(item.sibling(".overlay.jpg"), host["overlay"].numpy())
            return rle_encode(mask) if self.options.rle else None

    def _existing_rle(self, item: Item) -> str:
        with Image.open(item.mask) as img:
            return rle_encode(np.asarray(img.convert("L")) > 127)

    # ---- device work (this thread) --------------------------------------------------------------------------
    def _emit(self, job: Job) -> tuple[dict[str, torch.Tensor], Any]:
        with self.clock.device("compute", self.streams.compute):
            prob = to_size(job.prob, job.extra["size"])
            labels = to_labels(prob, float(self.meta["threshold"]))
            out = {"mask": labels}
            if self.options.save_prob:
                out["prob"] = confidence(prob)
            if self.options.overlay:
                out["overlay"] = overlay(job.extra["pixels"], labels, self.engine.n_classes,
                                         self.meta.get("mask_kind", "binary"))  # fmt: skip
        if self.streams.cuda:  # outside the timed span, so waiting for compute is not counted as download
            self.streams.d2h.wait_stream(self.streams.compute)
        with self.clock.device("download", self.streams.d2h):
            return self.streams.download(out)

    def run(self, items: list[Item]) -> RunSummary:
        """Process `items` (a Pipeline runs once); masks already written are kept whatever happens."""
        o = self.options
        self.summary = summary = RunSummary(settings=self.settings())
        todo = [it for it in items if not (o.resume and it.mask.exists())]
        resumed = [it for it in items if o.resume and it.mask.exists()]
        summary.images, summary.skipped = len(items), len(resumed)
        window = max(2 * o.batch, 2 * o.workers, 4)  # images in flight per stage: memory stays flat
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            self._decoders = stack.enter_context(ThreadPoolExecutor(o.workers, thread_name_prefix="decode"))
            self._writers = stack.enter_context(ThreadPoolExecutor(o.workers, thread_name_prefix="write"))
            # Runs first on the way out (Ctrl-C, an error): drop queued work, let running writes finish.
            stack.callback(self._decoders.shutdown, cancel_futures=True)
            stack.callback(self._writers.shutdown, cancel_futures=True)
            self._bar = stack.enter_context(tqdm(total=len(items), unit="img", disable=not o.progress))
            self._bar.update(len(resumed))
            self._rle = stack.enter_context(self._rle_file()) if o.rle else None
            self._writes: deque[tuple[Item, bool, Future]] = deque()
            if self._rle is not None:  # rows for resumed images come first; the CSV order does not matter
                self._writes.extend((it, True, self._writers.submit(self._existing_rle, it)) for it in resumed)
            reads: deque[tuple[Item, Future]] = deque()
            with self.streams.computing():
                for item in todo:
                    reads.append((item, self._decoders.submit(self._read, item)))
                    if len(reads) >= window:
                        self._advance(reads)
                        self._collect(window)
                while reads:
                    self._advance(reads)
                    self._collect(window)
                for job in self.runner.flush():
                    self._queue_write(job)
            self._collect(0)
            self.clock.settle(wait=True)
        summary.seconds = time.perf_counter() - start
        summary.stages = dict(self.clock.seconds)
        return summary

    def _advance(self, reads: deque[tuple[Item, Future]]) -> None:
        """The oldest batch of reads onto the device (JPEGs decoded together) and into the runner."""
        group = [reads.popleft() for _ in range(min(self.options.batch, len(reads)))]
        for (item, _), pixels in zip(group, self._pixels(group), strict=True):
            if isinstance(pixels, DataError):
                self.summary.failures.append((str(item.source), str(pixels).split(": ", 1)[-1]))
                log.warning("warning: skipped %s", pixels)
            else:
                self._step(item, pixels)

    def _step(self, item: Item, pixels: torch.Tensor) -> None:
        """One image's pixels on the device into the runner; finished images go to the writers."""
        with self.clock.device("compute", self.streams.compute):
            job = Job(item, model_input(pixels, self.meta, self.engine.input_dtype), {"size": tuple(pixels.shape[-2:])})
            if self.options.overlay:
                job.extra["pixels"] = pixels
        try:
            with self.clock.device("compute", self.streams.compute):
                finished = self.runner.push(job)
        except EngineShapeError as exc:  # this image is outside a TensorRT profile: it fails, the others go on
            self.summary.failures.append((str(item.source), str(exc)))
            log.warning("warning: skipped %s: %s", item.source, exc)
            return
        for done in finished:
            self._queue_write(done)

    def _queue_write(self, job: Job) -> None:
        host, done = self._emit(job)
        self._writes.append((job.key, False, self._writers.submit(self._write, job.key, host, done)))

    def _collect(self, limit: int) -> None:
        """Wait for the oldest writes until at most `limit` are in flight; count them and write RLE rows."""
        while len(self._writes) > limit:
            item, resumed, future = self._writes.popleft()
            try:
                row = future.result()
            except (OSError, DataError) as exc:
                self.summary.failures.append((str(item.source), str(exc)))
                log.warning("warning: could not write %s: %s", item.mask, exc)
                continue
            if not resumed:
                self.summary.written += 1
                self._bar.update()
            if self._rle is not None:
                self._rle.write(f"{item.relative.as_posix()},{row}\n")

    @contextlib.contextmanager
    def _rle_file(self) -> Iterator[Any]:
        with atomic_path(self.options.rle) as tmp, open(tmp, "w") as f:
            f.write("img,rle_mask\n")
            yield f

    def settings(self) -> dict[str, Any]:
        o = self.options
        return {
            "engine": self.engine.label,
            "device": str(self.engine.device),
            "tile": o.tile,
            "overlap": self.runner.overlap,
            "blend": o.blend,
            "batch": o.batch,
            "decoder": "nvjpeg" if self.jpeg is not None else "cpu (PIL)",
            "workers": o.workers,
        }
