"""Segment an image with a unetkit model served by Triton Inference Server, over HTTP.

    pip install "tritonclient[http]" pillow numpy
    python triton_client.py car.jpg car_mask.png --url localhost:8000 --model unet_onnx

It needs neither unetkit nor PyTorch: the model's resize rule, normalization and threshold come from the
`unetkit_meta` parameter `unet-export --triton` writes into its config.pbtxt, so the image is prepared and
the mask decided as unetkit does (pixels within one 8-bit level of unetkit's resize, the same threshold).
Whole images only; unet-infer's tiling is not repeated here.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps


def unetkit_meta(config: dict[str, Any]) -> dict[str, Any]:
    """The ModelMeta (as a dict) from a model config as Triton returns it (get_model_config)."""
    return json.loads(config["parameters"]["unetkit_meta"]["string_value"])


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 (H, W, 3) by unetkit's reading rule: EXIF orientation applied, gray to RGB, alpha dropped,
    16-bit scaled to 8."""
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float32) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def input_size(height: int, width: int, meta: dict[str, Any]) -> tuple[int, int]:
    """The model input's (height, width) for an image of this size, by the model's resize rule (unetkit's
    ResizeRule): `scale` both sides, a fixed `input_size`, or the longer side to `max_side`."""
    rule = meta.get("resize", "scale")
    if rule == "size":
        return int(meta["input_size"][0]), int(meta["input_size"][1])
    factor = meta["scale"] if rule == "scale" else meta["max_side"] / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def preprocess(rgb: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, h, w): resized by the model's rule (antialiased bilinear, back to 8 bit)
    and normalized by its mean and std."""
    height, width = rgb.shape[:2]
    size = input_size(height, width, meta)
    if size != (height, width):
        rgb = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    mean = np.asarray(meta["mean"], dtype=np.float32).reshape(3, 1, 1) * 255.0
    std = np.asarray(meta["std"], dtype=np.float32).reshape(3, 1, 1) * 255.0
    return ((rgb.transpose(2, 0, 1).astype(np.float32) - mean) / std).astype(np.float32)


def resize_bilinear(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 (C, h, w) -> (C, H, W), bilinear with pixel centres aligned (align_corners=False)."""
    out = values.astype(np.float32)
    for axis, target in ((1, size[0]), (2, size[1])):
        n = out.shape[axis]
        if n == target:
            continue
        scale = np.float32(n) / np.float32(target)  # in float32, as PyTorch computes it for float tensors
        src = np.maximum((np.arange(target, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
        low = np.minimum(src.astype(np.int64), n - 1)
        high = np.minimum(low + 1, n - 1)
        weight = (src - low).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = target
        weight = weight.reshape(shape)
        out = np.take(out, low, axis=axis) * (1 - weight) + np.take(out, high, axis=axis) * weight
    return out


def postprocess(logits: np.ndarray, meta: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    """float (C, h, w) logits -> uint8 (H, W) labels at the image's size: probabilities (sigmoid for one
    channel, softmax otherwise) resized, then the model's threshold or the most probable class."""
    logits = logits.astype(np.float32)
    if logits.shape[0] == 1:
        prob = 1.0 / (1.0 + np.exp(-logits))
    else:
        e = np.exp(logits - logits.max(axis=0, keepdims=True))
        prob = e / e.sum(axis=0, keepdims=True)
    prob = resize_bilinear(prob, size)
    if prob.shape[0] == 1:
        return (prob[0] > meta["threshold"]).astype(np.uint8)
    return prob.argmax(axis=0).astype(np.uint8)


def segment(
    image: str | Path, url: str = "localhost:8000", model: str = "unet_onnx"
) -> tuple[np.ndarray, dict[str, Any]]:
    """One image through the served model: the (H, W) mask (0/1 for binary models, class indices otherwise)
    and the model's unetkit meta."""
    rgb = read_rgb(image)  # a missing or unreadable image fails before the server is asked
    try:
        import tritonclient.http as httpclient
    except (ImportError, RuntimeError) as exc:  # RuntimeError: tritonclient without its [http] extra
        raise RuntimeError(f'needs tritonclient with HTTP support: pip install "tritonclient[http]" ({exc})') from None

    client = httpclient.InferenceServerClient(url=url)  # host:port, no scheme
    config = client.get_model_config(model)
    meta = unetkit_meta(config)
    x = preprocess(rgb, meta)[None]
    spec_in, spec_out = config["input"][0], config["output"][0]
    datatype = spec_in["data_type"].removeprefix("TYPE_")  # FP32: unetkit's graphs take FP32 even in FP16
    request = httpclient.InferInput(spec_in["name"], list(x.shape), datatype)
    request.set_data_from_numpy(x.astype(np.float16 if datatype == "FP16" else np.float32), binary_data=True)
    wanted = httpclient.InferRequestedOutput(spec_out["name"], binary_data=True)
    result = client.infer(model, inputs=[request], outputs=[wanted])
    return postprocess(result.as_numpy(spec_out["name"])[0], meta, rgb.shape[:2]), meta


def main() -> None:
    p = argparse.ArgumentParser(description="Segment an image with a unetkit model served by Triton (HTTP).")
    p.add_argument("image", type=Path)
    p.add_argument("mask", type=Path, help="PNG to write: 0/255 for binary models, class indices otherwise")
    p.add_argument("--url", default="localhost:8000", help="Triton's HTTP endpoint, host:port (default %(default)s)")
    p.add_argument("--model", default="unet_onnx", help="model name in the repository (default %(default)s)")
    args = p.parse_args()
    try:
        mask, meta = segment(args.image, args.url, args.model)
    except Exception as exc:  # unreadable image, no server, no such model, missing package: one line
        raise SystemExit(f"triton_client: error: {exc}") from None
    tmp = args.mask.with_name(f".{args.mask.name}.tmp")  # written whole, then renamed: never half a PNG
    Image.fromarray(mask * np.uint8(255) if meta["n_classes"] == 1 else mask).save(tmp, format="PNG")
    os.replace(tmp, args.mask)
    print(f"{args.mask}: {mask.shape[1]}x{mask.shape[0]}, {int((mask > 0).sum())} foreground pixels")


if __name__ == "__main__":
    main()
