"""GPU JPEG decoding with torchvision's nvJPEG decoder: a batch of files per call, safe for a pipeline that
runs ahead.

torchvision decodes a list of JPEGs in one call from 0.20 on (one host wait per batch instead of one per
image: each call synchronises its own decoding stream before returning). It allocates the decoded images
on the caller's current stream but writes them from a stream of its own, without waiting for the caller's
queued work; if the caller's stream still has kernels reading a freed block, the decode can overwrite it
(pytorch/vision PR #9606). So decoding happens under a stream that runs nothing else, and the consumer
stream waits for it. One bad file fails the whole call, so a failed batch is decoded again file by file.
nvJPEG ignores EXIF orientation on CUDA and gets CMYK colours wrong, so such images are left to the CPU
decoder, which reads them as training did.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

import torch
from PIL import Image

#: The first torchvision whose decode_jpeg takes a list of JPEGs on CUDA (release notes, PR #8496).
BATCHED_SINCE = (0, 20)


#: torchvision's notice, on every CUDA decode from 0.29 on, that TorchCodec replaces it (a regex; case is ignored).
TORCHCODEC_NOTICE = ".*torchcodec"

#: JPEG colour modes nvJPEG decodes to RGB as the CPU does. torchvision's CUDA decoder has none of the CPU
#: decoder's CMYK/YCCK handling (it always fills three planes), so four-component JPEGs go to the CPU.
NVJPEG_MODES = ("RGB", "L")


def cpu_decode_reason(data: bytes) -> str | None:
    """Why a JPEG must be decoded on the CPU, or None: an EXIF orientation that asks for a rotation or flip
    (nvJPEG ignores it), or a colour mode nvJPEG gets wrong (CMYK, YCCK). Reads the header only."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.getexif().get(0x0112, 1) not in (0, 1):
                return "EXIF rotation"
            if img.mode not in NVJPEG_MODES:
                return f"{img.mode} colours"
    except Exception:  # an unreadable header: let the decoders report it
        return None
    return None


@contextlib.contextmanager
def torchcodec_notice_silenced() -> Iterator[None]:
    """Silence torchvision's TorchCodec notice and nothing else: the filter list is process-wide, so a blanket
    filter would also hide the warnings other threads (decoders, writers) raise meanwhile."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCHCODEC_NOTICE)
        yield


def batched_decode_supported(torchvision_version: str) -> bool:
    """Whether this torchvision decodes a list of JPEGs on the GPU in one call ('0.26.0+cu130' -> True)."""
    try:
        major, minor = (int(p) for p in torchvision_version.split("+")[0].split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= BATCHED_SINCE


class GpuJpegDecoder:
    """decode([bytes, ...], consumer stream) -> [uint8 (3, H, W) on the device, ready for the consumer]."""

    def __init__(self, device: torch.device) -> None:
        import torchvision
        from torchvision.io import ImageReadMode, decode_jpeg

        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.batched = batched_decode_supported(torchvision.__version__)
        self._decode, self._rgb = decode_jpeg, ImageReadMode.RGB

    @staticmethod
    def unavailable(device: torch.device) -> str | None:
        """Why nvJPEG cannot decode here, or None; probed by decoding two tiny JPEGs once."""
        if device.type != "cuda":
            return "the engine does not run on CUDA"
        try:
            buffer = io.BytesIO()
            Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="JPEG")
            decoder = GpuJpegDecoder(device)
            out = decoder.decode([buffer.getvalue()] * 2, torch.cuda.current_stream(device))
            torch.cuda.synchronize(device)
        except Exception as exc:  # no torchvision, no image extension, a build without nvJPEG
            return f"torchvision's GPU JPEG decoder is not usable ({type(exc).__name__}: {exc})"
        return None if [tuple(o.shape) for o in out] == [(3, 16, 16)] * 2 else "nvJPEG gave a wrong shape"

    def decode(self, datas: list[bytes], consumer: torch.cuda.Stream) -> list[torch.Tensor]:
        """Decode every file in one call where torchvision can; raises RuntimeError if any file fails."""
        raws = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        with torch.cuda.stream(self.stream), torchcodec_notice_silenced():
            if self.batched:
                images = self._decode(raws, mode=self._rgb, device=self.device)
            else:
                images = [self._decode(raw, mode=self._rgb, device=self.device) for raw in raws]
        consumer.wait_stream(self.stream)
        for image in images:
            image.record_stream(consumer)
        return list(images)
