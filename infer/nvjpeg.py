"""GPU JPEG decoding with torchvision's nvJPEG decoder, made safe for a pipeline that runs ahead.

torchvision (0.26) allocates the decoded image on the caller's current stream but writes it from a stream
of its own, without waiting for the caller's queued work; if the caller's stream still has kernels reading
a freed block, the decode can overwrite it (pytorch/vision PR #9606). So decoding happens under a stream
that runs nothing else, and the consumer stream waits for it. nvJPEG ignores EXIF orientation on CUDA, so
images that carry a rotation are left to the CPU decoder, which applies it as training did.
"""

from __future__ import annotations

import io

import torch
from PIL import Image


def exif_rotated(data: bytes) -> bool:
    """True when a JPEG's EXIF orientation asks for a rotation or flip (header only, no decoding)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.getexif().get(0x0112, 1) not in (0, 1)
    except Exception:  # an unreadable header: let the decoders report it
        return False


class GpuJpegDecoder:
    """decode(bytes, consumer stream) -> uint8 (3, H, W) on the device, ready for the consumer stream."""

    def __init__(self, device: torch.device) -> None:
        from torchvision.io import ImageReadMode, decode_jpeg

        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._decode, self._rgb = decode_jpeg, ImageReadMode.RGB

    @staticmethod
    def unavailable(device: torch.device) -> str | None:
        """Why nvJPEG cannot decode here, or None; probed by decoding a tiny JPEG once."""
        if device.type != "cuda":
            return "the engine does not run on CUDA"
        try:
            buffer = io.BytesIO()
            Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="JPEG")
            decoder = GpuJpegDecoder(device)
            out = decoder.decode(buffer.getvalue(), torch.cuda.current_stream(device))
            torch.cuda.synchronize(device)
        except Exception as exc:  # no torchvision, no image extension, a build without nvJPEG
            return f"torchvision's GPU JPEG decoder is not usable ({type(exc).__name__}: {exc})"
        return None if tuple(out.shape) == (3, 16, 16) else "torchvision's GPU JPEG decoder gave a wrong shape"

    def decode(self, data: bytes, consumer: torch.cuda.Stream) -> torch.Tensor:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        with torch.cuda.stream(self.stream):
            image = self._decode(raw, mode=self._rgb, device=self.device)
        consumer.wait_stream(self.stream)
        image.record_stream(consumer)
        return image
