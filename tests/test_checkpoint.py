import pickle

import pytest
import torch

from conftest import error_lines, make_meta, run_cli
from unetkit.core import CheckpointError, UNet, UNetConfig, load_checkpoint, save_checkpoint


def test_round_trip_rebuilds_an_identical_model(tmp_path):
    torch.manual_seed(1)
    model = UNet(UNetConfig(base_channels=4, n_classes=3, bilinear=True)).eval()
    path = tmp_path / "best.pth"
    save_checkpoint(path, model, make_meta(n_classes=3, val_dice=0.5))
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta.n_classes == 3 and meta.scale == 0.5 and meta.threshold == 0.5 and meta.val_dice == 0.5
    assert len(meta.mean) == 3 and len(meta.std) == 3 and meta.mask_kind == "multiclass"
    assert meta.extra["versions"]["torch"] == str(torch.__version__)


def test_checkpoint_opens_with_weights_only(random_checkpoint):
    payload = torch.load(random_checkpoint, weights_only=True)
    assert payload["format"] == "unetkit.checkpoint"
    assert set(payload) >= {"model", "state_dict", "meta"}


def test_write_is_atomic_when_saving_fails(tmp_path, monkeypatch):
    path = tmp_path / "best.pth"
    save_checkpoint(path, UNet(UNetConfig(base_channels=2)), make_meta())
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, UNet(UNetConfig(base_channels=2)), make_meta())
    assert path.read_bytes() == before  # the old checkpoint survives intact
    assert [p.name for p in tmp_path.iterdir()] == ["best.pth"]  # and no temp file is left


def _truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d, ck: d / "nope.pth", "checkpoint not found"),
        (lambda d, ck: d, "is a directory"),
        (lambda d, ck: _truncated(ck, d / "half.pth"), "truncated or not a PyTorch file"),
        (lambda d, ck: (d / "text.pth").write_text("hello") and d / "text.pth", "truncated or not a PyTorch file"),
    ],
)
def test_bad_files_give_a_clear_error(tmp_path, random_checkpoint, make, message):
    path = make(tmp_path, random_checkpoint)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_bare_state_dict_is_foreign(tmp_path):
    path = tmp_path / "sd.pth"
    torch.save(UNet(UNetConfig(base_channels=2)).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a unetkit checkpoint; it looks like a bare state_dict"):
        load_checkpoint(path)


class Exploit:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"format": "unetkit.checkpoint", "payload": Exploit()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)


def test_cli_reports_a_truncated_checkpoint_in_one_line(tmp_path, random_checkpoint, synth_small):
    bad = _truncated(random_checkpoint, tmp_path / "best.pth")
    proc = run_cli("unet-train", "--eval", bad, "--data", synth_small, "--no-progress")
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1
    assert lines[0].startswith(f"unet-train: error: {bad}: truncated or not a PyTorch file")
    assert "Traceback" not in proc.stderr
