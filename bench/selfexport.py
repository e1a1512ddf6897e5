"""With no checkpoint, unet-bench exports its random-weight U-Net itself, as Ultralytics' benchmark exports
every format, so every engine that can run here is compared instead of rows saying "not exported".

It runs `unet-export` as a child process (the benchmark imports no export code): FP32, FP16 and INT8 ONNX,
and TensorRT engines where they can be built here. Random weights put most pixels at the decision
threshold, so export's mask-agreement gates mean nothing for them; the files are written with --no-verify
and each row's Dice against eager FP32 (measured by the benchmark itself) says how close each engine is.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import torch

from unetkit.infer.engines.ort import onnxruntime_missing

from .runner import EngineSpec

log = logging.getLogger(__name__)
#: Calibration samples for the random model's INT8 file: its scales only have to be plausible, not good.
CALIB_COUNT = 16
ARTIFACT_ENGINES = ("onnx", "openvino", "trt")


def needs_artifacts(specs: list[EngineSpec]) -> bool:
    """Whether any engine to run reads an exported file (torch and compile run the checkpoint itself)."""
    return any(s.name in ARTIFACT_ENGINES for s in specs)


def export_command(checkpoint: Path, device: torch.device, int8: bool) -> list[str]:
    """unet-export's command line for the random-weight checkpoint."""
    cmd = [sys.executable, "-m", "unetkit.export.cli", str(checkpoint), "--device", str(device), "--no-verify",
           "--no-progress"]  # fmt: skip
    if int8:
        cmd += ["--int8", "--calib-count", str(CALIB_COUNT)]
    return cmd


def export_random(checkpoint: Path, device: torch.device) -> str:
    """Export the random-weight checkpoint beside itself; returns what the report says about its artifacts."""
    int8 = onnxruntime_missing() is None  # INT8 calibration runs in ONNX Runtime
    log.info("exporting the random-weight U-Net (ONNX FP32/FP16%s) so every engine can be compared ...",
             "/INT8" if int8 else "")  # fmt: skip
    proc = subprocess.run(export_command(checkpoint, device, int8), capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        log.warning(
            "warning: unet-export of the random-weight U-Net failed: %s", lines[-1] if lines else proc.returncode
        )
        return f"export failed ({lines[-1] if lines else proc.returncode})"
    return (
        "exported here by unet-bench (random weights: not verified; each row's Dice says how close it is, "
        "where the masks have foreground)"
    )
