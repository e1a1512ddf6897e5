"""`unet-data carvana`: the real Carvana competition data through the Kaggle API.

Everything that can be missing (credentials, the client package, the network, accepting the competition
rules) is checked in that order and reported with what to do about it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from unetkit.core.errors import UnetkitError

COMPETITION = "carvana-image-masking-challenge"
RULES_URL = f"https://www.kaggle.com/c/{COMPETITION}/rules"


def credentials_source() -> str | None:
    """Where the Kaggle client will find credentials, or None if it will not."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    folders = [os.environ.get("KAGGLE_CONFIG_DIR"), Path.home() / ".kaggle", Path.home() / ".config" / "kaggle"]
    for folder in folders:
        if folder and (Path(folder) / "kaggle.json").is_file():
            return str(Path(folder) / "kaggle.json")
    return None


def carvana_files(hq: bool = False, test: bool = False) -> list[str]:
    """The competition's archives to fetch: the training images and masks, and with `test` the 100,064 test
    images (about 14 GB; 'test_hq.zip' larger still) that a Kaggle submission is scored on."""
    files = ["train_hq.zip" if hq else "train.zip", "train_masks.zip"]
    return [*files, "test_hq.zip" if hq else "test.zip"] if test else files


def unpacked_name(folder: str) -> str:
    """The folder an archive's top folder becomes: the high-quality sets take the plain names, so the layout
    (train/ + train_masks/, and test/) is the same either way."""
    return {"train_hq": "train", "test_hq": "test"}.get(folder, folder)


def download_carvana(out: str | os.PathLike, hq: bool = False, quiet: bool = False, test: bool = False) -> Path:
    """Download and unpack train(_hq).zip and train_masks.zip into OUT/train and OUT/train_masks (and with
    `test`, test(_hq).zip into OUT/test)."""
    out = Path(out)
    if credentials_source() is None:
        raise UnetkitError(
            "Kaggle credentials not found: create a token at https://www.kaggle.com/settings (API > Create New "
            "Token), save it as ~/.kaggle/kaggle.json (chmod 600) or set KAGGLE_USERNAME and KAGGLE_KEY"
        )
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise UnetkitError("the Kaggle API client is not installed: pip install 'unetkit[kaggle]'") from None
    api = KaggleApi()
    try:
        api.authenticate()
    except Exception as exc:  # the client raises bare Exceptions for bad tokens
        raise UnetkitError(f"Kaggle rejected the credentials ({exc})") from None
    files = carvana_files(hq, test)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".download-") as tmp:
        for name in files:
            try:
                api.competition_download_file(COMPETITION, name, path=tmp, quiet=quiet)
            except Exception as exc:  # HTTP and network errors arrive as many different types
                text = str(exc)
                if "403" in text or "Forbidden" in text:
                    raise UnetkitError(f"Kaggle refused {name}: accept the competition rules at {RULES_URL}") from None
                raise UnetkitError(f"could not download {name} from kaggle.com ({text.splitlines()[0]})") from None
            _unpack(Path(tmp) / name, out)
    return out


def _unpack(archive: Path, out: Path) -> None:
    """Extract next to the destination, then move the folder into place, so a failure leaves no half folder."""
    if not archive.exists() and archive.with_suffix("").exists():
        archive = archive.with_suffix("")  # some client versions unzip the outer archive themselves
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".unpack-"))
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(staging)
        for folder in staging.iterdir():
            target = out / unpacked_name(folder.name)
            if target.exists():
                shutil.rmtree(target)
            folder.rename(target)
    except zipfile.BadZipFile:
        raise UnetkitError(f"{archive.name}: the download is not a valid zip file; run the command again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
