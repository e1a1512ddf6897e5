"""A Triton Inference Server model repository from unet-export's artifacts.

    <repo>/<name>_onnx/config.pbtxt        backend "onnxruntime" (optionally TensorRT as its GPU accelerator, FP16)
    <repo>/<name>_onnx/1/model.onnx        best.onnx
    <repo>/<name>_trt/config.pbtxt         platform "tensorrt_plan", one plan per compute capability
    <repo>/<name>_trt/1/model.sm90.plan    best.fp16.engine built on a compute capability 9.0 GPU

A directory's name is its model's name (Triton refuses anything else). Inputs and outputs (names, data types,
dims without the batch dimension, -1 where dynamic) come from the ONNX graph; `max_batch_size` is the top of
the export's batch range; unetkit's ModelMeta travels as the `unetkit_meta` parameter (JSON), so a client
preprocesses and thresholds as unetkit does. Each version folder holds `unetkit.json`: which checkpoint and
TensorRT version it is, and which GPU built each plan. Exporting the same checkpoint again updates its
version (a plan for another GPU joins the others); another checkpoint becomes the next version.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetkit.core.atomic import atomic_path, write_text_atomic
from unetkit.core.errors import UnetkitError
from unetkit.core.meta import ModelMeta
from unetkit.infer.artifacts import read_sidecar, sidecar_path

RECORD = "unetkit.json"
META_PARAMETER = "unetkit_meta"
QUEUE_DELAY_US = 1000
ONNX_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
              7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
              13: "TYPE_UINT64", 16: "TYPE_BF16"}  # fmt: skip  # onnx.TensorProto.DataType -> Triton's DataType
TRT_TYPES = {"float": "TYPE_FP32", "half": "TYPE_FP16", "bf16": "TYPE_BF16", "int8": "TYPE_INT8",
             "int32": "TYPE_INT32", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}  # fmt: skip
# ^ tensorrt.DataType names, lower-cased as the engine sidecar records them
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TritonError(UnetkitError):
    """The repository cannot be written as asked: a bad name, or a plan Triton could not serve."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as Triton sees it: the batch dimension left out."""

    name: str
    data_type: str  # TYPE_FP32, ...
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonSettings:
    repo: Path
    name: str = "unet"
    max_batch_size: int = 8  # the top of the export's --batch range
    instances: int = 1
    trt_accelerator: bool = False  # ONNX Runtime model: TensorRT as its GPU execution accelerator, FP16

    def __post_init__(self) -> None:
        for model in (self.onnx_model, self.plan_model):
            if not _NAME.match(model):
                raise TritonError(f"--triton-name {self.name}: model names are letters, digits, '_', '.' and '-'")
        if self.instances < 1:
            raise TritonError(f"--triton-instances {self.instances}: must be at least 1")

    @property
    def onnx_model(self) -> str:
        return f"{self.name}_onnx"

    @property
    def plan_model(self) -> str:
        return f"{self.name}_trt"


@dataclass(frozen=True)
class Plan:
    """A TensorRT engine as its sidecar describes it, checked to be servable by Triton."""

    path: Path
    compute_capability: str  # "9.0"
    gpu: str
    tensorrt_version: str
    io_dtypes: Mapping[str, str]
    max_batch: int  # the top of its optimization profile's batch range
    opt_batch: int  # the batch its profile is tuned for: Triton's preferred batch size

    @property
    def filename(self) -> str:
        """model.sm90.plan for compute capability 9.0."""
        return f"model.sm{self.compute_capability.replace('.', '')}.plan"

    def record(self) -> dict[str, Any]:
        return {"file": self.filename, "gpu": self.gpu, "tensorrt_version": self.tensorrt_version,
                "max_batch": self.max_batch, "opt_batch": self.opt_batch}  # fmt: skip


def check_batch_range(batch: tuple[int, int, int], what: str) -> None:
    """Triton's dynamic batcher sends any batch from 1 to max_batch_size: a plan's range must start at 1."""
    if batch[0] != 1:
        raise TritonError(
            f"{what} takes batches {batch[0]} to {batch[2]}, but Triton sends any batch from 1 to max_batch_size "
            f"({batch[2]}): build it with a range from 1 (--batch 1:{batch[1]}:{batch[2]})"
        )


def read_plan(engine: Path, source_sha256: str, max_batch_size: int) -> Plan:
    """The engine beside the checkpoint, from its sidecar: built from this checkpoint, on a GPU it names, with a
    batch range from 1 to at least max_batch_size. Anything else is one TritonError naming the file."""
    sidecar = read_sidecar(engine)
    where = sidecar_path(engine)
    cc, gpu, trt = sidecar.get("compute_capability"), sidecar.get("gpu"), sidecar.get("tensorrt_version")
    if not (isinstance(cc, str) and re.fullmatch(r"\d+\.\d+", cc) and gpu and trt):
        raise TritonError(f"{where}: does not say which GPU and TensorRT built the engine; re-export it")
    built_from = (sidecar.get("meta") or {}).get("source_sha256")
    if built_from != source_sha256:
        raise TritonError(
            f"{engine}: built from another checkpoint than this one (sidecar source_sha256 {str(built_from)[:12]}); "
            "re-export it or remove it"
        )
    profile = sidecar.get("profile") or {}
    try:
        low, high = int(profile["min"][0]), int(profile["max"][0])
        opt = int(profile.get("opt", profile["max"])[0])
    except (KeyError, IndexError, TypeError, ValueError):
        raise TritonError(f"{where}: has no optimization profile; re-export the engine") from None
    check_batch_range((low, low, high), f"{engine.name} (built on {gpu}, compute capability {cc})")
    if high < max_batch_size:
        raise TritonError(
            f"{engine.name} (built on {gpu}) takes at most {high} images per batch, but Triton's max_batch_size "
            f"is {max_batch_size} (from --batch): re-export the engine with --batch 1:{max_batch_size}:"
            f"{max_batch_size} or pass --batch 1:{high}:{high}"
        )
    return Plan(engine, cc, str(gpu), str(trt), dict(sidecar.get("io_dtypes") or {}), high, opt)


def onnx_tensors(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs as Triton specs: the first dimension is the batch and must be dynamic."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if not dims or dims[0] != -1:
            raise TritonError(f"{path}: {value.name} has no dynamic batch dimension; Triton's batching needs one")
        if tensor.elem_type not in ONNX_TYPES:
            raise TritonError(f"{path}: {value.name} has an ONNX type ({tensor.elem_type}) Triton cannot serve")
        return TensorSpec(value.name, ONNX_TYPES[tensor.elem_type], tuple(dims[1:]))

    return [spec(v) for v in graph.input if v.name not in weights], [spec(v) for v in graph.output]


def model_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    settings: TritonSettings,
    meta: ModelMeta,
    plans: Mapping[str, str] | None = None,
    preferred: Sequence[int] = (),
) -> str:
    """config.pbtxt text: the ONNX Runtime backend, or with `plans` ({compute capability: file}) a TensorRT
    plan per GPU generation, `preferred` being the batch sizes their profiles are tuned for."""
    lines = [f"name: {_quote(name)}"]
    if plans is None:
        lines.append('backend: "onnxruntime"')
    else:
        lines.append('platform: "tensorrt_plan"')
    lines.append(f"max_batch_size: {settings.max_batch_size}")
    for kind, specs in (("input", inputs), ("output", outputs)):
        lines.append(f"{kind} [")
        entries = [
            f"  {{ name: {_quote(s.name)} data_type: {s.data_type} dims: [ {', '.join(map(str, s.dims))} ] }}"
            for s in specs
        ]
        lines.append(",\n".join(entries))
        lines.append("]")
    lines.append("version_policy: { latest: { num_versions: 1 } }")
    sizes = f"preferred_batch_size: [ {', '.join(map(str, preferred))} ] " if plans is not None and preferred else ""
    lines.append(f"dynamic_batching {{ {sizes}max_queue_delay_microseconds: {QUEUE_DELAY_US} }}")
    # KIND_AUTO: on the GPUs where there are some, else on the CPU; a plan runs only on a GPU.
    kind = "KIND_GPU" if plans is not None else "KIND_AUTO"
    lines.append(f"instance_group [ {{ count: {settings.instances} kind: {kind} }} ]")
    if plans is not None:
        # Triton picks the plan built for the serving GPU's compute capability; where none matches, it looks
        # for model.plan, which is not there, so the model fails to load instead of running a foreign plan.
        entries = [f"  {{ key: {_quote(cc)} value: {_quote(file)} }}" for cc, file in sorted(plans.items())]
        lines += ["cc_model_filenames [", ",\n".join(entries), "]"]
    if plans is None and settings.trt_accelerator:
        lines += [
            "optimization { execution_accelerators { gpu_execution_accelerator: [ {",
            '  name: "tensorrt"',
            '  parameters { key: "precision_mode" value: "FP16" }',
            '  parameters { key: "max_workspace_size_bytes" value: "4294967296" }',
            '  parameters { key: "trt_engine_cache_enable" value: "1" }',
            f'  parameters {{ key: "trt_engine_cache_path" value: {_quote("/tmp/triton_trt_cache/" + name)} }}',
            "} ] } }",
        ]
    meta_json = json.dumps(meta.to_dict(), sort_keys=True, ensure_ascii=True)
    lines.append(f"parameters {{ key: {_quote(META_PARAMETER)} value: {{ string_value: {_quote(meta_json)} }} }}")
    return "\n".join(lines) + "\n"


def write_repository(
    settings: TritonSettings,
    onnx_path: Path,
    meta: ModelMeta,
    source_sha256: str,
    plan: Plan | None = None,
    plan_onnx: Path | None = None,
) -> list[str]:
    """Write (or update) the models in `settings.repo`; returns one line per model written.

    `plan_onnx` is the ONNX file the plan was built from: its graph names the plan's inputs and outputs.
    """
    if plan is not None:  # every check before anything is written
        check_repository(settings, source_sha256, plan.compute_capability, plan.gpu, plan.tensorrt_version)
        plan_inputs, plan_outputs = onnx_tensors(plan_onnx or onnx_path)
        for spec in (*plan_inputs, *plan_outputs):
            built = TRT_TYPES.get(plan.io_dtypes.get(spec.name, ""))
            if plan.io_dtypes and built != spec.data_type:
                raise TritonError(
                    f"{plan.path}: its tensor {spec.name} is {plan.io_dtypes.get(spec.name)} but the ONNX graph says "
                    f"{spec.data_type}; re-export the engine"
                )
    lines = []
    inputs, outputs = onnx_tensors(onnx_path)
    model_dir = settings.repo / settings.onnx_model
    version, record = _version(model_dir, {"source_sha256": source_sha256})
    _copy(onnx_path, version / "model.onnx")
    write_text_atomic(version / RECORD, json.dumps({**record, "onnx": onnx_path.name}, indent=2) + "\n")
    write_text_atomic(model_dir / "config.pbtxt", model_config(settings.onnx_model, inputs, outputs, settings, meta))
    accelerator = ", TensorRT FP16 as its GPU accelerator" if settings.trt_accelerator else ""
    unverified = ", NOT verified: --no-verify" if meta.extra.get("export_verified") is False else ""
    lines.append(
        f"{model_dir}: version {version.name}, model.onnx ({onnx_path.name}{unverified}), backend "
        f"onnxruntime{accelerator}, max_batch_size {settings.max_batch_size}"
    )
    if plan is None:
        return lines
    model_dir = settings.repo / settings.plan_model
    version, record = _version(model_dir, {"source_sha256": source_sha256, "tensorrt_version": plan.tensorrt_version})
    plans: dict[str, dict[str, str]] = dict(record.get("plans", {}))
    _copy(plan.path, version / plan.filename)
    plans[plan.compute_capability] = plan.record()
    write_text_atomic(version / RECORD, json.dumps({**record, "plans": plans}, indent=2, sort_keys=True) + "\n")
    files = {cc: entry["file"] for cc, entry in plans.items()}
    preferred = preferred_batches(plans.values(), settings.max_batch_size)
    config = model_config(
        settings.plan_model, plan_inputs, plan_outputs, settings, meta, plans=files, preferred=preferred
    )
    write_text_atomic(model_dir / "config.pbtxt", config)
    every = ", ".join(f"{cc} ({entry['gpu']})" for cc, entry in sorted(plans.items()))
    lines.append(
        f"{model_dir}: version {version.name}, {plan.filename} ({plan.path.name}), platform tensorrt_plan, plans for "
        f"compute capability {every}, TensorRT {plan.tensorrt_version}, max_batch_size {settings.max_batch_size}"
    )
    return lines


def check_plans_take(plans: Mapping[str, Mapping[str, Any]], max_batch_size: int, version: Path, replaced: str) -> None:
    """TritonError when a plan the version already holds (for another compute capability than `replaced`)
    takes fewer images per batch than the config's max_batch_size: Triton would send it batches its profile
    refuses on that GPU. (Plans recorded before their batch range was recorded are not checked.)"""
    for cc, entry in sorted(plans.items()):
        top = entry.get("max_batch")
        if cc != replaced and isinstance(top, int) and top < max_batch_size:
            raise TritonError(
                f"{version / str(entry.get('file'))} (built on {entry.get('gpu')}) takes at most {top} images per "
                f"batch, but this export's max_batch_size is {max_batch_size} (from --batch): pass --batch "
                f"1:{top}:{top}, or re-export that plan with a larger range"
            )


def check_repository(
    settings: TritonSettings, source_sha256: str, compute_capability: str, gpu: str, tensorrt_version: str
) -> None:
    """Before any work: TritonError when a plan (of this checkpoint, built on `gpu` of `compute_capability` with
    this TensorRT) cannot join the repository's version it would go into: another GPU model's plan holds its
    compute capability (Triton picks plans by compute capability only), or a plan there takes smaller batches
    than this export's max_batch_size (`check_plans_take`)."""
    model_dir = settings.repo / settings.plan_model
    version, record = _version(model_dir, {"source_sha256": source_sha256, "tensorrt_version": tensorrt_version})
    plans = record.get("plans", {})
    same_cc = plans.get(compute_capability)
    if same_cc and same_cc.get("gpu") != gpu:
        file = f"model.sm{compute_capability.replace('.', '')}.plan"
        raise TritonError(
            f"{version / file}: already holds the plan for compute capability {compute_capability} built on "
            f"{same_cc.get('gpu')}, and this engine was built on {gpu}; Triton picks plans by compute capability "
            "only, so use another --triton-name or repository for it"
        )
    check_plans_take(plans, settings.max_batch_size, version, compute_capability)


def preferred_batches(entries: Any, max_batch_size: int) -> list[int]:
    """Triton's preferred_batch_size: the distinct batches the plans' profiles are tuned for (their OPT)."""
    return sorted(
        {e["opt_batch"] for e in entries if isinstance(e.get("opt_batch"), int) and e["opt_batch"] <= max_batch_size}
    )


def _version(model_dir: Path, identity: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    """The version folder to write: the latest when it holds the same checkpoint (and TensorRT version), else a
    new one after it; with the record to extend."""
    numbers = (
        sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and p.name[0] != "0")
        if model_dir.is_dir()
        else []
    )
    if not numbers:
        return model_dir / "1", dict(identity)
    latest = model_dir / str(numbers[-1])
    try:
        record = json.loads((latest / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        record = {}
    if all(record.get(key) == value for key, value in identity.items()):
        return latest, record
    return model_dir / str(numbers[-1] + 1), dict(identity)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _quote(text: str) -> str:
    """A protobuf text-format string literal (the text is ASCII: JSON is written with ensure_ascii)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
