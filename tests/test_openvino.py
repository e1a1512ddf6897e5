"""What the CPU executes natively and what OpenVINO is asked to run: the pure decisions, on flag sets of real
CPUs, and the openvino engine's own account of what it ran."""

import pytest
import torch

from unetkit.bench.runner import EngineSpec, default_skip, eager_cpu_skip
from unetkit.core.cpu import capabilities_from_flags, parse_cpuinfo, torch_capability_flags
from unetkit.infer.artifacts import runtime_refusal
from unetkit.infer.engines import EngineUnavailable, canonical_precision, create_engine
from unetkit.infer.engines.openvino import choose_precision, compile_config, native_bf16
from unetkit.infer.fastest import (
    agreement_problem,
    artifact_problem,
    expected_ms,
    new_size_share,
    other_size,
    precision_problem,
)

# /proc/cpuinfo flags (abridged to what matters) of real CPUs.
ZEN3 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni vaes vpclmulqdq"  # this machine: EPYC 7xx3
ZEN4 = ZEN3 + " avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 avx512vbmi"
SKYLAKE_X = ZEN3 + " avx512f avx512dq avx512bw avx512vl avx512cd"  # AVX-512 without BF16 or VNNI
SAPPHIRE_RAPIDS = SKYLAKE_X + " avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 avx_vnni"
GRAVITON3 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp sve i8mm bf16"  # aarch64 Features

OV_AVX2 = ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]  # what OpenVINO 2026.4 reports on this machine
OV_AMX = ["FP32", "BF16", "FP16", "INT8", "BIN", "EXPORT_IMPORT"]


@pytest.mark.parametrize(
    "flags, bf16, int8_dot, amx, avx512",
    [(ZEN3, False, False, False, False), (ZEN4, True, True, False, True), (SKYLAKE_X, False, False, False, True),
     (SAPPHIRE_RAPIDS, True, True, True, True), (GRAVITON3, True, True, False, False)],
)  # fmt: skip
def test_native_low_precision_comes_from_the_flags(flags, bf16, int8_dot, amx, avx512):
    caps = capabilities_from_flags(flags.split(), "cpu")
    assert (caps.bf16, caps.int8_dot, caps.amx, caps.avx512) == (bf16, int8_dot, amx, avx512)
    assert ("no native bf16" in caps.summary()) is not bf16


def test_cpuinfo_parsing_and_the_torch_fallback():
    text = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t: other\n"
    assert parse_cpuinfo(text) == ("AMD EPYC", {"fpu", "avx2", "fma"})
    assert parse_cpuinfo("Features\t: fp asimd bf16\n")[1] == {"fp", "asimd", "bf16"}
    # PyTorch's probe names the vector width only: it never claims bf16 or VNNI.
    assert not capabilities_from_flags(torch_capability_flags("AVX512")).bf16
    assert capabilities_from_flags(torch_capability_flags("AVX512")).avx512
    assert torch_capability_flags("DEFAULT") == set()


def test_eager_bf16_on_the_cpu_runs_only_where_native():
    cpu = torch.device("cpu")
    assert eager_cpu_skip("bf16", capabilities_from_flags(ZEN4.split())) is None
    assert eager_cpu_skip("bf16", capabilities_from_flags(SAPPHIRE_RAPIDS.split())) is None
    for flags in (ZEN3, SKYLAKE_X):  # AVX-512 alone is not bf16
        reason = eager_cpu_skip("bf16", capabilities_from_flags(flags.split()))
        assert "BF16 is not native on this CPU" in reason and "--engines torch:bf16" in reason
    assert "FP16 is not native" in eager_cpu_skip("fp16", capabilities_from_flags(ZEN4.split()))
    assert eager_cpu_skip("fp16", capabilities_from_flags(SAPPHIRE_RAPIDS.split())) is None
    zen4 = capabilities_from_flags(ZEN4.split())
    assert default_skip(EngineSpec("torch", "bf16"), cpu, zen4) is None
    assert default_skip(EngineSpec("torch", "bf16"), cpu, capabilities_from_flags(ZEN3.split())) is not None


@pytest.mark.parametrize(
    "requested, file, caps, label, hint",
    [("auto", "fp32", OV_AVX2, "fp32", "f32"), ("auto", "fp32", OV_AMX, "bf16", "bf16"),
     ("fp32", "fp32", OV_AMX, "fp32", "f32"), ("f32", "fp32", OV_AMX, "fp32", "f32"),
     ("bf16", "fp32", OV_AMX, "bf16", "bf16"), ("int8", "int8", OV_AVX2, "int8", "f32"),
     ("auto", "int8", OV_AMX, "int8", "bf16"), ("fp32", "int8", OV_AMX, "int8", "f32")],
)  # fmt: skip
def test_openvino_precision_choice(requested, file, caps, label, hint):
    choice = choose_precision(requested, file, caps)
    assert (choice.label, choice.hint) == (label, hint)


def test_openvino_refuses_what_it_would_not_honour():
    assert native_bf16(OV_AMX) and not native_bf16(OV_AVX2)
    with pytest.raises(EngineUnavailable, match="bf16 is not native on this CPU") as exc:
        choose_precision("bf16", "fp32", OV_AVX2)
    assert "FP32, INT8, BIN, EXPORT_IMPORT" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(EngineUnavailable, match="unet-export --int8"):
        choose_precision("int8", "fp32", OV_AMX)
    with pytest.raises(EngineUnavailable, match="not 'fp16'"):
        choose_precision("fp16", "fp32", OV_AMX)
    assert canonical_precision("F32") == "fp32"


def test_openvino_compile_config_always_sets_the_precision():
    # OpenVINO defaults to bf16 on AVX512-BF16/AMX CPUs, so an f32 engine must say f32.
    assert compile_config("f32", False, 0) == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    assert compile_config("bf16", True, 4) == {
        "INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": 4,
    }  # fmt: skip


def test_runtime_verdicts_and_stale_artifacts():
    failed = {"runtime_checks": {"cpu": "AMD EPYC", "openvino": {"passed": False, "image_dice": 0.8,
                                                                 "criterion": "image mask Dice >= 0.99"}}}  # fmt: skip
    reason = runtime_refusal(failed, "openvino")
    assert "openvino failed this file's verification at export on AMD EPYC" in reason and "0.8" in reason
    assert runtime_refusal(failed, "onnxruntime") is None and runtime_refusal({}, "openvino") is None
    good = {"export_verified": True, "source_sha256": "abc"}
    assert artifact_problem(good, "abc") is None
    assert "stale" in artifact_problem(good, "def")
    assert "not verified" in artifact_problem({"source_sha256": "abc"}, "abc")
    assert "not verified" in artifact_problem({**good, "export_verified": False}, "abc")
    assert precision_problem("bf16", capabilities_from_flags(ZEN3.split())) is not None
    assert precision_problem("bf16", capabilities_from_flags(ZEN4.split())) is None
    assert precision_problem("int8", capabilities_from_flags(ZEN3.split())) is None
    # masks are held to export's gates: bf16 runs no exported file, so only this check stands between it and a choice
    assert agreement_problem(0.9995, "bf16") == "" and agreement_problem(0.991, "int8") == ""
    assert agreement_problem(0.9973, "bf16") == (
        "its mask agrees 0.99730 with eager FP32 here, under the 0.999 bf16 files are held to"
    )


def test_openvino_engine_reports_what_it_ran_and_splits_batches_in_order(exported_checkpoint):
    pytest.importorskip("openvino")
    ckpt = exported_checkpoint[0] / "best.pth"
    with create_engine("openvino", checkpoint=ckpt, device="cpu", precision="fp32") as engine:
        x = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(0))
        batched = engine(x).clone()  # 3 images dealt to the streams, one request each
        singles = torch.cat([engine(x[i : i + 1]).clone() for i in range(3)])
        assert torch.allclose(batched, singles, atol=1e-5)
        ov = engine.describe()["openvino"]
        assert ov["precision_hint"] == "f32" and ov["inference_precision"] == "f32"
        assert sum(ov["conv_precisions"].values()) == 23 and set(ov["conv_precisions"]) == {"f32"}  # 19 + 4 up
        assert ov["streams"] >= 1 and ov["threads"] >= 1
        assert "runs f32, convolutions 23 f32" in engine.detail
    with create_engine("openvino", checkpoint=ckpt, device="cpu") as auto:  # auto: bf16 only where native
        assert auto.precision == ("bf16" if native_bf16(auto.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
                                  else "fp32")  # fmt: skip


def test_fastest_counts_a_first_call_at_a_new_size_for_the_images_that_bring_one():
    """OpenVINO compiles one model per input size: on a folder of many sizes its warm time hides that cost (QA: chosen
    at 0.9 ms/image, ran at 136), so each image that brings a new size pays the first call."""
    assert new_size_share([(64, 96)] * 10) == 0.0  # one size: nothing to count, no extra call
    assert new_size_share([(64, 96), (60, 90), (64, 96), (53, 80)]) == 0.75
    assert new_size_share([]) == 0.0
    # OpenVINO keeps 6 compiled sizes: 8 sizes met in turn are compiled again every time (an LRU cache's worst case)
    turns = [(64, 96 + k) for k in range(8)] * 3
    assert new_size_share(turns) == pytest.approx(8 / 24) and new_size_share(turns, 6) == 1.0
    assert new_size_share(turns, 8) == pytest.approx(8 / 24)  # all fit: each compiled once
    assert new_size_share([(1, 1), (2, 2), (1, 1), (3, 3), (1, 1)], 2) == pytest.approx(3 / 5)  # recently used stays
    assert expected_ms(1.0, 120.0, 1.0) == 120.0 and expected_ms(1.0, 120.0, 0.5) == pytest.approx(60.5)
    assert expected_ms(10.0, 8.0, 1.0) == 10.0  # a new size no slower than a warm call costs nothing extra
    assert expected_ms(10.0, None, 1.0) == 10.0
    x = torch.zeros(1, 3, 64, 96)
    assert other_size(x).shape == (1, 3, 48, 96) and other_size(torch.zeros(1, 3, 20, 30)).shape == (1, 3, 36, 30)
    assert other_size(x, 32).shape == (1, 3, 96, 96)  # 64 rows are not more than twice 32: padded instead
