"""The documented image-reading rule: EXIF rotation, grayscale, alpha, palette and 16-bit inputs."""

import numpy as np
import pytest
from PIL import Image

from unetkit.core.errors import DataError
from unetkit.core.imageio import image_size, read_image, read_mask


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :5] = 255  # white stripe on the left
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=100)
    out = read_image(path)
    assert out.shape == (20, 10, 3)
    assert image_size(path) == (10, 20)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # the stripe is now at the top


def test_grayscale_is_replicated(tmp_path):
    Image.fromarray(np.full((4, 6), 77, np.uint8)).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (4, 6, 3) and (out == 77).all()


def test_alpha_is_dropped(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (4, 6, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_sixteen_bit_is_scaled_to_eight(tmp_path):
    arr = np.array([[0, 257, 65535, 32896]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]


def test_palette_mask_becomes_luminance(tmp_path):
    mask = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("P")
    mask.save(tmp_path / "m.gif")
    assert read_mask(tmp_path / "m.gif").tolist() == [[0, 255], [255, 0]]


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jpg: cannot read image \(not an image file"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(DataError, match=r"missing\.png: file not found"):
        read_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="unsupported pixel format"):
        read_image(tmp_path / "f.tif")
