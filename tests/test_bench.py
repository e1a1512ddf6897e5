"""unet-bench on the CPU: statistics and FLOP arithmetic by hand, the report's schema, rows, verdict, --check."""

import json
import math

import pytest
import torch

from conftest import error_lines, needs_matplotlib, needs_openvino, run_cli
from unetkit.bench.flops import counted_flops, unet_conv_flops
from unetkit.bench.runner import Row, best_row, finish_rows
from unetkit.bench.stats import images_per_second, per_image, percentile, summarize
from unetkit.core.model import UNetConfig
from unetkit.train.data.synth import write_synthetic


def test_percentiles_by_hand():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5  # halfway between the 2nd and 3rd of 1, 2, 3, 4
    assert percentile(values, 90) == pytest.approx(3.7)  # position 0.9 * 3 = 2.7 -> 3 + 0.7 * (4 - 3)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_in_milliseconds():
    s = summarize([0.010, 0.020, 0.030, 0.040])  # seconds
    assert s["p50"] == pytest.approx(25.0) and s["mean"] == pytest.approx(25.0)
    assert s["std"] == pytest.approx(math.sqrt(125.0))  # population std of 10, 20, 30, 40 ms
    assert s["cv"] == pytest.approx(math.sqrt(125.0) / 25.0) and s["n"] == 4
    img = per_image(s, 8)
    assert img["p50"] == pytest.approx(25.0 / 8) and img["cv"] == s["cv"] and img["n"] == 4
    assert images_per_second(25.0, 8) == pytest.approx(320.0)


def test_flops_by_hand_for_a_one_channel_unet():
    """base 1, 3 input channels, 16x16: every conv written out in the comment below, 2 FLOPs per MAC.

    encoder (3x3 pairs): 3->1->1 @256 px: 13824 + 4608; then 6912 at each of the four lower levels
    decoder: 2x2 transposed 1024 + 3x3 pair 9216 + 4608 at each of four levels; head 1x1: 512
    """
    config = UNetConfig(in_channels=3, n_classes=1, base_channels=1)
    expected = 18432 + 4 * 6912 + 4 * (1024 + 9216 + 4608) + 512
    assert expected == 105_984
    assert unet_conv_flops(config, 16, 16) == expected
    assert counted_flops(config, 16, 16) == expected
    assert counted_flops(config, 13, 15) == expected  # padded to 16x16 by the model, so it costs the same


@pytest.mark.parametrize(
    "config, hw",
    [
        (UNetConfig(), (1280, 1918)),
        (UNetConfig(base_channels=8, n_classes=19, bilinear=True), (100, 70)),
        (UNetConfig(base_channels=8, attention=True, deep_supervision=True), (100, 70)),
    ],
)
def test_counted_flops_match_the_layer_arithmetic(config, hw):
    assert counted_flops(config, *hw) == unet_conv_flops(config, *hw)


def test_default_unet_costs_3_6_tflop_on_a_carvana_image():
    assert counted_flops(UNetConfig(), 1280, 1918) == 3_612_554_035_200


def _row(engine, precision, batch, p50_ms):
    row = Row(engine, precision, batch)
    row.latency_ms = summarize([p50_ms / 1000])
    row.per_image_ms = per_image(row.latency_ms, batch)
    row.images_per_s = images_per_second(p50_ms, batch)
    return row


def test_speedup_throughput_share_and_verdict():
    rows = [_row("torch", "fp32", 8, 800.0), _row("trt", "fp16", 8, 80.0), Row("onnx", "fp16", 8, "unavailable", "x")]
    finish_rows(rows, flops_per_image=10**12, peaks={"fp32": 50.0, "fp16": 500.0}, target_ms=15.0)
    base, trt, missing = rows
    assert base.speedup_vs_eager_fp32 == pytest.approx(1.0) and trt.speedup_vs_eager_fp32 == pytest.approx(10.0)
    assert trt.images_per_s == pytest.approx(100.0) and trt.tflops == pytest.approx(100.0)  # 1 TFLOP x 100 img/s
    assert trt.peak_share == pytest.approx(0.2) and base.peak_share == pytest.approx(10 / 50)
    assert trt.meets_target and not base.meets_target  # 10 ms/image vs 100 ms/image against 15
    assert missing.speedup_vs_eager_fp32 is None and best_row(rows) is trt


def test_the_agreement_image_is_one_of_the_models_own_kind(tmp_path):
    """The first candidate that decodes, resized to the benchmark's image size and prepared by the model's rule;
    a file whose header reads but whose pixels do not is passed over; a synthetic car only where none decodes."""
    import numpy as np
    from PIL import Image

    from conftest import make_meta
    from unetkit.bench.runner import SYNTHETIC_CAR, agreement_input, agreement_measure
    from unetkit.core.preprocess import model_input, resize_pixels

    broken, truncated, street = tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png"
    broken.write_bytes(b"not a png")
    pixels = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(street)
    Image.fromarray(pixels).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:400])  # the header reads, the pixels do not
    meta = make_meta(scale=0.5)
    cpu = torch.device("cpu")
    x, shown = agreement_input(meta, (100, 160), cpu, [broken, truncated, street])
    expected = model_input(resize_pixels(torch.from_numpy(pixels).permute(2, 0, 1), (100, 160)), meta)[None]
    assert shown == str(street) and x.shape == (1, 3, 50, 80) and torch.equal(x, expected)
    car, what = agreement_input(meta, (100, 160), cpu, [broken, truncated])
    assert what == SYNTHETIC_CAR and car.shape == x.shape and not torch.equal(car, x)
    assert agreement_measure(1) == "Dice" and agreement_measure(3) == "share of pixels whose class agrees"


def test_agreement_is_not_claimed_where_neither_mask_has_foreground():
    """Random weights put every pixel below the threshold: a Dice of 1.0 there would measure nothing."""
    from unetkit.bench.report import Report, render_markdown, render_text
    from unetkit.bench.runner import NO_AGREEMENT, agreement_figure

    empty, car = torch.zeros(4, 4, dtype=torch.uint8), torch.eye(4, dtype=torch.uint8)
    assert agreement_figure(empty, None, 1) is None and agreement_figure(empty, empty, 1) is None
    assert agreement_figure(car, None, 1) == 1.0 and agreement_figure(empty, car, 1) == 0.0
    assert agreement_figure(car, empty, 1) == 0.0  # a mask where the reference has none: disagreement
    assert agreement_figure(empty, empty, 3) == 1.0  # multi-class: every pixel has a class to agree on
    rows = [_row("torch", "fp32", 1, 10.0)]
    finish_rows(rows, flops_per_image=10**12, peaks={}, target_ms=150.0)
    report = Report({"device": "cpu", "cpu": "test CPU", "date": "today", "torch": "x"},
                    {"model": "m", "image_hw": [1, 1], "model_hw": [1, 1], "scale": 1.0, "target_ms": 150.0},
                    10**12, {}, rows)  # fmt: skip
    assert NO_AGREEMENT in render_text(report) and f"\n{NO_AGREEMENT}\n" in render_markdown(report)
    rows[0].dice_vs_eager_fp32 = 0.99
    assert NO_AGREEMENT not in render_text(report)


def test_which_peaks_a_cpu_probes_comes_from_its_flags():
    """bf16 rows get a share of a bf16 peak where the CPU has AMX or AVX512-BF16 (OpenVINO bf16 runs there);
    an AVX2 CPU would only emulate it, so no peak (and no share) is given."""
    import torch

    from unetkit.bench.cli import peak_probed
    from unetkit.core.cpu import capabilities_from_flags

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    amx = capabilities_from_flags(["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx512_vnni"])
    avx2 = capabilities_from_flags(["avx2", "fma"])
    assert [peak_probed(p, cpu, amx) for p in ("fp32", "bf16", "fp16")] == [True, True, False]
    assert [peak_probed(p, cpu, avx2) for p in ("fp32", "bf16", "fp16")] == [True, False, False]
    assert all(peak_probed(p, cuda, avx2) for p in ("fp32", "bf16", "fp16"))


def test_peak_is_the_best_probe_and_a_share_over_100_percent_is_flagged():
    from unetkit.bench.report import Report, render_markdown, render_text
    from unetkit.bench.runner import OVER_PEAK
    from unetkit.bench.timing import best_rate

    # Three probes of 1 TFLOP per call: the one disturbed by other load (medians 4 and 2 s) does not set the peak.
    assert best_rate(1e12, [[4.0, 4.0, 9.0], [1.0, 1.0, 1.1], [2.0, 2.0, 2.0]]) == pytest.approx(1e12)
    assert best_rate(1.0, [[1.0, 3.0]]) == pytest.approx(0.5)  # the median of an even count: the mean of the middle two
    with pytest.raises(ValueError):
        best_rate(1.0, [[]])
    rows = [_row("torch", "fp32", 1, 10.0), _row("onnx", "fp32", 1, 20.0)]
    finish_rows(rows, flops_per_image=10**12, peaks={"fp32": 50.0}, target_ms=150.0)  # 100 and 50 TFLOP/s
    assert rows[0].peak_share == pytest.approx(2.0) and rows[0].peak_share_note == OVER_PEAK
    assert rows[1].peak_share == pytest.approx(1.0) and rows[1].peak_share_note == ""  # exactly the peak is not over
    report = Report({"device": "cpu", "cpu": "test CPU", "date": "today", "torch": "x"},
                    {"model": "m", "image_hw": [1, 1], "model_hw": [1, 1], "scale": 1.0, "target_ms": 150.0},
                    10**12, {"fp32": 0.0294}, rows)  # fmt: skip
    text = render_text(report)
    assert "fp32 0.0294" in text  # three significant digits: a CPU's small peak is not printed as 0.0
    assert "200.0*" in text and f"* {OVER_PEAK}" in text and "100.0 " in text
    md = render_markdown(report)
    assert "200.0\\*" in md and f"\\* {OVER_PEAK}" in md
    assert "model input 1x1 (scale 1)" in text  # a report from before the resize rules
    report.settings.update(resize="size 256x384 (HxW)", model_hw=[256, 384])
    assert "model input 384x256 (size 256x384 (HxW))" in render_text(report)
    # a batch's per-image share is not one image's latency: the verdict gives that too, in text and Markdown
    batched = [_row("torch", "fp32", 1, 120.0), _row("onnx", "fp32", 1, 100.0), _row("onnx", "fp32", 8, 480.0)]
    finish_rows(batched, flops_per_image=10**12, peaks={}, target_ms=150.0)
    report.model = batched
    verdict = report.verdict()
    assert (verdict["batch"], verdict["per_image_ms"], verdict["batch1_ms"]) == (8, 60.0, 100.0)
    note = "  (ms/image at batch 8 is its batch's time / 8; one image alone, batch 1: 100.00 ms with onnx fp32)"
    assert render_text(report).endswith(f"the 150 ms/image target\n{note}")
    assert render_markdown(report).endswith(f"the 150 ms/image target\n{note}\n")
    report.model, report.settings["scope"] = [], "e2e"  # end to end only: no row the target is judged on
    assert report.verdict()["meets_target"] is None
    assert render_text(report).endswith(
        "verdict: none (the target is judged on model-only rows; --scope e2e times none)"
    )


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, exported_checkpoint):
    out = tmp_path_factory.mktemp("bench")
    ckpt = exported_checkpoint[0] / "best.pth"
    proc = run_cli(
        "unet-bench", "--device", "cpu", "--shape", "1280x1918", "--checkpoint", ckpt, "--warmup", "1",
        "--min-iters", "3", "--min-time", "0.1", "--e2e-images", "4", "--json", out / "b.json",
        "--markdown", out / "b.md", "--plot", out / "b.png", check=True,
    )  # fmt: skip
    return out, proc


@needs_openvino
@needs_matplotlib
def test_cpu_report_json_schema_and_rows(bench_run, calib_images):
    out, _ = bench_run
    report = json.loads((out / "b.json").read_text())
    # masks are compared on the first of the checkpoint's training images, not on a car of unetkit's own
    assert report["settings"]["agreement_image"] == str(sorted((calib_images / "train").iterdir())[0])
    assert report["schema"] == "unetkit.bench/1"
    assert set(report) == {"schema", "environment", "settings", "flops_per_image", "peaks_tflops", "model", "e2e",
                           "verdict"}  # fmt: skip
    # Carvana's size at the checkpoint's scale 0.05: the 96x64 inputs it was trained on, where it finds the car
    # (at a smaller size it finds none, and no agreement could be measured)
    assert report["settings"]["image_hw"] == [1280, 1918] and report["settings"]["model_hw"] == [64, 96]
    assert report["flops_per_image"] == counted_flops(UNetConfig(base_channels=8), 64, 96)
    env = report["environment"]
    assert {"torch", "onnxruntime", "openvino", "tensorrt", "cpu", "python", "date"} <= set(env)
    caps = env["cpu_capabilities"]
    assert {"name", "bf16", "int8_dot", "amx", "avx512", "summary"} <= set(caps) and env["torch_cpu_capability"]
    assert report["settings"]["artifacts"] == "beside the checkpoint"
    rows = {(r["engine"], r["precision"], r["batch"]): r for r in report["model"]}
    assert len(rows) == 24  # twelve engines x batch 1 and 8: none silently dropped
    base = rows[("torch", "fp32", 8)]
    assert base["status"] == "ok" and base["speedup_vs_eager_fp32"] == pytest.approx(1.0)
    assert base["latency_ms"]["p50"] <= base["latency_ms"]["p90"] <= base["latency_ms"]["p99"]
    assert base["per_image_ms"]["p50"] == pytest.approx(base["latency_ms"]["p50"] / 8)
    assert base["tflops"] > 0 and base["peak_share"] > 0 and base["dice_vs_eager_fp32"] == 1.0
    onnx = rows[("onnx", "fp16", 1)]
    assert onnx["status"] == "ok" and onnx["dice_vs_eager_fp32"] >= 0.99
    assert rows[("trt", "fp16", 1)]["status"] == "unavailable" and "CUDA" in rows[("trt", "fp16", 1)]["reason"]
    assert rows[("trt", "int8", 1)]["status"] == "unavailable" and "CUDA" in rows[("trt", "int8", 1)]["reason"]
    for key in (("onnx", "int8", 8), ("openvino", "fp32", 8)):
        assert rows[key]["status"] == "ok" and rows[key]["dice_vs_eager_fp32"] >= 0.95, rows[key]
        assert rows[key]["speedup_vs_eager_fp32"] > 0 and rows[key]["images_per_s"] > 0
    assert (
        "OpenVINO" in rows[("openvino", "fp32", 1)]["detail"] and "runs f32" in rows[("openvino", "fp32", 1)]["detail"]
    )
    ov_bf16, ov_int8 = rows[("openvino", "bf16", 1)], rows[("openvino", "int8", 1)]
    if caps["bf16"]:
        assert ov_bf16["status"] == "ok"
    else:  # the row says why in one line instead of timing f32 under a bf16 label
        assert ov_bf16["status"] == "unavailable" and "bf16 is not native on this CPU" in ov_bf16["reason"]
    # OpenVINO runs the symmetric INT8 file, or refuses it where it failed the file at export (this AVX2 CPU).
    assert ov_int8["status"] == "ok" or "failed this file's verification" in ov_int8["reason"]
    eager_bf16 = rows[("torch", "bf16", 1)]
    assert (eager_bf16["status"] == "ok") == caps["bf16"]  # decided from the CPU's flags
    if not caps["bf16"]:
        assert eager_bf16["status"] == "skipped" and "BF16 is not native on this CPU" in eager_bf16["reason"]
    assert rows[("compile", "fp16", 8)]["status"] == "skipped" and "--engines" in rows[("compile", "fp16", 8)]["reason"]
    e2e = {(r["engine"], r["precision"]): r for r in report["e2e"]}
    assert e2e[("torch", "fp32")]["images"] == 4 and e2e[("torch", "fp32")]["images_per_s"] > 0
    assert set(e2e[("torch", "fp32")]["stage_ms_per_image"]) >= {"decode", "compute", "write"}
    assert report["verdict"]["meets_target"] and report["verdict"]["target_ms"] == 150.0


@needs_matplotlib
def test_cpu_report_text_markdown_and_plot(bench_run):
    out, proc = bench_run
    assert "model only" in proc.stdout and "end to end" in proc.stdout
    assert "trt fp16" in proc.stdout and "unavailable: trt runs on a CUDA GPU" in proc.stdout
    assert "verdict: fastest is" in proc.stdout and "meets the 150 ms/image target" in proc.stdout
    md = (out / "b.md").read_text()
    assert "| engine | batch | ms/batch p50 |" in md and "**End to end**" in md
    assert (out / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("target, code", [("0.001", 1), ("100000", 0)])
def test_check_turns_a_missed_target_into_an_exit_code(exported_checkpoint, target, code):
    ckpt = exported_checkpoint[0] / "best.pth"
    proc = run_cli("unet-bench", "--device", "cpu", "--shape", "128x192", "--checkpoint", ckpt, "--engines",
                   "torch:fp32", "--batch", "1", "--scope", "model", "--warmup", "1", "--min-iters", "2",
                   "--min-time", "0", "--target-ms", target, "--check")  # fmt: skip
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert ("MISSES" in proc.stdout) == (code == 1)


def test_end_to_end_leaves_out_unreadable_images_and_compares_only_like_sizes(exported_checkpoint, tmp_path):
    """An unreadable file is named and left out before any timing (so warm-up runs on images that decode),
    and images of another size than --shape get no e2e/model ratio: it would compare two resolutions."""
    images = tmp_path / "images"
    write_synthetic(tmp_path / "data", 3, (96, 64), seed=0, progress=False)
    (tmp_path / "data/train").rename(images)
    (images / "0000broken.jpg").write_bytes(b"not a jpeg")  # sorts first: it would have been the warm-up
    proc = run_cli("unet-bench", "--device", "cpu", "--shape", "128x192", "--checkpoint",
                   exported_checkpoint[0] / "best.pth", "--engines", "torch:fp32", "--batch", "1", "--warmup", "1",
                   "--min-iters", "2", "--min-time", "0", "--images", images, "--json", tmp_path / "b.json",
                   check=True)  # fmt: skip
    assert f"warning: end to end leaves out {images / '0000broken.jpg'}: cannot read image" in proc.stdout
    report = json.loads((tmp_path / "b.json").read_text())
    (row,) = report["e2e"]
    assert (row["status"], row["images"], row["failed"]) == ("ok", 3, 0)
    assert row["e2e_over_model"] is None  # 96x64 images -> 5x3 inputs; the model rows ran 10x6 (scale 0.05)
    assert report["settings"]["e2e_images"] == "3 images, model inputs 5x3 (3); 1 unreadable, left out"
    assert "e2e/model left out: these images' model inputs are not the model-only rows' 10x6" in proc.stdout
    # masks are compared on the first image of --images that reads (the broken one is passed over)
    first = sorted(p for p in images.iterdir() if p.name != "0000broken.jpg")[0]
    assert report["settings"]["agreement_image"] == str(first)
    assert f"mask agreement with eager fp32 (Dice) on {first}" in proc.stdout


def test_images_choose_the_agreement_image_of_a_model_only_run_and_e2e_claims_none(exported_checkpoint, tmp_path):
    """--images names the agreement image for --scope model too (a damaged first file is passed over, never the
    end of the run); an end-to-end-only run measures no agreement and says none."""
    images = tmp_path / "images"
    write_synthetic(tmp_path / "data", 2, (96, 64), seed=0, progress=False)
    (tmp_path / "data/train").rename(images)
    good = sorted(images.iterdir())[0]
    (images / "0000cut.jpg").write_bytes(good.read_bytes()[:300])  # the header reads, the pixels do not
    common = ["unet-bench", "--device", "cpu", "--shape", "64x96", "--checkpoint", exported_checkpoint[0] / "best.pth",
              "--engines", "torch:fp32", "--batch", "1", "--warmup", "1", "--min-iters", "2", "--min-time", "0",
              "--images", images]  # fmt: skip
    model = run_cli(*common, "--scope", "model", "--json", tmp_path / "m.json", check=True)
    assert json.loads((tmp_path / "m.json").read_text())["settings"]["agreement_image"] == str(good)
    assert f"mask agreement with eager fp32 (Dice) on {good}" in model.stdout
    e2e = run_cli(*common, "--scope", "e2e", "--json", tmp_path / "e.json", check=True)
    assert "mask agreement" not in e2e.stdout
    assert "agreement_image" not in json.loads((tmp_path / "e.json").read_text())["settings"]


@needs_openvino
def test_without_a_checkpoint_the_random_unet_is_exported_and_every_engine_compared(tmp_path):
    proc = run_cli("unet-bench", "--device", "cpu", "--shape", "64x96", "--base-channels", "4", "--engines",
                   "onnx:fp32,onnx:fp16,onnx:int8,openvino:fp32", "--batch", "1", "--scope", "model",
                   "--min-iters", "2", "--min-time", "0", "--warmup", "1", "--json", tmp_path / "b.json", cwd=tmp_path,
                   check=True)  # fmt: skip
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["settings"]["artifacts"].startswith("exported here by unet-bench (random weights: not verified")
    rows = {r["engine"] + " " + r["precision"]: r for r in report["model"]}
    assert set(rows) == {"torch fp32", "onnx fp32", "onnx fp16", "onnx int8", "openvino fp32"}
    assert all(r["status"] == "ok" for r in rows.values()), proc.stdout
    assert rows["onnx fp32"]["dice_vs_eager_fp32"] == pytest.approx(1.0, abs=1e-3)
    assert not list(tmp_path.glob("*.onnx"))  # exported into the run's scratch folder, removed after


def test_without_a_checkpoint_the_random_unet_is_said(tmp_path):
    proc = run_cli("unet-bench", "--device", "cpu", "--shape", "64x96", "--base-channels", "4", "--engines",
                   "torch:fp32", "--batch", "1", "--scope", "model", "--min-iters", "2", "--min-time", "0",
                   cwd=tmp_path, check=True)  # fmt: skip
    assert "no best.pth here: benchmarking the default U-Net (base 4) with random weights" in proc.stdout
    assert "model: default U-Net (base 4), random weights, scale 0.5" in proc.stdout
    assert "at unet-train's default input scale 0.5" in proc.stdout
    assert "random weights, scale 0.5; artifacts none (no engine here needs one)" in proc.stdout


def test_base_channels_with_a_checkpoint_is_refused(random_checkpoint, tmp_path):
    """--base-channels sizes only the random model: with a checkpoint (given, or best.pth here) it is one line."""
    proc = run_cli("unet-bench", "--checkpoint", random_checkpoint, "--base-channels", "8", "--device", "cpu")
    assert error_lines(proc) == [f"unet-bench: error: --base-channels sizes the random-weight U-Net; "
                                 f"{random_checkpoint} has its own width: leave it out"]  # fmt: skip


def test_bad_arguments_give_one_line(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/a.jpg").write_bytes(b"not a jpeg")
    for args, message in [(["--images", tmp_path / "bad", "--scope", "e2e"], f"--images {tmp_path / 'bad'}: none of "
                           f"its 1 images can be read ({tmp_path / 'bad/a.jpg'}: cannot read image"),
                          (["--shape", "big"], "--shape 'big'"), (["--batch", "0"], "--batch '0'"),
                          (["--checkpoint", tmp_path / "no.pth"], "checkpoint not found"),
                          (["--engines", "tensorflow:fp32"], "--engines 'tensorflow:fp32'"),
                          (["--engines", " , "], "--engines '': name at least one ENGINE:PRECISION"),
                          (["--scope", "e2e", "--check"], "--check judges the model-only rows against --target-ms"),
                          (["--scope", "e2e", "--plot", tmp_path / "p.png"], "--plot draws the model-only latencies: "
                           "not with --scope e2e")]:  # fmt: skip
        proc = run_cli("unet-bench", "--device", "cpu", *args)
        assert proc.returncode == 2
        [line] = error_lines(proc)
        assert message in line


@pytest.mark.gpu
def test_gpu_report_times_every_cuda_engine(exported_checkpoint, tmp_path):
    proc = run_cli("unet-bench", "--checkpoint", exported_checkpoint[0] / "best.pth", "--device", "cuda",
                   "--shape", "640x960", "--engines", "torch:fp32,torch:fp16,onnx:fp32", "--min-time", "0.2",
                   "--min-iters", "5", "--e2e-images", "16", "--json", tmp_path / "b.json", check=True)  # fmt: skip
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["environment"]["gpu"] and report["peaks_tflops"]["fp16"] > report["peaks_tflops"]["fp32"] > 0
    rows = {(r["engine"], r["precision"], r["batch"]): r for r in report["model"]}
    fp16 = rows[("torch", "fp16", 8)]
    assert fp16["status"] == "ok" and fp16["peak_memory_mb"] > 0 and fp16["dice_vs_eager_fp32"] >= 0.999
    assert all(r["status"] == "ok" for r in report["e2e"]), proc.stdout
