"""`make gpu-check`'s own logic on the CPU: what it reads out of real pytest, unet-train and unet-infer runs,
the data it draws, and the summary it writes. (Its refusal without CUDA is in test_gpu_path.py.)"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_junit_counts_failures_and_skip_reasons(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2\n"
        "@pytest.mark.skip(reason='needs a CUDA GPU')\n"
        "def test_gpu(): pass\n"
    )
    junit = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                    str(tmp_path / "test_sample.py")], capture_output=True, cwd=tmp_path)  # fmt: skip
    report = gpu_check.parse_junit(junit.read_text())
    assert (report["tests"], report["passed"], report["failures"], report["skipped"]) == (3, 1, 1, 1)
    assert report["failed"] == ["test_sample::test_bad"]
    assert report["skip_reasons"] == {"needs a CUDA GPU": 1}


def test_infer_summary_is_read_from_a_real_run(exported_checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    proc = run_cli("unet-infer", folder, "--checkpoint", exported_checkpoint[0] / "best.pth", "--device", "cpu",
                   "--out", tmp_path / "out", "--no-progress", check=True)  # fmt: skip
    figures = gpu_check.parse_infer(proc.stdout)
    assert figures["images"] == figures["written"] == 3 and figures["failed"] == 0
    assert figures["images_per_s"] > 0 and figures["engine"] == "torch fp32" and figures["device"] == "cpu"
    assert set(figures["busy_ms_per_image"]) == {"decode", "upload", "compute", "download", "write"}
    with pytest.raises(ValueError):
        gpu_check.parse_infer("unet-infer: error: something")


def test_a_time_limited_training_stops_saves_and_reports(synth_small, tmp_path):
    proc = run_cli("unet-train", "--data", synth_small, "--out", tmp_path, "--epochs", "50", "--max-minutes",
                   "0.001", "--base-channels", "2", "--workers", "0", "--device", "cpu", "--no-progress",
                   check=True)  # fmt: skip
    assert "time limit: 0.001 minutes of training reached" in proc.stdout
    assert "(1 epoch, time limit reached)" in proc.stdout
    assert (tmp_path / "best.pth").exists() and len((tmp_path / "history.jsonl").read_text().splitlines()) == 1
    figures = gpu_check.parse_train(proc.stdout)
    assert figures["epochs"] == 1 and 0 <= figures["best_dice"] <= 1 and "cpu" in figures["model"]


def test_model_rate_lookup_and_summary():
    bench = {"model": [
        {"engine": "torch", "precision": "fp16", "batch": 8, "status": "ok", "images_per_s": 50.0},
        {"engine": "onnx", "precision": "fp16", "batch": 8, "status": "unavailable", "images_per_s": None},
    ]}  # fmt: skip
    assert gpu_check.model_images_per_s(bench, "torch", "fp16", 8) == 50.0
    assert gpu_check.model_images_per_s(bench, "onnx", "fp16", 8) is None
    steps = [gpu_check.Step("tests", "passed", 100.0, {"passed": 3}), gpu_check.Step("bench", "failed", 5.0, note="x")]
    text = gpu_check.render_summary({"gpu": "NVIDIA H100", "date": "2026-11-25"}, steps, 570)
    assert text.startswith("# gpu-check: NOT PASSED") and "| bench | failed | 5 | x |" in text
    assert '"passed": 3' in text and "NVIDIA H100" in text


def test_synthetic_data_is_drawn_in_parallel_into_one_layout(tmp_path):
    folder = gpu_check.synthesize(tmp_path / "data", 3, 0, 2)
    images = sorted((folder / "train").iterdir())
    masks = sorted((folder / "train_masks").iterdir())
    assert len(images) == len(masks) == 3 and sorted(p.name for p in folder.iterdir()) == ["train", "train_masks"]
    assert Image.open(images[0]).size == (1918, 1280)
    assert json.dumps(gpu_check.OUT_FILES) and len(gpu_check.OUT_FILES) <= 8


def test_a_step_past_its_time_still_leaves_the_pytest_report(tmp_path):
    """Ctrl-C first: pytest stops and writes its JUnit report, which a kill would have lost."""
    (tmp_path / "test_slow.py").write_text("import time\ndef test_ok(): pass\ndef test_slow(): time.sleep(600)\n")
    junit = tmp_path / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "test_slow.py"]
    proc = gpu_check.run_bounded(cmd, 15, tmp_path)
    assert proc.returncode == 124 and "timed out after 15 s" in proc.stderr
    report = gpu_check.parse_junit(junit.read_text())
    assert report["passed"] == 1


def test_an_unexpected_error_fails_its_step_and_the_next_steps_still_run(tmp_path):
    checker = gpu_check.Checker(tmp_path, 600, 1, 1, {"infer"}, {"gpu": "test"})

    def broken(step):
        raise KeyError("model")

    assert checker.step("bench", 0, broken).status == "failed" and checker.steps[0].note == "KeyError: 'model'"
    assert checker.step("train", 0, lambda step: None).status == "passed"
    assert checker.step("infer", 0, broken).note == "skipped (--skip)"
    assert checker.step("export", 10_000, broken).note.startswith("not started:")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["failed", "passed", "not run", "not run"]
    assert not summary["passed"] and "| bench | failed |" in (tmp_path / "summary.md").read_text()


def test_the_gpu_tests_get_at_least_half_the_budget_left():
    assert gpu_check.suite_timeout(570, 600) == 285  # the default budget: the reserve cannot take it all
    assert gpu_check.suite_timeout(1800, 600) == 1200 and gpu_check.suite_timeout(90, 0) == 90
    assert gpu_check.suite_timeout(30, 600) == 60


def test_onnx_on_cuda_is_decided_by_the_engine(exported_checkpoint, tmp_path):
    """onnxruntime-gpu lists its CUDA provider even when it cannot load: the onnx step asks the engine where it
    runs, and says why not CUDA (here, a CPU engine's own description)."""
    folder, _ = exported_checkpoint
    assert gpu_check.onnx_cuda_problem(folder / "best.fp16.onnx", "cpu") == "CPUExecutionProvider"
    assert "ONNX file not found" in gpu_check.onnx_cuda_problem(tmp_path / "gone.onnx", "cpu")
