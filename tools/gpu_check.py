"""`make gpu-check`: verify a CUDA machine end to end and leave one small folder to copy back.

Steps, each a real run of the project's own commands (as `python -m`, so it works wherever pip put the
console scripts), in the order that puts what only a GPU can tell first, so a short budget still answers it:

1. the `gpu` and `trt` tests (synthetic data is drawn meanwhile on the CPU);
2. the default `unet-bench` (1918x1280, every engine that can run) with JSON, Markdown and plot (the plot
   where matplotlib is installed);
3. a mixed-precision training of the default U-Net on synthetic 1918x1280 cars at scale 0.5 for
   `--train-minutes` (images/s, Dice);
4. `unet-export` of that checkpoint (ONNX FP32/FP16 verified on the GPU; TensorRT where installed);
5. `unet-infer` on 200 synthetic 1918x1280 JPEGs with the torch (FP16), compile and onnx engines (onnx where
   onnxruntime-gpu is installed), each against its own model-only images/s (`unet-bench --scope model`);
6. the rest of the test suite (the CPU-side tests), with the time left.

The output folder holds at most 8 files: summary.md (what passed, what failed, every figure), summary.json,
tests.txt, log.txt, bench.json, bench.md, bench.png. A step that would start after the time budget is
reported as not run; a step past its time is stopped with Ctrl-C first (pytest then still writes its report),
then killed. On a machine without CUDA it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROG = "gpu-check"
OUT_FILES = ("summary.md", "summary.json", "tests.txt", "log.txt", "bench.json", "bench.md", "bench.png")
INFER_ENGINES = (("torch", "fp16"), ("compile", "fp16"), ("onnx", "fp16"))
CARVANA = (1918, 1280)  # width, height
GRACE_S = 20  # seconds a timed-out step gets after Ctrl-C before it is killed (the tests' torchrun cleanup needs 10)
GPU_TESTS, CPU_TESTS = "gpu or trt", "not gpu and not trt"


def onnx_cuda_problem(onnx: Path, device: str = "cuda") -> str | None:
    """Why the onnx engine would not run `onnx` on CUDA here (None: it does), decided by the engine itself:
    onnxruntime-gpu lists its CUDA provider even when the provider cannot load (a build for another CUDA
    major), and the CPU fallback would spend the step's time timing the CPU in a GPU check."""
    import torch

    from unetkit.core.errors import UnetkitError
    from unetkit.infer.engines.ort import OnnxEngine

    try:
        with OnnxEngine(onnx, torch.device(device)) as engine:
            return None if engine.device.type == "cuda" else engine.detail
    except UnetkitError as exc:
        return str(exc)


def suite_timeout(remaining_s: float, reserve_s: float) -> float:
    """Seconds a test step may run: what the budget has left after `reserve_s` for the steps after it, but
    never under half of what is left (a reserve as large as the budget would leave the tests nothing) nor
    under a minute."""
    return max(60.0, remaining_s - min(reserve_s, remaining_s / 2))


@dataclass
class Step:
    name: str
    status: str = "not run"  # passed, failed, not run
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""


# ---- pure parsing and reporting ------------------------------------------------------------------------------
def parse_junit(xml_text: str) -> dict[str, Any]:
    """Counts, failed test ids and skip reasons from pytest's JUnit XML."""
    root = ET.fromstring(xml_text)
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed: list[str] = []
    skipped: dict[str, int] = {}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(test_id)
            skip = case.find("skipped")
            if skip is not None:
                reason = skip.get("message", "").removeprefix("Skipped: ")
                skipped[reason] = skipped.get(reason, 0) + 1
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed, "skip_reasons": skipped}


def parse_infer(stdout: str) -> dict[str, Any]:
    """unet-infer's closing summary: images, written, failed, seconds, images/s, busy ms per stage."""
    head = re.search(
        r"(\d+) images: (\d+) written, (\d+) skipped \(--resume\), (\d+) failed; ([\d.]+) s, ([\d.]+) images/s", stdout
    )
    if head is None:
        raise ValueError("no unet-infer summary in the output")
    images, written, _, failed, seconds, ips = head.groups()
    figures: dict[str, Any] = {"images": int(images), "written": int(written), "failed": int(failed),
                               "seconds": float(seconds), "images_per_s": float(ips)}  # fmt: skip
    busy = re.search(r"busy ms per image \(stages overlap\): (.*)", stdout)
    if busy:
        figures["busy_ms_per_image"] = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", busy.group(1))}
    engine = re.search(r"engine (.+?) on (\S+), .*decoder (.+)", stdout)
    if engine:
        figures["engine"], figures["device"], figures["decoder"] = engine.groups()
    return figures


def parse_train(stdout: str) -> dict[str, Any]:
    """unet-train's epoch lines and closing line: images/s per epoch, best Dice, precision."""
    rates = [float(v) for v in re.findall(r"^epoch \d+/\d+ .* ([\d.]+) img/s", stdout, re.MULTILINE)]
    figures: dict[str, Any] = {"epochs": len(rates), "images_per_s_per_epoch": rates}
    if len(rates) > 1:  # the first epoch pays for cuDNN autotuning and filling the cache
        later = sorted(rates[1:])
        figures["images_per_s"] = later[len(later) // 2]
    best = re.search(r"best validation Dice ([\d.]+) at epoch (\d+)", stdout)
    if best:
        figures["best_dice"], figures["best_epoch"] = float(best.group(1)), int(best.group(2))
    model = re.search(r"^model: (.*)$", stdout, re.MULTILINE)
    if model:
        figures["model"] = model.group(1)
    return figures


def model_images_per_s(bench_json: dict[str, Any], engine: str, precision: str, batch: int) -> float | None:
    for row in bench_json.get("model", []):
        if (row["engine"], row["precision"], row["batch"]) == (engine, precision, batch) and row["status"] == "ok":
            return row["images_per_s"]
    return None


def render_summary(env: dict[str, Any], steps: list[Step], budget_s: float) -> str:
    """summary.md: one line per step, then every figure."""
    ok = all(s.status == "passed" for s in steps)
    lines = [
        f"# gpu-check: {'PASSED' if ok else 'NOT PASSED'}",
        "",
        f"{env.get('date')} on {env.get('gpu')} (driver {env.get('driver')}), torch {env.get('torch')} "
        f"(CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}), torchvision {env.get('torchvision')}, "
        f"onnxruntime {env.get('onnxruntime')} {env.get('ort_providers')}, TensorRT {env.get('tensorrt')}; "
        f"budget {budget_s / 60:.1f} min",
        "",
        "| step | status | seconds | note |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.note} |" for s in steps]
    for s in steps:
        if s.figures:
            lines += ["", f"## {s.name}", "", "```json", json.dumps(s.figures, indent=1, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


# ---- running ------------------------------------------------------------------------------------------------
class Checker:
    """Runs the steps against a deadline and keeps the output folder current after every step."""

    def __init__(
        self, out: Path, budget_s: float, train_minutes: float, infer_images: int, skip: set[str], env: dict[str, Any]
    ) -> None:
        self.out, self.budget_s, self.skip = out, budget_s, skip
        self.train_minutes, self.infer_images = train_minutes, infer_images
        self.deadline = time.monotonic() + budget_s
        self.scratch = Path(tempfile.mkdtemp(prefix="unetkit-gpu-check-"))
        self.steps: list[Step] = []
        self.env = env

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def cli(self, module: str, *args: Any, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run `python -m module args`, its output appended to log.txt, within `timeout` and the budget."""
        cmd = [sys.executable, "-m", module, *map(str, args)]
        proc = run_bounded(cmd, max(1.0, min(timeout, self.remaining())), cwd)
        with open(self.out / "log.txt", "a") as log:
            log.write(f"\n$ {' '.join(cmd)}  (exit {proc.returncode})\n{proc.stdout[-20000:]}{proc.stderr[-20000:]}")
        return proc

    def step(self, name: str, min_seconds: float, body: Any) -> Step:
        step = Step(name)
        self.steps.append(step)
        if name in self.skip:
            step.note = "skipped (--skip)"
        elif self.remaining() < min_seconds:
            step.note = f"not started: {self.remaining():.0f} s of the budget left, it needs about {min_seconds:.0f}"
        else:
            start = time.monotonic()
            try:
                body(step)
                if step.status == "not run":
                    step.status = "passed"
            except StepFailed as exc:
                step.status, step.note = "failed", str(exc)
            except Exception as exc:  # a bug or an environment problem fails this step; the others still run
                step.status, step.note = "failed", f"{type(exc).__name__}: {exc}"
            step.seconds = time.monotonic() - start
        self.write()
        return step

    def write(self) -> None:
        (self.out / "summary.md").write_text(render_summary(self.env, self.steps, self.budget_s))
        payload = {"environment": self.env, "budget_s": self.budget_s, "steps": [asdict(s) for s in self.steps],
                   "passed": all(s.status == "passed" for s in self.steps)}  # fmt: skip
        (self.out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")

    # -- the steps --
    def tests(self, step: Step, markers: str, reserve_s: float) -> None:
        """The tests selected by `markers`, leaving `reserve_s` of the budget to the steps after them."""
        junit = self.scratch / f"junit-{len(self.steps)}.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", markers,
               f"--junitxml={junit}", "tests"]  # fmt: skip
        proc = run_bounded(cmd, suite_timeout(self.remaining(), reserve_s), ROOT)
        code = proc.returncode
        with open(self.out / "tests.txt", "a") as text:
            text.write(f"$ pytest -m '{markers}'  (exit {code})\n{(proc.stdout + proc.stderr)[-100_000:]}\n")
        if not junit.exists():
            raise StepFailed(f"pytest wrote no report (exit {code}); see tests.txt")
        step.figures = parse_junit(junit.read_text())
        if code != 0 or step.figures["failed"]:
            raise StepFailed(f"{len(step.figures['failed'])} failed (exit {code}); see tests.txt")

    def train(self, step: Step, data: Path) -> None:
        run = self.scratch / "run"
        proc = self.cli("unetkit.train.cli", "--data", data, "--out", run, "--scale", "0.5", "--epochs", "1000",
                        "--patience", "1000", "--max-minutes", self.train_minutes,
                        "--workers", min(8, os.cpu_count() or 1), "--cache", self.scratch / "cache", "--no-progress",
                        timeout=60 * self.train_minutes + 240)  # fmt: skip
        step.figures = parse_train(proc.stdout)
        if proc.returncode != 0 or not (run / "best.pth").exists():
            raise StepFailed(f"unet-train exited {proc.returncode}; see log.txt")

    def export(self, step: Step) -> None:
        proc = self.cli("unetkit.export.cli", self.scratch / "run" / "best.pth", "--no-progress", timeout=600)
        step.figures = {"lines": [line for line in proc.stdout.splitlines() if line.strip()]}
        if proc.returncode != 0:
            raise StepFailed(f"unet-export exited {proc.returncode}; see log.txt")

    def infer(self, step: Step, images: Path) -> None:
        from unetkit.infer.artifacts import artifact_path

        ckpt = self.scratch / "run" / "best.pth"
        failures = []
        specs = ",".join(f"{e}:{p}" for e, p in INFER_ENGINES)
        bench = self.scratch / "trained-bench.json"
        measured = self.cli("unetkit.bench.cli", "--checkpoint", ckpt, "--engines", specs, "--batch", "8", "--scope",
                            "model", "--json", bench, timeout=600)  # fmt: skip
        if measured.returncode != 0:
            failures.append(f"model-only unet-bench exited {measured.returncode}")
        model = json.loads(bench.read_text()) if bench.exists() else {}
        for engine, precision in INFER_ENGINES:
            onnx = artifact_path(ckpt, "onnx-fp16")
            if engine == "onnx" and not onnx.is_file():  # the export step failed: that is a failure, not a skip
                failures.append(f"{engine} {precision}: {onnx.name} was not exported")
                continue
            problem = onnx_cuda_problem(onnx) if engine == "onnx" else None
            if problem:
                step.figures[f"{engine} {precision}"] = {"skipped": f"not on CUDA here: {problem}"}
                continue
            out = self.scratch / f"masks-{engine}"
            proc = self.cli("unetkit.infer.cli", images, "--checkpoint", ckpt, "--engine", engine, "--precision",
                            precision, "--batch", "8", "--out", out, "--no-progress", timeout=600)  # fmt: skip
            label = f"{engine} {precision}"
            try:
                figures = parse_infer(proc.stdout)
            except ValueError:
                failures.append(f"{label}: exit {proc.returncode}")
                continue
            rate = model_images_per_s(model, engine, precision, 8)
            figures["model_images_per_s"] = rate
            figures["e2e_over_model"] = figures["images_per_s"] / rate if rate else None
            step.figures[label] = figures
            if proc.returncode != 0 or figures["written"] != self.infer_images:
                failures.append(f"{label}: {figures['written']} of {self.infer_images} masks, exit {proc.returncode}")
            elif not str(figures.get("device", "")).startswith("cuda"):
                failures.append(f"{label}: ran on {figures.get('device')}, not on the GPU")
        if failures:
            raise StepFailed("; ".join(failures))

    def bench(self, step: Step, images: Path) -> None:
        empty = self.scratch / "bench-cwd"  # no best.pth here: the default U-Net with random weights
        empty.mkdir(exist_ok=True)
        plot = ["--plot", self.out / "bench.png"] if importlib.util.find_spec("matplotlib") else []
        if not plot:
            step.note = "no plot: matplotlib is not installed"
        proc = self.cli("unetkit.bench.cli", "--images", images, "--json", self.out / "bench.json", "--markdown",
                        self.out / "bench.md", *plot, timeout=900, cwd=empty)  # fmt: skip
        if (self.out / "bench.json").exists():
            report = json.loads((self.out / "bench.json").read_text())
            step.figures = {"verdict": report.get("verdict"), "peaks_tflops": report.get("peaks_tflops"),
                            "model": [_short(r) for r in report.get("model", [])],
                            "e2e": [_short(r) for r in report.get("e2e", [])]}  # fmt: skip
        if proc.returncode != 0:
            raise StepFailed(f"unet-bench exited {proc.returncode}; see log.txt")


def interruptible() -> None:
    """In the child before it starts: SIGINT back to its default, so the Ctrl-C sent at a timeout reaches it even
    when gpu-check itself was started in the background (`make gpu-check &` in a script hands its children SIGINT
    ignored, and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_bounded(cmd: list[str], timeout: float, cwd: Path | None) -> subprocess.CompletedProcess:
    """Run `cmd` in a session of its own; at the timeout its whole process group is killed (the CLIs it
    starts, compile workers), so nothing keeps loading the GPU during the next step. Exit code 124 then."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=interruptible)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: pytest writes its report, the CLIs keep finished files
        try:
            out, err = proc.communicate(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        code, err = 124, err + f"\ntimed out after {timeout:.0f} s".encode()
    return subprocess.CompletedProcess(cmd, code, out.decode(errors="replace"), err.decode(errors="replace"))


class StepFailed(Exception):
    """A step ran and did not pass; the message says why in one line."""


def _short(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("engine", "precision", "batch", "status", "reason", "per_image_ms", "images_per_s", "peak_share",
            "peak_share_note", "speedup_vs_eager_fp32", "dice_vs_eager_fp32", "e2e_over_model",
            "model_images_per_s")  # fmt: skip
    short = {k: row[k] for k in keep if row.get(k) not in (None, "", {})}
    if "per_image_ms" in short:
        short["per_image_ms"] = short["per_image_ms"].get("p50")
    return short


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu": torch.cuda.get_device_name(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    for name in ("torchvision", "onnxruntime", "tensorrt"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "?")
        except Exception as exc:  # missing, or a broken install
            env[name] = f"not usable ({type(exc).__name__})"
    try:
        import onnxruntime

        env["ort_providers"] = onnxruntime.get_available_providers()
    except Exception:
        env["ort_providers"] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        query = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                               text=True, check=False)  # fmt: skip
        env["driver"] = query.stdout.strip().splitlines()[0] if query.stdout.strip() else None
    return env


def synthesize(folder: Path, n: int, seed: int, workers: int) -> Path:
    """n synthetic Carvana-size pairs under folder/train and folder/train_masks, drawn by `workers` processes."""
    from unetkit.train.data.synth import write_synthetic

    parts = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
    # spawn, not fork: the caller runs threads (pytest's output reader), which fork would copy half-way.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(write_synthetic, folder / f"part{i}", k, CARVANA, seed * 1000 + i, False)
                   for i, k in enumerate(parts) if k]  # fmt: skip
        for future in futures:
            future.result()
    for sub in ("train", "train_masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for part in sorted(folder.glob("part*")):
            for f in (part / sub).iterdir():
                f.rename(folder / sub / f.name)
    for part in folder.glob("part*"):
        shutil.rmtree(part)
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu-check"), help="output folder (default gpu-check/)")
    p.add_argument("--budget-minutes", type=float, default=9.5, help="stop starting steps after this (default 9.5)")
    p.add_argument("--train-minutes", type=float, default=3.0, help="training time (default 3)")
    p.add_argument("--train-images", type=int, default=160, help="synthetic training pairs (default 160)")
    p.add_argument("--infer-images", type=int, default=200, help="synthetic JPEGs for unet-infer (default 200)")
    p.add_argument("--skip", default="", help="steps to leave out, comma-separated: gpu-tests, bench, train, "
                   "export, infer, cpu-tests")  # fmt: skip
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"{PROG}: error: no CUDA GPU is visible to PyTorch {torch.__version__}; run it on a GPU machine",
              file=sys.stderr)  # fmt: skip
        return 2
    args.out = args.out.resolve()  # steps run in other folders
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{PROG}: error: {args.out} is not empty; choose a new --out (GPU_CHECK_OUT=...)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    checker = Checker(args.out, 60 * args.budget_minutes, args.train_minutes, args.infer_images,
                      {s.strip() for s in args.skip.split(",") if s.strip()}, environment())  # fmt: skip
    workers = max(1, min(8, (os.cpu_count() or 2) // 4))
    try:
        with ThreadPoolExecutor(2) as background:  # synthetic data is drawn on the CPU while the tests run
            data = background.submit(synthesize, checker.scratch / "data", args.train_images, 0, workers)
            images = background.submit(synthesize, checker.scratch / "test", args.infer_images, 1, workers)
            # The later steps need about 10 minutes on an H100 (an estimate: never measured yet).
            checker.step("gpu-tests", 60, lambda s: checker.tests(s, GPU_TESTS, 600))
            drawn = checker.step("data", 0, lambda s: _wait_for(s, data, images))
        if drawn.status == "passed":
            data_dir, image_dir = data.result(), images.result() / "train"
            checker.step("bench", 60, lambda s: checker.bench(s, image_dir))
            checker.step("train", 60 * args.train_minutes + 30, lambda s: checker.train(s, data_dir))
            trained = checker.steps[-1].status == "passed"
            checker.step("export", 30, checker.export if trained else _needs("train"))
            checker.step("infer", 60, (lambda s: checker.infer(s, image_dir)) if trained else _needs("train"))
        else:
            for name in ("bench", "train", "export", "infer"):
                checker.step(name, 0, _needs("data"))
        checker.step("cpu-tests", 60, lambda s: checker.tests(s, CPU_TESTS, 0))
    finally:
        shutil.rmtree(checker.scratch, ignore_errors=True)
    print((args.out / "summary.md").read_text())
    return 0 if all(s.status == "passed" for s in checker.steps) else 1


def _wait_for(step: Step, *futures: Any) -> None:
    """The synthetic data drawn in the background, or the reason it could not be."""
    for future in futures:
        try:
            future.result()
        except Exception as exc:  # any failure to draw or write the data ends the checks that need it
            raise StepFailed(f"synthetic data: {type(exc).__name__}: {exc}") from None


def _needs(step: str) -> Any:
    def body(_: Step) -> None:
        raise StepFailed(f"needs the {step} step, which did not pass")

    return body


if __name__ == "__main__":
    raise SystemExit(main())
