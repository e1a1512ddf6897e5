"""A Carvana-like synthetic data set, so every command can be tried without a download.

Images are side views of car-like shapes of five body styles (sedan, hatchback, estate/SUV, pickup, coupe:
body, cabin with windows, wheels, bumpers, an optional stripe or two-tone paint) with vertical shading, a
highlight, a soft shadow and sensor noise, on a studio backdrop (wall/floor gradient, blotches, stripes, a
prop or two behind the car) whose colours vary. Masks cover the car's silhouette. Files use Kaggle's naming:
train/<id>_<view>.jpg and train_masks/<id>_<view>_mask.gif, 16 views per car by default (`views`): the views
of one car share its shape and paint, so a split must keep them together. The same seed always gives the
same files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from unetkit.core.cli import parse_pair
from unetkit.core.errors import DataError
from unetkit.core.imageio import readable_pixels, save_image

VIEWS_PER_CAR = 16
# Common car paints: white, silver, black, grey, red, blue; every other car has any colour at all.
PAINTS = np.array(
    [[235, 235, 232], [190, 192, 196], [28, 28, 32], [110, 112, 118], [170, 25, 30], [30, 60, 140]], dtype=np.float32
)
#: Body styles: (cabin start, cabin end) along the body, cabin height, body height, as ranges.
STYLES = {
    "sedan": ((0.18, 0.32), (0.40, 0.55), (0.6, 0.9), (0.16, 0.22)),
    "hatchback": ((0.20, 0.30), (0.62, 0.72), (0.7, 1.0), (0.17, 0.23)),
    "estate": ((0.15, 0.25), (0.70, 0.80), (0.8, 1.15), (0.19, 0.26)),
    "pickup": ((0.12, 0.22), (0.25, 0.35), (0.8, 1.1), (0.18, 0.24)),
    "coupe": ((0.25, 0.35), (0.38, 0.48), (0.45, 0.7), (0.14, 0.19)),
}


@dataclass(frozen=True)
class Car:
    """The shape and paint of one car, shared by its views."""

    paint: tuple[float, float, float]
    length: float  # fraction of the image width
    height: float  # body height, fraction of the length
    cabin: float  # cabin height, fraction of the body height
    cabin_start: float  # where the cabin begins and ends along the body, fractions of the length
    cabin_end: float
    wheel: float  # wheel radius, fraction of the length
    style: str = "sedan"
    rake: float = 0.08  # how far the windscreen and rear window lean, fraction of the length
    roundness: float = 0.35  # corner radius of the body, fraction of its height
    second: tuple[float, float, float] | None = None  # lower body colour of a two-tone car, or a stripe's
    stripe: bool = False


def _paint(rng: np.random.Generator) -> tuple[float, float, float]:
    paint = PAINTS[rng.integers(len(PAINTS))] if rng.random() < 0.5 else rng.uniform(15, 240, 3)
    return float(paint[0]), float(paint[1]), float(paint[2])


def random_car(rng: np.random.Generator) -> Car:
    style = str(rng.choice(list(STYLES)))
    (s0, s1), (e0, e1), (c0, c1), (h0, h1) = STYLES[style]
    start = rng.uniform(s0, s1)
    paint = _paint(rng)
    accent = rng.random()
    return Car(
        paint=paint,
        length=float(rng.uniform(0.5, 0.8)),
        height=float(rng.uniform(h0, h1)),
        cabin=float(rng.uniform(c0, c1)),
        cabin_start=float(start),
        cabin_end=float(start + rng.uniform(e0, e1)),
        wheel=float(rng.uniform(0.07, 0.1)),
        style=style,
        rake=float(rng.uniform(0.04, 0.13)),
        roundness=float(rng.uniform(0.15, 0.5)),
        second=_paint(rng) if accent < 0.3 else None,
        stripe=bool(accent < 0.12),
    )


def _backdrop(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Wall-to-floor gradient with soft blotches and a few stripes, float32 (h, w, 3)."""
    # Studio colours: a grey level plus a muted tint.
    wall = rng.uniform(70, 220) + rng.uniform(-35, 35, 3)
    floor = rng.uniform(40, 190) + rng.uniform(-30, 30, 3)
    horizon = rng.uniform(0.45, 0.7)
    t = np.clip((np.arange(h, dtype=np.float32) / h - horizon) * 6 + 0.5, 0, 1)[:, None, None]
    img = wall * (1 - t) + floor * t + np.zeros((1, w, 1), np.float32)
    # Low-frequency blotches: upsampled coarse noise.
    coarse = (rng.normal(0, 10, (6, 9, 1)) + rng.normal(0, 4, (6, 9, 3))).astype(np.float32)
    blotch = np.asarray(
        Image.fromarray(np.uint8(np.clip(coarse + 128, 0, 255))).resize((w, h), Image.Resampling.BICUBIC)
    )
    img += blotch.astype(np.float32) - 128
    for _ in range(rng.integers(0, 4)):  # wall panels or floor markings
        x0 = int(rng.uniform(0, w))
        img[:, x0 : x0 + max(1, int(w * rng.uniform(0.005, 0.03)))] += rng.uniform(-40, 40)
    for _ in range(rng.integers(0, 3)):  # props behind the car, in car-like colours: colour alone is no cue
        prop = Image.new("L", (w, h))
        cx, cy, rx, ry = (
            rng.uniform(0, w),
            rng.uniform(0.1 * h, 0.7 * h),
            rng.uniform(0.03, 0.15) * w,
            rng.uniform(0.03, 0.2) * h,
        )
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        draw = ImageDraw.Draw(prop)
        draw.ellipse(box, fill=255) if rng.random() < 0.5 else draw.rounded_rectangle(
            box, radius=int(ry * 0.3), fill=255
        )
        img[np.asarray(prop) > 0] = np.array(_paint(rng), np.float32) * rng.uniform(0.7, 1.0)
    return img


def _draw_car(car: Car, rng: np.random.Generator, w: int, h: int) -> dict[str, np.ndarray]:
    """Silhouette, windows, wheels, bumpers and lower-body masks of one view, as bool (h, w) arrays."""
    length = car.length * w * rng.uniform(0.92, 1.05)
    body_h, wheel_r = car.height * length, car.wheel * length
    x0 = rng.uniform(0.04 * w, w - length - 0.04 * w)
    ground = h * rng.uniform(0.72, 0.86)
    top = ground - wheel_r * 0.6 - body_h
    cab_top = top - car.cabin * body_h
    flip = rng.random() < 0.5

    def x(frac: float) -> float:  # position along the car, mirrored for the other side
        return x0 + (1 - frac if flip else frac) * length

    layers = {name: Image.new("L", (w, h)) for name in ("silhouette", "windows", "wheels", "bumpers", "lower")}
    d = ImageDraw.Draw(layers["silhouette"])
    bottom = ground - wheel_r * 0.6
    d.rounded_rectangle([x0, top, x0 + length, bottom], radius=int(body_h * car.roundness), fill=255)
    rake = min(car.rake, (car.cabin_end - car.cabin_start) / 4)
    cabin = [(x(car.cabin_start), top + 1), (x(car.cabin_start + rake), cab_top),
             (x(car.cabin_end - rake * 1.4), cab_top), (x(car.cabin_end), top + 1)]  # fmt: skip
    d.polygon(cabin, fill=255)
    inset = 0.12 * (top - cab_top)
    ImageDraw.Draw(layers["windows"]).polygon(
        [(x(car.cabin_start + rake * 0.4), top - inset), (x(car.cabin_start + rake * 1.1), cab_top + inset),
         (x(car.cabin_end - rake * 1.5), cab_top + inset), (x(car.cabin_end - rake * 0.25), top - inset)],
        fill=255,
    )  # fmt: skip
    band = bottom - body_h * 0.3
    for end in (0.0, 0.94):  # bumpers, darker than the paint
        xa, xb = sorted((x(end), x(end + 0.06)))
        ImageDraw.Draw(layers["bumpers"]).rectangle([xa, band, xb, bottom - body_h * 0.1], fill=255)
    lower = (top + body_h * 0.45, top + body_h * 0.58) if car.stripe else (top + body_h * 0.55, bottom)
    ImageDraw.Draw(layers["lower"]).rectangle([x0, lower[0], x0 + length, lower[1]], fill=255)
    for frac in (0.18, 0.82):
        cx, cy = x(frac), ground - wheel_r
        box = [cx - wheel_r, cy - wheel_r, cx + wheel_r, cy + wheel_r]
        d.ellipse(box, fill=255)
        ImageDraw.Draw(layers["wheels"]).ellipse(box, fill=255)
    masks = {name: np.asarray(layer) > 0 for name, layer in layers.items()}
    masks["lower"] &= masks["silhouette"] & ~masks["wheels"]
    masks["bumpers"] &= masks["silhouette"] & ~masks["wheels"]
    return masks


def render(car: Car, rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """One view: uint8 RGB image (h, w, 3) and uint8 mask (h, w) with 0/255."""
    img = _backdrop(rng, w, h)
    parts = _draw_car(car, rng, w, h)
    silhouette, windows, wheels = parts["silhouette"], parts["windows"], parts["wheels"]
    ys, xs = np.nonzero(silhouette)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # Soft shadow on the floor, outside the mask.
    shadow = Image.new("L", (w, h))
    ImageDraw.Draw(shadow).ellipse([x0 - 0.03 * w, y1 - 0.03 * h, x1 + 0.03 * w, y1 + 0.02 * h], fill=255)
    shadow_a = np.asarray(shadow.filter(ImageFilter.GaussianBlur(max(1.0, 0.01 * w)))).astype(np.float32) / 255
    img *= 1 - 0.45 * shadow_a[:, :, None]
    # Paint with vertical shading and a horizontal highlight band.
    rows = (np.arange(h, dtype=np.float32)[:, None] - y0) / max(y1 - y0, 1)
    shade = 1.15 - 0.5 * rows + 0.35 * np.exp(-(((rows - 0.45) / 0.06) ** 2))
    body = np.array(car.paint, np.float32) * shade[:, :, None] + 12 * shade[:, :, None]
    img = np.where(silhouette[:, :, None], np.broadcast_to(body, img.shape), img)
    if car.second is not None:
        second = np.array(car.second, np.float32) * shade[:, :, None] + 12 * shade[:, :, None]
        img = np.where(parts["lower"][:, :, None], np.broadcast_to(second, img.shape), img)
    img[parts["bumpers"]] = img[parts["bumpers"]] * 0.45 + 15
    img[windows] = img[windows] * 0.25 + np.array([20, 28, 38], np.float32)
    img[wheels] = np.array([22, 22, 24], np.float32)
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    mask = np.where(silhouette, 255, 0).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8), mask


#: The largest side drawn: 8x Carvana's width, far beyond any segmentation data set's images.
MAX_SIDE = 16384
#: Memory one image takes while it is drawn (float32 layers, masks, noise), measured: about 73 bytes a pixel.
BYTES_PER_PIXEL = 80


def parse_size(text: str) -> tuple[int, int]:
    """'1918x1280' -> (1918, 1280): width then height."""
    try:
        w, h = parse_pair(text)
    except ValueError:
        raise ValueError(f"size '{text}' is not WIDTHxHEIGHT, e.g. 1918x1280") from None
    if w < 16 or h < 16:
        raise ValueError(f"size '{text}' is too small; use at least 16x16")
    if max(w, h) > MAX_SIDE:
        raise ValueError(f"size '{text}' is too large; each side at most {MAX_SIDE} (drawing a {w}x{h} image "
                         f"takes about {drawing_bytes(w, h) / 1e9:.0f} GB of memory)")  # fmt: skip
    most = readable_pixels()
    if most is not None and w * h > most:
        raise ValueError(f"size '{text}' is {w * h / 1e6:.0f} megapixels, more than the {most / 1e6:.0f} an image may "
                         "have to be read (Pillow's decompression-bomb limit)")  # fmt: skip
    return w, h


def drawing_bytes(width: int, height: int) -> int:
    """Memory needed to draw one image of this size."""
    return BYTES_PER_PIXEL * width * height


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable: free plus reclaimable cache; else free pages), None
    where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def write_synthetic(
    out: str | os.PathLike,
    n: int,
    size: tuple[int, int] = (1918, 1280),
    seed: int = 0,
    progress: bool = True,
    views: int = VIEWS_PER_CAR,
) -> list[Path]:
    """Write `n` image/mask pairs under `out` (train/ and train_masks/), `views` per car; returns the image
    paths.

    A size that cannot be drawn in the memory available now is a DataError before anything is written.
    """
    out = Path(out)
    w, h = size
    need, have = drawing_bytes(w, h), available_memory()
    if have is not None and need > have:
        raise DataError(f"size {w}x{h}: drawing one image needs about {need / 1e9:.1f} GB of memory, "
                        f"{have / 1e9:.1f} GB is available; choose a smaller size")  # fmt: skip
    written = []
    rng_ids = np.random.default_rng(seed)
    car_id, car = "", random_car(np.random.default_rng([seed, 0]))
    for i in tqdm(range(n), desc="synthesizing", unit="img", disable=not progress):
        view = i % views
        if view == 0:
            car_id = "".join(f"{b:02x}" for b in rng_ids.integers(0, 256, 6))
            car = random_car(np.random.default_rng([seed, i]))
        try:
            image, mask = render(car, np.random.default_rng([seed, i, 1]), w, h)
        except MemoryError:
            raise DataError(f"size {w}x{h}: out of memory drawing image {i + 1}; choose a smaller size") from None
        name = f"{car_id}_{view + 1:02d}"
        img_path = out / "train" / f"{name}.jpg"
        save_image(img_path, Image.fromarray(image), "JPEG", quality=90)
        save_image(out / "train_masks" / f"{name}_mask.gif", Image.fromarray(mask), "GIF")
        written.append(img_path)
    return written
