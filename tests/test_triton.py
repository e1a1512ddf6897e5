"""unet-export --triton: a model repository Triton's own ModelConfig parses, agreeing with the ONNX graph, and
the example HTTP client's pre/post-processing against unetkit's own functions (no server needed)."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import error_lines, run_cli
from unetkit.core import load_checkpoint
from unetkit.core.labels import probabilities, to_labels
from unetkit.core.meta import ModelMeta
from unetkit.core.metrics import mask_agreement
from unetkit.core.preprocess import model_input
from unetkit.export.triton import (
    Plan,
    TritonError,
    TritonSettings,
    check_repository,
    read_plan,
    write_repository,
)
from unetkit.infer.artifacts import sha256_file
from unetkit.infer.transforms import to_size
from unetkit.train.data.synth import random_car, render

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (dev)")
from google.protobuf import json_format, text_format  # noqa: E402  # protobuf comes with tritonclient

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}
CLIENT = Path(__file__).resolve().parents[1] / "examples" / "triton_client.py"


def parse(model_dir: Path):
    """config.pbtxt as Triton reads it: protobuf text format into inference.ModelConfig."""
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def graph_io(path: Path) -> list[tuple[str, str, list[int]]]:
    """(name, Triton type, dims without the batch) of an ONNX file's inputs and outputs, read here directly."""
    g = onnx.load(str(path)).graph
    out = []
    for v in [*g.input, *g.output]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        assert dims[0] == -1  # dynamic batch
        out.append((v.name, ONNX_TO_TRITON[t.elem_type], dims[1:]))
    return out


def config_io(cfg) -> list[tuple[str, str, list[int]]]:
    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in [*cfg.input, *cfg.output]]


def meta_of(cfg) -> ModelMeta:
    return ModelMeta.from_dict(json.loads(cfg.parameters["unetkit_meta"].string_value))


def fake_engine(folder: Path, source_sha256: str, cc="8.0", gpu="NVIDIA A100-SXM4-80GB", batch=(1, 8, 8), **change):
    """An engine file as unet-export leaves it on a GPU machine: plan bytes (opaque here) and its sidecar."""
    engine = folder / "best.fp16.engine"
    engine.write_bytes(f"TensorRT plan built on {gpu}".encode())
    sidecar = {
        "format_version": 1, "tensorrt_version": "10.13.0", "gpu": gpu, "compute_capability": cc,
        "precision": "fp16", "io_dtypes": {"image": "float", "logits": "float"},
        "profile": {"input": "image", "min": [batch[0], 3, 32, 32], "opt": [batch[1], 3, 64, 96],
                    "max": [batch[2], 3, 1280, 1920]},
        "meta": {"n_classes": 1, "scale": 0.5, "mean": [0.5] * 3, "std": [0.2] * 3, "threshold": 0.5,
                 "source_sha256": source_sha256},
        **change,
    }  # fmt: skip
    Path(f"{engine}.json").write_text(json.dumps(sidecar))
    return engine


@pytest.fixture(scope="module")
def exported(exported_checkpoint):
    folder, _ = exported_checkpoint
    return folder, sha256_file(folder / "best.pth")


@pytest.fixture(scope="module")
def cli_repo(tmp_path_factory, trained_checkpoint):
    """`unet-export --triton` through the real CLI on the CPU (no engine here)."""
    folder = tmp_path_factory.mktemp("triton_cli")
    ckpt = folder / "best.pth"
    shutil.copy(trained_checkpoint, ckpt)
    proc = run_cli("unet-export", ckpt, "--device", "cpu", "--no-progress", "--no-verify", "--triton", folder / "repo",
                   "--triton-trt-accelerator", "--triton-instances", "2", check=True)  # fmt: skip
    return folder, proc


# ---- the repository ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_writes_a_repository_that_triton_parses(cli_repo):
    folder, proc = cli_repo
    model_dir = folder / "repo" / "unet_onnx"
    cfg = parse(model_dir)
    assert cfg.name == model_dir.name == "unet_onnx"  # Triton refuses a name other than the directory's
    assert cfg.backend == "onnxruntime" and cfg.max_batch_size == 8  # the top of --batch 1:8:8
    assert (model_dir / "1" / "model.onnx").read_bytes() == (folder / "best.onnx").read_bytes()
    assert config_io(cfg) == graph_io(model_dir / "1" / "model.onnx")
    assert config_io(cfg) == [("image", "TYPE_FP32", [3, -1, -1]), ("logits", "TYPE_FP32", [1, -1, -1])]
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 1000
    (group,) = cfg.instance_group
    assert group.count == 2 and model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_AUTO"
    (accelerator,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert cfg.version_policy.latest.num_versions == 1
    meta, (_, stored) = meta_of(cfg), load_checkpoint(folder / "best.pth")
    assert (meta.scale, meta.mean, meta.std, meta.threshold, meta.n_classes) == (
        stored.scale, stored.mean, stored.std, stored.threshold, stored.n_classes
    )  # fmt: skip
    assert meta.extra["source_sha256"] == sha256_file(folder / "best.pth")
    assert not (folder / "repo" / "unet_trt").exists()
    assert (f"triton: {model_dir}: version 1, model.onnx (best.onnx, NOT verified: --no-verify), backend "
            "onnxruntime") in proc.stdout  # fmt: skip
    assert "triton: no TensorRT plan (unet_trt): no engine was built" in proc.stdout


def test_plans_go_in_per_compute_capability_and_new_checkpoints_as_new_versions(tmp_path, exported):
    folder, sha = exported
    meta = load_checkpoint(folder / "best.pth")[1]
    settings = TritonSettings(tmp_path / "repo", "cars", max_batch_size=8)
    a100 = read_plan(fake_engine(tmp_path, sha, batch=(1, 4, 8)), sha, 8)
    write_repository(settings, folder / "best.onnx", meta, sha, a100, folder / "best.fp16.onnx")
    trt_dir = tmp_path / "repo" / "cars_trt"
    assert (trt_dir / "1" / "model.sm80.plan").read_bytes() == b"TensorRT plan built on NVIDIA A100-SXM4-80GB"
    h100 = read_plan(fake_engine(tmp_path, sha, cc="9.0", gpu="NVIDIA H100 80GB HBM3"), sha, 8)
    lines = write_repository(settings, folder / "best.onnx", meta, sha, h100, folder / "best.fp16.onnx")
    cfg = parse(trt_dir)
    assert cfg.name == trt_dir.name and cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8
    assert dict(cfg.cc_model_filenames) == {"8.0": "model.sm80.plan", "9.0": "model.sm90.plan"}
    assert sorted(p.name for p in (trt_dir / "1").glob("*.plan")) == ["model.sm80.plan", "model.sm90.plan"]
    assert config_io(cfg) == graph_io(folder / "best.fp16.onnx")
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]  # each plan's profile's OPT
    (group,) = cfg.instance_group
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"
    assert meta_of(cfg).threshold == meta.threshold
    assert "plans for compute capability 8.0 (NVIDIA A100-SXM4-80GB), 9.0 (NVIDIA H100 80GB HBM3)" in lines[1]
    assert parse(tmp_path / "repo" / "cars_onnx").name == "cars_onnx"

    # another checkpoint: the next version of both models, the earlier ones kept
    other = "0" * 64
    plan = Plan(a100.path, "8.0", a100.gpu, a100.tensorrt_version, a100.io_dtypes, 8, 8)
    write_repository(settings, folder / "best.onnx", meta, other, plan, folder / "best.fp16.onnx")
    assert sorted(p.name for p in trt_dir.iterdir() if p.is_dir()) == ["1", "2"]
    assert dict(parse(trt_dir).cc_model_filenames) == {"8.0": "model.sm80.plan"}
    assert sorted(p.name for p in (tmp_path / "repo" / "cars_onnx").iterdir() if p.is_dir()) == ["1", "2"]


def test_a_plan_for_the_same_capability_from_another_gpu_is_refused(tmp_path, exported):
    folder, sha = exported
    meta = load_checkpoint(folder / "best.pth")[1]
    settings = TritonSettings(tmp_path / "repo")
    write_repository(settings, folder / "best.onnx", meta, sha, read_plan(fake_engine(tmp_path, sha), sha, 8))
    a30 = read_plan(fake_engine(tmp_path, sha, cc="8.0", gpu="NVIDIA A30"), sha, 8)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "repo").rglob("*")}
    with pytest.raises(TritonError, match=r"already holds the plan for compute capability 8\.0 built on NVIDIA A100"):
        write_repository(settings, folder / "best.onnx", meta, sha, a30)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "repo").rglob("*")} == before  # refused before any write


def test_an_engine_from_a_gpu_machine_goes_in_from_beside_the_checkpoint(tmp_path, trained_checkpoint):
    """The engine a GPU machine left beside the checkpoint is served when this export builds none, whatever
    --out-dir says (--no-trt leaves it out); a plan that cannot join the repository is refused before any file
    is exported."""
    ckpt = tmp_path / "best.pth"
    shutil.copy(trained_checkpoint, ckpt)
    fake_engine(tmp_path, sha256_file(ckpt))
    args = ["--device", "cpu", "--no-progress", "--no-verify", "--triton", tmp_path / "repo"]
    proc = run_cli("unet-export", ckpt, *args, "--no-trt", "--out-dir", tmp_path / "out0", check=True)
    assert not (tmp_path / "repo/unet_trt").exists()
    proc = run_cli("unet-export", ckpt, *args, "--out-dir", tmp_path / "out", check=True)
    assert "best.fp16.engine was built before, on NVIDIA A100-SXM4-80GB" in proc.stdout
    assert (tmp_path / "repo/unet_trt/1/model.sm80.plan").exists()
    fake_engine(tmp_path, sha256_file(ckpt), gpu="NVIDIA A30")
    proc = run_cli("unet-export", ckpt, *args, "--out-dir", tmp_path / "out2")
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "already holds the plan for compute capability 8.0 built on NVIDIA A100-SXM4-80GB" in line
    assert not (tmp_path / "out2").exists()


def test_a_plan_that_takes_smaller_batches_than_a_new_max_batch_size_is_refused(tmp_path, exported):
    """An A100 plan for batches up to 4 is in; an H100 export for up to 8 would give the shared config
    max_batch_size 8, which Triton would send the A100 plan too: refused, by the check made before any work."""
    folder, sha = exported
    meta = load_checkpoint(folder / "best.pth")[1]
    a100 = read_plan(fake_engine(tmp_path, sha, batch=(1, 4, 4)), sha, 4)
    write_repository(TritonSettings(tmp_path / "repo", max_batch_size=4), folder / "best.onnx", meta, sha, a100)
    record = json.loads((tmp_path / "repo/unet_trt/1/unetkit.json").read_text())
    assert record["plans"]["8.0"]["max_batch"] == 4 and record["plans"]["8.0"]["opt_batch"] == 4
    wide = TritonSettings(tmp_path / "repo", max_batch_size=8)
    message = (r"unet_trt/1/model\.sm80\.plan \(built on NVIDIA A100-SXM4-80GB\) takes at most 4 images per batch, "
               r"but this export's max_batch_size is 8 \(from --batch\): pass --batch 1:4:4")  # fmt: skip
    with pytest.raises(TritonError, match=message):
        check_repository(wide, sha, "9.0", "NVIDIA H100 80GB HBM3", "10.13.0")
    check_repository(
        wide, sha, "8.0", "NVIDIA A100-SXM4-80GB", "10.13.0"
    )  # a new A100 plan replaces it: nothing to refuse
    check_repository(
        wide, sha, "9.0", "NVIDIA H100 80GB HBM3", "10.14.0"
    )  # another TensorRT: a new version, without the A100 plan
    h100 = read_plan(fake_engine(tmp_path, sha, cc="9.0", gpu="NVIDIA H100 80GB HBM3"), sha, 8)
    with pytest.raises(TritonError, match=message):
        write_repository(wide, folder / "best.onnx", meta, sha, h100)
    assert not (tmp_path / "repo/unet_trt/1/model.sm90.plan").exists()
    write_repository(TritonSettings(tmp_path / "repo", max_batch_size=4), folder / "best.onnx", meta, sha, h100)
    assert list(parse(tmp_path / "repo/unet_trt").dynamic_batching.preferred_batch_size) == [4]  # 8 > max 4


@pytest.mark.parametrize(
    "change, message",
    [
        ({"source": "f" * 64}, "best.fp16.engine: built from another checkpoint than this one"),
        (
            {"batch": (1, 4, 4)},
            "best.fp16.engine (built on NVIDIA A100-SXM4-80GB) takes at most 4 images per batch, "
            "but Triton's max_batch_size is 8 (from --batch)",
        ),
        ({"batch": (2, 8, 8)}, "takes batches 2 to 8, but Triton sends any batch from 1 to max_batch_size (8)"),
        ({"gpu": ""}, "best.fp16.engine.json: does not say which GPU and TensorRT built the engine"),
    ],
)
def test_an_engine_triton_cannot_serve_is_one_line_before_work(tmp_path, trained_checkpoint, change, message):
    """The engine beside the checkpoint was built elsewhere (a GPU machine); this machine builds none."""
    ckpt = tmp_path / "best.pth"
    shutil.copy(trained_checkpoint, ckpt)
    sha = change.pop("source", sha256_file(ckpt))
    fake_engine(tmp_path, sha, **change)
    proc = run_cli("unet-export", ckpt, "--device", "cpu", "--no-progress", "--triton", tmp_path / "repo")
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert line.startswith("unet-export: error: ") and message in line
    assert not (tmp_path / "repo").exists() and not (tmp_path / "best.onnx").exists()


def test_a_bad_model_name_is_one_line(tmp_path, trained_checkpoint):
    proc = run_cli("unet-export", trained_checkpoint, "--out-dir", tmp_path, "--device", "cpu", "--triton",
                   tmp_path / "repo", "--triton-name", "my model")  # fmt: skip
    assert proc.returncode == 2
    assert error_lines(proc) == [
        "unet-export: error: --triton-name my model: model names are letters, digits, '_', '.' and '-'"
    ]


# ---- the example client -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    spec = importlib.util.spec_from_file_location("triton_client", CLIENT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["triton_client"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def served(tmp_path_factory, exported):
    """The repository's ONNX model and its config as Triton's HTTP API returns it (snake_case JSON)."""
    folder, sha = exported
    repo = tmp_path_factory.mktemp("served") / "repo"
    write_repository(TritonSettings(repo), folder / "best.onnx", load_checkpoint(folder / "best.pth")[1], sha)
    cfg = json_format.MessageToDict(parse(repo / "unet_onnx"), preserving_proto_field_name=True)
    return repo / "unet_onnx" / "1" / "model.onnx", cfg


def test_client_preprocessing_is_unetkits_within_one_pixel_level(client, served):
    _, config = served
    meta = client.unetkit_meta(config)
    rng = np.random.default_rng(0)
    rgb = render(random_car(rng), rng, 1918, 1280)[0]
    x = client.preprocess(rgb, meta)
    ours = model_input(torch.from_numpy(rgb).permute(2, 0, 1), ModelMeta.from_dict(meta)).numpy()
    assert x.shape == ours.shape == (3, 64, 96) and x.dtype == np.float32  # scale 0.05
    levels = np.abs(x - ours) * (np.asarray(meta["std"]).reshape(3, 1, 1) * 255)
    assert levels.max() <= 1.0 + 1e-3 and levels.mean() < 0.25
    for rule, shape in (({"resize": "size", "input_size": [48, 80]}, (3, 48, 80)),
                        ({"resize": "max_side", "max_side": 120}, (3, 80, 120))):  # fmt: skip
        other = ModelMeta.from_dict({**meta, **rule})
        x = client.preprocess(rgb, other.to_dict())
        ours = model_input(torch.from_numpy(rgb).permute(2, 0, 1), other).numpy()
        assert x.shape == ours.shape == shape, rule
        assert (np.abs(x - ours) * (np.asarray(meta["std"]).reshape(3, 1, 1) * 255)).max() <= 1.0 + 1e-3


def test_client_postprocessing_is_unetkits(client, served):
    _, config = served
    meta = client.unetkit_meta(config)
    logits = np.random.default_rng(1).normal(0, 3, (1, 40, 60)).astype(np.float32)
    mask = client.postprocess(logits, meta, (300, 451))
    prob = to_size(probabilities(torch.from_numpy(logits)), (300, 451))
    ours = to_labels(prob, meta["threshold"]).numpy()
    near = (prob[0] - meta["threshold"]).abs().numpy() < 1e-5  # float rounding can only matter here
    assert mask.shape == ours.shape and mask.dtype == np.uint8
    assert np.array_equal(mask[~near], ours[~near]) and near.mean() < 1e-3
    three = np.random.default_rng(2).normal(0, 3, (3, 10, 12)).astype(np.float32)
    expect = to_labels(to_size(probabilities(torch.from_numpy(three)), (25, 31)), 0.5).numpy()
    assert np.array_equal(client.postprocess(three, meta, (25, 31)), expect)


def test_client_masks_match_unet_infer_through_the_served_graph(client, served, tmp_path):
    """ONNX Runtime on the repository's model.onnx stands in for Triton's onnxruntime backend."""
    import onnxruntime as ort

    from unetkit.infer.predictor import Predictor

    model, config = served
    meta = client.unetkit_meta(config)
    rng = np.random.default_rng(3)
    rgb = render(random_car(rng), rng, 1918, 1280)[0]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": client.preprocess(rgb, meta)[None]})[0][0]
    mask = client.postprocess(logits, meta, rgb.shape[:2])
    with Predictor(model, engine="onnx", device="cpu", batch=1, workers=1) as predictor:
        ours = predictor.predict(rgb)
    assert mask.shape == ours.shape == (1280, 1918)
    assert mask.any() and mask_agreement(mask, ours, 1) > 0.99


def test_client_errors_are_one_line_and_come_before_the_server(tmp_path):
    """A missing image is named before any connection is tried (port 9 on loopback has no server)."""
    proc = subprocess.run([sys.executable, CLIENT, tmp_path / "nosuch.jpg", tmp_path / "m.png", "--url",
                           "127.0.0.1:9"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"triton_client: error: [Errno 2] No such file or directory: '{tmp_path / 'nosuch.jpg'}'"
    ]
    assert not (tmp_path / "m.png").exists()
