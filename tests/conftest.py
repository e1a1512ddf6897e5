"""Shared fixtures: small real data sets and checkpoints, the CLIs as subprocesses, and marker skips."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unetkit.core import ModelMeta, UNet, UNetConfig, load_checkpoint, save_checkpoint
from unetkit.train.data.synth import write_synthetic

BIN = Path(sys.executable).parent
#: Console script -> its entry point in unetkit.core.launch, for machines where pip put the scripts elsewhere
#: than beside the interpreter (an editable install with `--target` or into ~/.local/bin), as on the offline
#: GPU machines: started the way the script starts it.
CLI_ENTRY = {"unet-train": "train", "unet-data": "data", "unet-export": "export", "unet-infer": "infer",
             "unet-bench": "bench"}  # fmt: skip


def cli_command(name: str) -> list[str]:
    """How to start console script `name`: the script beside this interpreter, else `python -m` its module."""
    beside = BIN / name
    entry = CLI_ENTRY[name]
    launch = f"from unetkit.core.launch import {entry}; raise SystemExit({entry}())"
    return [str(beside)] if beside.exists() else [sys.executable, "-c", launch]


#: OpenVINO is an extra (`unetkit[openvino]`) that GPU images usually lack; tests of it skip there, saying so.
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="needs OpenVINO: pip install 'unetkit[openvino]'")
#: nvJPEG decoding goes through torchvision, which unetkit does not install (it must match the torch build).
needs_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="needs torchvision (the build matching this torch)"
)
#: The plots of unet-bench and unet-train need matplotlib (the `dev` and `train` extras).
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib: pip install 'unetkit[dev]'"
)


def run_cli(
    *args: str | os.PathLike, check: bool = False, timeout: float = 600, cwd: str | os.PathLike | None = None
) -> subprocess.CompletedProcess:
    """Run one of unetkit's console scripts as a real subprocess; returns the finished process."""
    cmd = [*cli_command(str(args[0])), *map(str, args[1:])]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def run_torchrun(
    nproc: int, module: str, *args: str | os.PathLike, timeout: float = 240, cwd: str | os.PathLike | None = None
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m module args` as a real subprocess, Gloo on loopback.

    --standalone picks a free port on localhost. torchrun starts each worker in a session of its own, so
    killing torchrun's process group would leave the workers running: at the timeout, or when the test is
    interrupted (Ctrl-C, gpu-check's time limit), the whole process tree is stopped (`stop_tree`).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd += ["-m", module, *map(str, args)]
    env = {
        **os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_tree(proc)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{cmd} ran past {timeout} s\nstdout:\n{stdout}\nstderr:\n{stderr}") from None
    except BaseException:  # KeyboardInterrupt: no worker may outlive the test run
        stop_tree(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), read from Linux's /proc; [] elsewhere."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except (OSError, IndexError):  # the process ended meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def stop_tree(proc: subprocess.Popen, grace: float = 10) -> None:
    """Stop `proc` and every process below it: SIGTERM to the root first (torchrun passes it on to its
    workers and waits for them), then SIGKILL to whatever is left after `grace` seconds."""
    tree = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    tree += descendants(proc.pid)
    if proc.poll() is None:
        proc.kill()
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def make_meta(n_classes: int = 1, **changes) -> ModelMeta:
    """A model description for hand-made checkpoints; `changes` replace fields or add extra keys."""
    meta = ModelMeta(
        n_classes=n_classes,
        scale=0.5,
        class_names=("car",) if n_classes == 1 else tuple(f"c{i}" for i in range(n_classes)),
        mask_kind="binary" if n_classes == 1 else "multiclass",
    )
    return meta.replace(**changes) if changes else meta


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 Carvana-like pairs of 192x128 in Kaggle's layout."""
    root = tmp_path_factory.mktemp("synth_small")
    write_synthetic(root, 48, (192, 128), seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained base-4 U-Net saved as a real checkpoint (BatchNorm statistics made non-trivial)."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    save_checkpoint(path, model.eval(), make_meta())
    return path


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, calib_images: Path) -> Path:
    """A base-8 U-Net trained on the CPU for 12 epochs of batch 4 (~15 s) on 48 synthetic 192x128 pairs of 24
    cars, split by car, saved as <dir>/best.pth: it has seen enough cars to find unseen ones, confidently
    enough that FP16 and FP32 agree on almost every pixel.

    It was trained on 192x128 images at scale 0.5, so the model saw 96x64 inputs; its meta says scale 0.05,
    which maps Carvana's 1918x1280 to the same 96x64, so full-size synthetic images are in distribution. Its
    recorded training data is therefore `calib_images` (full-size synthetic cars): what export verifies on.
    """
    from unetkit.train.config import TrainConfig
    from unetkit.train.fit import fit

    data = tmp_path_factory.mktemp("trained_data")
    write_synthetic(data, 48, (192, 128), seed=0, progress=False, views=2)
    run = tmp_path_factory.mktemp("trained_run")
    cfg = TrainConfig(
        data=data, out=run, epochs=12, batch_size=4, base_channels=8, lr=3e-3, workers=0, progress=False, device="cpu"
    )
    fit(cfg)
    model, meta = load_checkpoint(run / "best.pth")
    target = tmp_path_factory.mktemp("trained") / "best.pth"
    train_args = {**meta.extra["train_args"], "data": str(calib_images)}
    save_checkpoint(target, model, meta.replace(scale=0.05, train_args=train_args))
    return target


@pytest.fixture(scope="session")
def grouped_run(tmp_path_factory: pytest.TempPathFactory):
    """`unet-train` for 2 epochs on 24 synthetic 96x64 pairs (6 cars x 4 views), split by car at scale 1, through
    the real CLI: (data folder, run folder, process), the run ending with its validation report."""
    data = tmp_path_factory.mktemp("grouped_data")
    write_synthetic(data, 24, (96, 64), seed=2, progress=False, views=4)
    run = tmp_path_factory.mktemp("grouped_run")
    proc = run_cli("unet-train", "--data", data, "--out", run, "--epochs", "2", "--scale", "1", "--base-channels",
                   "4", "--workers", "0", "--lr", "3e-3", "--device", "cpu", "--no-progress", check=True)  # fmt: skip
    return data, run, proc


@pytest.fixture(scope="session")
def calib_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic cars at Carvana's size (1918x1280) in Kaggle's layout: calibration images in distribution for
    `trained_checkpoint`, whose scale maps this size to what it was trained on (its own training images are
    192x128, which that scale would shrink to a few pixels)."""
    root = tmp_path_factory.mktemp("calib")
    write_synthetic(root, 8, (1918, 1280), seed=5, progress=False)
    return root


@pytest.fixture(scope="session")
def exported_checkpoint(tmp_path_factory: pytest.TempPathFactory, trained_checkpoint: Path, calib_images: Path):
    """`unet-export --device cpu --int8` run once through the real CLI: (folder with best.pth, best.onnx,
    best.fp16.onnx, best.int8.onnx, process); on the CPU no TensorRT engine is built, whatever the machine has.
    INT8 (the default symmetric scheme) calibrates on `calib_images` (a data set root: its train/ folder is
    found), each whole image once."""
    folder = tmp_path_factory.mktemp("exported")
    ckpt = folder / "best.pth"
    ckpt.write_bytes(trained_checkpoint.read_bytes())
    proc = run_cli("unet-export", ckpt, "--device", "cpu", "--no-progress", "--int8", "--calib", calib_images,
                   "--calib-count", "8", "--calib-tile", "0", check=True)  # fmt: skip
    return folder, proc


def _cuda_reason() -> str | None:
    return None if torch.cuda.is_available() else "needs a CUDA GPU (torch.cuda.is_available() is False)"


def _trt_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising OSError
        return f"needs TensorRT (import tensorrt failed: {type(exc).__name__}: {exc})"
    return _cuda_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {"gpu": _cuda_reason(), "trt": _trt_reason()}
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def interruptible() -> None:
    """`preexec_fn` for a child a test sends Ctrl-C: SIGINT back to its default, as in a terminal. A suite started
    in the background (`.ci/run &` in a script) hands its children SIGINT ignored, and Python then never raises
    KeyboardInterrupt, so the test would measure how it was started rather than the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
