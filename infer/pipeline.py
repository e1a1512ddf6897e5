"""The unet-infer pipeline: decode -> upload -> preprocess -> infer -> stitch -> labels -> download -> write.

Decoding and writing run on thread pools; the device work is queued from one thread. On CUDA the host only
ever waits for the oldest image's download before handing it to a writer (see `streams`), so while one
batch computes the next is uploading and the previous is downloading and being written. Bounded windows of
in-flight decodes and writes keep memory flat however many images there are. JPEGs are decoded on the GPU
a batch per call where nvJPEG is usable. One bad image is named, skipped and listed at the end. Mask
post-processing (--keep-largest ...) runs on the host, on the writer threads.

A `Pipeline` holds what does not change between runs (engine, settings, streams, runner); each `run` makes
one `_FolderRun` that holds everything the run changes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from unetkit.core.errors import DataError, OutputError, UnetkitError
from unetkit.core.labels import to_labels
from unetkit.core.outputs import write_error_repeats
from unetkit.core.preprocess import model_input

from .batching import BatchRunner, Job
from .engines import Engine, EngineShapeError
from .io import JPEG_EXTENSIONS, Item, decode_to_tensor
from .nvjpeg import GpuJpegDecoder, cpu_decode_reason
from .settings import InferSettings, OutputOptions
from .streams import StageClock, Streams
from .transforms import confidence, overlay, to_size
from .writer import OutputWriter

log = logging.getLogger(__name__)
STAGES = ("decode", "upload", "compute", "download", "write")


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
        mode += ", mirrored TTA" if s.get("tta") else ""
        mode += f", post-processing {s['postprocess']}" if s.get("postprocess") else ""
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


class Pipeline:
    """Folder runs with one engine and one set of settings; see the module docstring."""

    def __init__(self, engine: Engine, settings: InferSettings, outputs: OutputOptions) -> None:
        self.engine, self.meta = engine, engine.meta
        self.settings = settings.for_device(engine.device.type)
        self.outputs = outputs
        if outputs.rle and engine.n_classes != 1:
            raise UnetkitError("--rle writes Carvana's binary format; this model has several classes")
        if self.settings.decoder == "nvjpeg" and engine.device.type != "cuda":
            raise UnetkitError("--decoder nvjpeg: the engine does not run on CUDA")
        engine.check_batch(self.settings.batch_size)  # a TensorRT profile must take the batch: one line, before work
        if engine.shapes is not None and self.settings.tile:  # and the tile; whole images are checked one by one
            engine.check((self.settings.batch_size, engine.meta.in_channels, self.settings.tile, self.settings.tile))
        self.streams = Streams(engine.device)
        self.writer = OutputWriter(self.meta, outputs, self.settings.postprocess)

    def jpeg_decoder(self) -> GpuJpegDecoder | None:
        """nvJPEG when the settings allow it and a probe decode works here; None means Pillow decodes."""
        if self.settings.decoder == "cpu":
            return None
        reason = GpuJpegDecoder.unavailable(self.engine.device)
        if reason and self.settings.decoder == "nvjpeg":
            raise UnetkitError(f"--decoder nvjpeg: {reason}")
        return None if reason else GpuJpegDecoder(self.engine.device)

    def run(self, items: list[Item]) -> RunSummary:
        """Process `items`; masks already written are kept whatever happens."""
        return _FolderRun(self, items).execute()


class _FolderRun:
    """Everything one run changes: its summary, pools, progress bar, CSV, runner and in-flight work."""

    def __init__(self, pipeline: Pipeline, items: list[Item]) -> None:
        self.p = pipeline
        self.items = items
        self.clock = StageClock(pipeline.streams.cuda)
        self.runner = BatchRunner.for_engine(pipeline.engine, pipeline.settings)
        self.jpeg = pipeline.jpeg_decoder()
        self.summary = RunSummary(settings=self.describe())
        self.writes: deque[tuple[Item, bool, Future]] = deque()
        self.rle: Any = None

    def describe(self) -> dict[str, Any]:
        s = self.p.settings
        return {
            "engine": self.p.engine.label,
            "device": str(self.p.engine.device),
            "tile": s.tile,
            "overlap": s.tile_overlap,
            "blend": s.blend,
            "tta": s.tta,
            "postprocess": s.postprocess.flags(),
            "batch": s.batch,
            "decoder": "nvjpeg" if self.jpeg is not None else "cpu (PIL)",
            "workers": s.workers,
        }

    def execute(self) -> RunSummary:
        s, outputs = self.p.settings, self.p.outputs
        finished = {it for it in self.items if outputs.resume and self.p.writer.finished(it)}
        done = [it for it in self.items if it in finished]
        todo = [it for it in self.items if it not in finished]
        self.summary.images, self.summary.skipped = len(self.items), len(done)
        window = max(2 * s.batch_size, 2 * s.workers, 4)  # images in flight per stage: memory stays flat
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())  # this thread queues all device work; no autograd records
            decoders = stack.enter_context(ThreadPoolExecutor(s.workers, thread_name_prefix="decode"))
            self.writers = stack.enter_context(ThreadPoolExecutor(s.workers, thread_name_prefix="write"))
            # Runs first on the way out (Ctrl-C, an error): drop queued work, let running writes finish.
            stack.callback(decoders.shutdown, cancel_futures=True)
            stack.callback(self.writers.shutdown, cancel_futures=True)
            self.bar = stack.enter_context(tqdm(total=len(self.items), unit="img", disable=not outputs.progress))
            self.bar.update(len(done))
            self.rle = stack.enter_context(self.p.writer.rle_file())
            if self.rle is not None:  # rows for resumed images come first; the CSV order does not matter
                self.writes.extend((it, True, self.writers.submit(self.p.writer.existing_rle, it)) for it in done)
            reads: deque[tuple[Item, Future]] = deque()
            with self.p.streams.computing():
                for item in todo:
                    reads.append((item, decoders.submit(self.read, item)))
                    if len(reads) >= window:
                        self.advance(reads)
                        self.collect(window)
                while reads:
                    self.advance(reads)
                    self.collect(window)
                for job in self.runner.flush():
                    self.queue_write(job)
            self.collect(0)
            self.clock.settle(wait=True)
        self.summary.seconds = time.perf_counter() - start
        self.summary.stages = dict(self.clock.seconds)
        return self.summary

    # ---- decode (thread pool) -------------------------------------------------------------------------------
    def read(self, item: Item) -> torch.Tensor | bytes:
        """Worker thread: JPEG bytes for the GPU decoder, else pixels decoded by the CPU reading rule."""
        with self.clock.host("decode"):
            if self.jpeg is not None and item.source.suffix.lower() in JPEG_EXTENSIONS:
                try:
                    data = item.source.read_bytes()
                except OSError as exc:
                    raise DataError(f"{item.source}: cannot read image ({exc.strerror or exc})") from None
                if data and not cpu_decode_reason(data):  # an empty file goes to the CPU rule, which names it
                    return data
            return decode_to_tensor(item.source, pin=self.p.streams.cuda)

    def pixels(self, group: list[tuple[Item, Future]]) -> list[torch.Tensor | DataError]:
        """Each read of `group` as uint8 (3, H, W) on the device, ready for the compute stream, or the DataError
        that image raised. The group's JPEG bytes are decoded on the GPU in one call."""
        datas: list[Any] = []
        for _, future in group:
            try:
                datas.append(future.result())
            except DataError as exc:
                datas.append(exc)
        jpegs = [i for i, d in enumerate(datas) if isinstance(d, bytes)]
        if jpegs:
            with self.clock.host("decode"):  # the decoder blocks the host until its stream is done
                decoded = self.decode_jpegs([datas[i] for i in jpegs], [group[i][0] for i in jpegs])
            for i, image in zip(jpegs, decoded, strict=True):
                datas[i] = image
        out: list[torch.Tensor | DataError] = []
        for data in datas:
            if isinstance(data, DataError) or data.is_cuda:  # an error, or already (3, H, W) on the GPU
                out.append(data)
                continue
            with self.clock.device("upload", self.p.streams.h2d):
                out.append(self.p.streams.upload(data).permute(2, 0, 1))
        return out

    def decode_jpegs(self, datas: list[bytes], items: list[Item]) -> list[torch.Tensor | DataError]:
        """nvJPEG for the whole list; when it fails (one bad file fails the call) file by file, and the CPU
        reading rule for the files nvJPEG refuses (CMYK, some progressive JPEGs, corrupt ones)."""
        compute = self.p.streams.compute
        assert self.jpeg is not None and compute is not None  # nvJPEG runs only on CUDA
        try:
            return list(self.jpeg.decode(datas, compute))
        except (RuntimeError, ValueError):  # torchvision raises RuntimeError; torch.frombuffer ValueError
            pass
        out: list[torch.Tensor | DataError] = []
        for data, item in zip(datas, items, strict=True):
            try:
                out.append(self.jpeg.decode([data], compute)[0])
            except (RuntimeError, ValueError):
                try:
                    out.append(decode_to_tensor(item.source, pin=True))
                except DataError as exc:
                    out.append(exc)
        return out

    # ---- device work (this thread) --------------------------------------------------------------------------
    def advance(self, reads: deque[tuple[Item, Future]]) -> None:
        """The oldest batch of reads onto the device (JPEGs decoded together) and into the runner."""
        group = [reads.popleft() for _ in range(min(self.p.settings.batch_size, len(reads)))]
        for (item, _), pixels in zip(group, self.pixels(group), strict=True):
            if isinstance(pixels, DataError):
                self.fail(item, str(pixels).split(": ", 1)[-1], f"skipped {pixels}")
            else:
                self.step(item, pixels)

    def step(self, item: Item, pixels: torch.Tensor) -> None:
        """One image's pixels on the device into the runner; finished images go to the writers."""
        engine, compute = self.p.engine, self.p.streams.compute
        with self.clock.device("compute", compute):
            job = Job(item, model_input(pixels, self.p.meta, engine.input_dtype), {"size": tuple(pixels.shape[-2:])})
            if self.p.outputs.overlay:
                job.extra["pixels"] = pixels
        try:
            with self.clock.device("compute", compute):
                finished = self.runner.push(job)
        except EngineShapeError as exc:  # this image is outside a TensorRT profile: it fails, the others go on
            self.fail(item, str(exc), f"skipped {item.source}: {exc}")
            return
        for done in finished:
            self.queue_write(done)

    def emit(self, job: Job) -> tuple[dict[str, torch.Tensor], Any]:
        """Probabilities -> the original size, labels and the pictures asked for; then the download."""
        meta, streams = self.p.meta, self.p.streams
        assert job.prob is not None  # the runner hands back finished jobs only
        with self.clock.device("compute", streams.compute):
            prob = to_size(job.prob, job.extra["size"])
            labels = to_labels(prob, meta.threshold)
            out = {"mask": labels}
            if self.p.outputs.save_prob:
                out["prob"] = confidence(prob)
            if self.p.outputs.overlay and self.p.settings.postprocess.active:
                out["pixels"] = job.extra["pixels"]  # the writer draws the post-processed mask over them
            elif self.p.outputs.overlay:
                out["overlay"] = overlay(job.extra["pixels"], labels, meta.n_classes, meta.mask_kind)
        streams.after_compute()  # outside the timed span, so waiting for compute is not counted as download
        with self.clock.device("download", streams.d2h):
            return streams.download(out)

    # ---- write (thread pool) --------------------------------------------------------------------------------
    def queue_write(self, job: Job) -> None:
        host, done = self.emit(job)
        self.writes.append((job.key, False, self.writers.submit(self.write, job.key, host, done)))

    def write(self, item: Item, host: dict[str, torch.Tensor], done: Any) -> str | None:
        if done is not None:
            done.synchronize()  # outside the timed span: waiting for the download is not writing
        with self.clock.host("write"):
            return self.p.writer.write(item, host, None)

    def collect(self, limit: int) -> None:
        """Wait for the oldest writes until at most `limit` are in flight; count them and write CSV rows."""
        while len(self.writes) > limit:
            item, resumed, future = self.writes.popleft()
            try:
                row = future.result()
            except (OSError, DataError) as exc:
                if write_error_repeats(exc):  # disk full or read-only: every later image would fail the same way
                    raise self.stopped(item, exc) from None
                self.fail(item, str(exc), f"could not write {item.mask}: {exc}")
                continue
            if not resumed:
                self.summary.written += 1
                self.bar.update()
            if self.rle is not None:
                self.rle.writerow([item.relative.as_posix(), row])

    def stopped(self, item: Item, exc: BaseException) -> OutputError:
        """The one line a run ends with when a write fails in a way that will repeat."""
        assert isinstance(exc, OSError)
        todo = self.summary.images - self.summary.skipped
        return OutputError(
            f"{exc.filename or item.mask}: {exc.strerror}; stopped after {self.summary.written} of {todo} images "
            "(every file written is complete): free space, then run again with --resume"
        )

    def fail(self, item: Item, why: str, warning: str) -> None:
        self.summary.failures.append((str(item.source), why))
        log.warning("warning: %s", warning)
