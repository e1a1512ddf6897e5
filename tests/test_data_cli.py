"""unet-data synth and carvana."""

import hashlib
import os
import subprocess
import zipfile

import numpy as np

from conftest import cli_command, error_lines, run_cli
from unetkit.core.imageio import binary_mask, read_image, read_mask
from unetkit.train.data.kaggle import _unpack, carvana_files
from unetkit.train.data.layouts import index_dataset


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.*")}


def test_synth_writes_kaggle_named_pairs_deterministically(tmp_path):
    for name in ("a", "b"):
        run_cli("unet-data", "synth", "--out", tmp_path / name, "--n", "18", "--size", "160x96", "--seed", "5",
                "--no-progress", check=True)  # fmt: skip
    run_cli("unet-data", "synth", "--out", tmp_path / "c", "--n", "18", "--size", "160x96", "--seed", "6",
            "--no-progress", check=True)  # fmt: skip
    a = digest(tmp_path / "a")
    assert a == digest(tmp_path / "b")
    assert a != digest(tmp_path / "c")
    index = index_dataset(tmp_path / "a")
    assert index.layout == "kaggle-carvana" and len(index.pairs) == 18
    views: dict[str, list[str]] = {}
    for p in index.pairs:
        car, view = p.image.stem.split("_")
        views.setdefault(car, []).append(view)
    # 16 views per car, numbered as Kaggle numbers them: <12 hex digits>_01 ... _16
    assert sorted(len(v) for v in views.values()) == [2, 16]
    assert all(len(car) == 12 for car in views)
    assert sorted(max(views.values(), key=len)) == [f"{i:02d}" for i in range(1, 17)]
    pair = index.pairs[3]
    image = read_image(pair.image)
    mask = binary_mask(read_mask(pair.mask), pair.mask)
    assert image.shape == (96, 160, 3) and pair.mask.suffix == ".gif"
    assert 0.05 < mask.mean() < 0.6  # a car, not the whole frame
    # the car differs from its surroundings: mean colour inside vs. a ring outside
    assert np.abs(image[mask == 1].mean(0) - image[mask == 0].mean(0)).max() > 5


def test_synth_never_mixes_into_an_existing_data_set(tmp_path):
    """The same command again (make demo twice) writes nothing; another one into the folder would overwrite
    some pairs or add others of another size: refused before anything is written."""
    args = ["unet-data", "synth", "--out", tmp_path, "--n", "4", "--size", "96x64", "--views", "2", "--no-progress"]
    run_cli(*args, check=True)
    before = digest(tmp_path)
    again = run_cli(*args, check=True)
    assert f"{tmp_path} already holds these 4 pairs (synth.json); nothing written" in again.stdout
    other = run_cli(*args[:-1], "--seed", "1", "--no-progress")
    assert other.returncode == 2
    assert error_lines(other) == [
        f"unet-data: error: --out {tmp_path}: already holds a data set (8 files in train/ and train_masks/), which "
        "new pairs would mix with or overwrite; choose another --out, or remove it first"
    ]
    assert digest(tmp_path) == before


def test_synth_full_size_default(tmp_path):
    run_cli("unet-data", "synth", "--out", tmp_path, "--n", "1", "--no-progress", check=True)
    assert read_image(next((tmp_path / "train").iterdir())).shape == (1280, 1918, 3)


def test_synth_rejects_a_bad_size(tmp_path):
    proc = run_cli("unet-data", "synth", "--out", tmp_path, "--size", "big")
    assert proc.returncode == 2
    assert error_lines(proc) == ["unet-data: error: --size: size 'big' is not WIDTHxHEIGHT, e.g. 1918x1280"]


def test_carvana_without_credentials_says_what_is_missing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = _run_with_env(["unet-data", "carvana", "--out", tmp_path / "data"], HOME=str(home))
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert "Kaggle credentials not found" in line and "~/.kaggle/kaggle.json" in line
    assert "KAGGLE_USERNAME" in line


def test_carvana_with_credentials_but_no_client_or_network(tmp_path):
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle/kaggle.json").write_text('{"username": "someone", "key": "0123"}')
    proc = _run_with_env(["unet-data", "carvana", "--out", tmp_path / "data"], HOME=str(home))
    assert proc.returncode == 2
    [line] = error_lines(proc)
    # Without the kaggle package: how to install it; with it, but no network here: what failed.
    assert "pip install 'unetkit[kaggle]'" in line or "kaggle" in line.lower()
    assert not (tmp_path / "data" / "train").exists()


def _run_with_env(args, **env):
    """Run a CLI with no KAGGLE_* variables and the given overrides (HOME decides where kaggle.json is)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    clean.update(env)
    return subprocess.run([*cli_command(args[0]), *map(str, args[1:])], capture_output=True, text=True, env=clean)


def test_check_warns_when_size_would_turn_every_image_on_its_side(tmp_path):
    """Image sizes are written WxH (synth --size 96x64) and --size is HxW: the same numbers swap the sides."""
    run_cli("unet-data", "synth", "--out", tmp_path, "--n", "2", "--size", "96x64", "--views", "1", "--no-progress",
            check=True)  # fmt: skip
    proc = run_cli("unet-data", "check", tmp_path, "--size", "96x64", "--no-progress", check=True)
    assert ("warning: --size 96x64 is HxW (96 high, 64 wide), but the images are wider than high: every one is "
            "stretched on its side; --size 64x96 keeps their shape") in proc.stdout  # fmt: skip
    proc = run_cli("unet-data", "check", tmp_path, "--size", "64x96", "--no-progress", check=True)
    assert "stretched on its side" not in proc.stdout


def test_carvana_archives_and_where_they_unpack(tmp_path):
    """--test adds the test images; the high-quality archives unpack into the plain folder names."""
    assert carvana_files() == ["train.zip", "train_masks.zip"]
    assert carvana_files(hq=True, test=True) == ["train_hq.zip", "train_masks.zip", "test_hq.zip"]
    archive = tmp_path / "test_hq.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("test_hq/0004d4463b50_01.jpg", b"jpeg bytes")
    (tmp_path / "out").mkdir()
    _unpack(archive, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["test"]
    assert (tmp_path / "out/test/0004d4463b50_01.jpg").read_bytes() == b"jpeg bytes"
