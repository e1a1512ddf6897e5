"""The documented image-reading rule: EXIF rotation, grayscale, alpha, palette and 16-bit inputs."""

import numpy as np
import pytest
from PIL import Image

from unetkit.core.errors import DataError
from unetkit.core.imageio import binary_mask, image_size, read_image, read_mask


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


def test_mask_values_are_classes_never_colour_luminance(tmp_path):
    """A grey-palette GIF (Carvana's) reads as its greys; a colour-palette PNG (Pascal VOC's) as its indices,
    which are the classes; an all-grey RGB PNG as its grey; a colour-coded RGB PNG is refused (its luminance
    would be made-up classes); a JPEG RGB mask, grey with colour noise, reads as luminance to be thresholded."""
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("P").save(tmp_path / "m.gif")
    assert read_mask(tmp_path / "m.gif").tolist() == [[0, 255], [255, 0]]
    voc = Image.fromarray(np.array([[0, 1], [2, 15]], np.uint8), "P")
    voc.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [64, 0, 128] * 253)
    voc.save(tmp_path / "voc.png")
    assert read_mask(tmp_path / "voc.png").tolist() == [[0, 1], [2, 15]]
    car = Image.fromarray(np.array([[0, 7]], np.uint8), "P")  # VOC's car (7) is grey, but 1-6 are colours
    car.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128, 128, 128, 128])
    car.save(tmp_path / "car.png")
    assert read_mask(tmp_path / "car.png").tolist() == [[0, 7]]
    Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)).save(tmp_path / "grey.png")
    assert read_mask(tmp_path / "grey.png").tolist() == [[0, 255]]
    Image.fromarray(np.array([[[0, 0, 0], [0, 0, 142]]], np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour\.png: a colour mask; masks hold one value per pixel"):
        read_mask(tmp_path / "colour.png")
    noisy = np.zeros((16, 16, 3), np.uint8)
    noisy[:, 8:] = (250, 255, 246)
    Image.fromarray(noisy).save(tmp_path / "kvasir.jpg", quality=90)
    raw = read_mask(tmp_path / "kvasir.jpg")
    assert (raw[:, :6] < 20).all() and (raw[:, 10:] > 230).all()


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jpg: cannot read image \(not an image file"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(DataError, match=r"missing\.png: file not found"):
        read_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="unsupported pixel format"):
        read_image(tmp_path / "f.tif")


def test_colour_jpeg_and_16_bit_masks(tmp_path):
    red = np.zeros((32, 32, 3), np.uint8)
    red[:, 16:] = (255, 0, 0)
    Image.fromarray(red).save(tmp_path / "red.jpg", quality=90)
    with pytest.raises(DataError, match=r"red\.jpg: a colour mask"):
        read_mask(tmp_path / "red.jpg")
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "wide.png")
    assert read_mask(tmp_path / "wide.png").tolist() == [[0, 255]]


@pytest.mark.parametrize(
    "values, remedy",
    [
        ((0, 7), "--mask-threshold 7 makes 7 foreground"),  # a VOC class index: 128 would erase it
        (
            (0, 1, 255),
            "255 marks a void border, as in Pascal VOC; binary masks have none: set those pixels to 0 or 1 first",
        ),
        ((0, 3, 250, 255), "--mask-threshold 128 binarises it"),  # stray greys near both ends
    ],
)
def test_a_bad_binary_mask_gets_the_remedy_that_keeps_its_labels(values, remedy):
    raw = np.resize(np.array(values, np.uint8), (4, 4))
    with pytest.raises(DataError, match="expected 0/1 or 0/255") as exc:
        binary_mask(raw, "m.png")
    assert str(exc.value).endswith(f"({remedy})")


def test_a_0_1_mask_saved_as_jpeg_is_named_not_read_as_empty(tmp_path):
    """JPEG turns a 0/1 mask's edges into 2s and 3s: the 128 threshold would read it as all background, so the
    file is named with the remedy; a 0/255 JPEG still reads by the threshold."""
    raw = np.zeros((32, 48), np.uint8)
    raw[8:24, 10:40] = 1
    raw[8, 10:40] = 2  # what the compression leaves at an edge (libjpeg's output varies with the version)
    with pytest.raises(DataError, match=r"faint\.jpg: a JPG mask whose values reach only 2: a 0/1 mask saved as "
                       r"JPG, which the JPG threshold \(128\) would read as empty; --mask-threshold 1"):  # fmt: skip
        binary_mask(raw, tmp_path / "faint.jpg")
    assert binary_mask(raw, tmp_path / "faint.jpg", threshold=1).sum() == 16 * 30  # the remedy keeps them
    labels = (raw > 0).astype(np.uint8) * 255
    Image.fromarray(labels).save(tmp_path / "bright.jpg", quality=75)
    assert abs(int(binary_mask(read_mask(tmp_path / "bright.jpg"), tmp_path / "bright.jpg").sum()) - 480) <= 8
