"""Writing a benchmark report: terminal table, JSON with stable keys, Markdown, and a latency plot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unetkit.core.atomic import atomic_path, write_text_atomic
from unetkit.core.errors import UnetkitError

from .e2e import E2ERow
from .runner import NO_AGREEMENT, OVER_PEAK, SYNTHETIC_CAR, Row, best_row

SCHEMA = "unetkit.bench/1"
MODEL_COLUMNS = ("engine", "batch", "ms/batch p50", "p90", "p99", "ms/img p50", "img/s", "mem MB", "vs fp32",
                 "Dice", "TFLOP/s", "% peak", "cv %", "target")  # fmt: skip
E2E_COLUMNS = ("engine", "batch", "images", "failed", "img/s", "e2e/model", "decode", "upload", "compute",
               "download", "write", "decoder")  # fmt: skip


@dataclass
class Report:
    environment: dict[str, Any]
    settings: dict[str, Any]
    flops_per_image: int
    peaks_tflops: dict[str, float]
    model: list[Row] = field(default_factory=list)
    e2e: list[E2ERow] = field(default_factory=list)

    def verdict(self) -> dict[str, Any]:
        best = best_row(self.model)
        target = self.settings["target_ms"]
        if best is None:  # meets_target None: not judged (--scope e2e times no model-only row)
            judged = self.settings.get("scope") != "e2e"
            return {
                "engine": None,
                "per_image_ms": None,
                "target_ms": target,
                "meets_target": False if judged else None,
            }
        alone = best_row(self.model, batch=1)  # one image's latency, which a per-image share of a batch is not
        return {
            "engine": best.label,
            "batch": best.batch,
            "per_image_ms": best.per_image_ms["p50"],
            "target_ms": target,
            "meets_target": bool(best.meets_target),
            "batch1_engine": alone.label if alone else None,
            "batch1_ms": alone.per_image_ms["p50"] if alone else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "environment": self.environment,
            "settings": self.settings,
            "flops_per_image": self.flops_per_image,
            "peaks_tflops": self.peaks_tflops,
            "model": [r.to_dict() for r in self.model],
            "e2e": [r.to_dict() for r in self.e2e],
            "verdict": self.verdict(),
        }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _share(r: Row) -> str:
    """The share of peak in percent; one over 100 % is marked (*) and explained under the table."""
    if r.peak_share is None:
        return "-"
    return f"{100 * r.peak_share:.1f}" + ("*" if r.peak_share_note else "")


def _footnotes(rows: list[Row]) -> list[str]:
    notes = []
    if any(r.peak_share_note for r in rows):
        notes.append(f"* {OVER_PEAK} (other load slowed it); this run's shares of peak are not reliable")
    if any(r.status == "ok" and r.dice_vs_eager_fp32 is None for r in rows):
        notes.append(NO_AGREEMENT)
    return notes


def model_cells(r: Row) -> list[str]:
    if r.status != "ok":
        return [r.label, str(r.batch), f"{r.status}: {r.reason}"]
    lat, img = r.latency_ms, r.per_image_ms
    return [
        r.label, str(r.batch), _fmt(lat["p50"], ".2f"), _fmt(lat["p90"], ".2f"), _fmt(lat["p99"], ".2f"),
        _fmt(img["p50"], ".2f"), _fmt(r.images_per_s, ".2f"), _fmt(r.peak_memory_mb, ".0f"),
        _fmt(r.speedup_vs_eager_fp32, ".2f") + "x", _fmt(r.dice_vs_eager_fp32, ".4f"), _fmt(r.tflops, ".3g"),
        _share(r), _fmt(100 * lat["cv"]),
        "meets" if r.meets_target else "misses",
    ]  # fmt: skip


def e2e_cells(r: E2ERow) -> list[str]:
    if r.status != "ok":
        return [r.label, str(r.batch), f"{r.status}: {r.reason}"]
    stages = [_fmt(r.stage_ms_per_image.get(k)) for k in ("decode", "upload", "compute", "download", "write")]
    ratio = "-" if r.e2e_over_model is None else f"{100 * r.e2e_over_model:.0f}%"
    return [r.label, str(r.batch), str(r.images), str(r.failed), _fmt(r.images_per_s, ".2f"), ratio, *stages,
            r.decoder]  # fmt: skip


def _table(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    """Aligned columns; a row shorter than the header (an unavailable engine) runs its reason to the end."""
    full = [r for r in rows if len(r) == len(columns)]
    widths = [max([len(c), *(len(r[i]) for r in full)]) for i, c in enumerate(columns)]
    widths[0] = max([widths[0], *(len(r[0]) for r in rows)])

    def line(cells: list[str] | tuple[str, ...]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in pairs)

    lines = [line(columns)]
    for r in rows:
        if len(r) == len(columns):
            lines.append(line(r))
        else:
            lines.append("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), *r[2:]]))
    return lines


def _header(report: Report) -> list[str]:
    env, s = report.environment, report.settings
    resize = s.get("resize") or f"scale {s['scale']:g}"  # reports from before the resize rules said only scale
    caps = env.get("cpu_capabilities") or {}
    where = env.get("gpu") or f"{env.get('cpu')} ({caps.get('summary', 'flags unknown')})"
    peaks = ", ".join(f"{k} {v:.3g}" for k, v in report.peaks_tflops.items())
    lines = [
        f"unet-bench on {where} ({env['device']}), {env['date']}; torch {env['torch']}, onnxruntime "
        f"{env.get('onnxruntime')}, OpenVINO {env.get('openvino') or 'not installed'}, TensorRT "
        f"{env.get('tensorrt') or 'not installed'}"
        + (f", CUDA {env.get('cuda')}, driver {env.get('driver')}, TF32 convolutions {env.get('tf32_conv')}"
           if env.get("gpu") else ""),
        f"model: {s['model']}; artifacts {s.get('artifacts', 'beside the checkpoint')}",
        f"image {s['image_hw'][1]}x{s['image_hw'][0]} (WxH) -> model input "
        f"{s['model_hw'][1]}x{s['model_hw'][0]} ({resize}); "
        f"{report.flops_per_image / 1e12:.3g} TFLOP "
        f"per image (counted)",
        f"matmul peak measured now (TFLOP/s, best of several probes): {peaks}",
    ]  # fmt: skip
    if report.model:  # reports from before the agreement image was chosen measured it on the synthetic car
        measure = s.get("agreement", "Dice")
        lines.append(f"mask agreement with eager fp32 ({measure}) on {s.get('agreement_image', SYNTHETIC_CAR)}")
    return lines


def _e2e_notes(settings: dict[str, Any]) -> list[str]:
    """What the end-to-end rows ran on, and why e2e/model is left out when it would compare two sizes."""
    notes = [f"  images: {settings['e2e_images']}"] if settings.get("e2e_images") else []
    if settings.get("e2e_same_input") is False:
        h, w = settings["model_hw"]
        notes.append(f"  e2e/model left out: these images' model inputs are not the model-only rows' {w}x{h}")
    return notes


def render_text(report: Report) -> str:
    lines = [*_header(report), "", "model only (inputs on the device; latency per batch and per image):"]
    lines += _table(MODEL_COLUMNS, [model_cells(r) for r in report.model])
    lines += _footnotes(report.model)
    if report.e2e:
        lines += ["", "end to end (JPEG files in, masks written; busy ms per image by stage):"]
        lines += _table(E2E_COLUMNS, [e2e_cells(r) for r in report.e2e])
        lines += _e2e_notes(report.settings)
    lines += ["", *verdict_lines(report)]
    return "\n".join(lines)


def verdict_lines(report: Report) -> list[str]:
    """The verdict against the target, and for a batch's per-image share the batch-1 latency beside it."""
    v = report.verdict()
    if v["meets_target"] is None:
        return ["verdict: none (the target is judged on model-only rows; --scope e2e times none)"]
    if v["engine"] is None:
        return [f"verdict: no engine ran; target {v['target_ms']:g} ms/image not met"]
    word = "meets" if v["meets_target"] else "MISSES"
    lines = [f"verdict: fastest is {v['engine']} at batch {v['batch']}: {v['per_image_ms']:.2f} ms/image, {word} "
             f"the {v['target_ms']:g} ms/image target"]  # fmt: skip
    if v["batch"] != 1 and v["batch1_ms"] is not None:
        lines.append(f"  (ms/image at batch {v['batch']} is its batch's time / {v['batch']}; one image alone, "
                     f"batch 1: {v['batch1_ms']:.2f} ms with {v['batch1_engine']})")  # fmt: skip
    return lines


def render_markdown(report: Report) -> str:
    def table(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
        out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for r in rows:
            cells = r if len(r) == len(columns) else [*r[:2], " ".join(r[2:]), *[""] * (len(columns) - 3)]
            out.append("| " + " | ".join(c.replace("|", "/").replace("*", "\\*") for c in cells) + " |")
        return out

    lines = [f"- {line}" for line in _header(report)]
    lines += ["", "**Model only**", "", *table(MODEL_COLUMNS, [model_cells(r) for r in report.model])]
    # \* : a footnote mark, not a Markdown bullet
    lines += [f"\n\\{note}" if note.startswith("*") else f"\n{note}" for note in _footnotes(report.model)]
    if report.e2e:
        lines += ["", "**End to end**", "", *table(E2E_COLUMNS, [e2e_cells(r) for r in report.e2e])]
        for note in _e2e_notes(report.settings):
            lines += ["", note.strip()]
    lines += ["", *verdict_lines(report)]
    return "\n".join(lines) + "\n"


def write_json(report: Report, path: Path) -> None:
    write_text_atomic(path, json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")


def write_markdown(report: Report, path: Path) -> None:
    write_text_atomic(path, render_markdown(report))


def write_plot(report: Report, path: Path) -> None:
    """Per-image p50 latency (bars, p90 as whiskers) per engine and batch size, with the target line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UnetkitError("--plot needs matplotlib: pip install 'unetkit[plot]'") from None
    ok = [r for r in report.model if r.status == "ok"]
    if not ok:
        raise UnetkitError("--plot: no engine ran, nothing to plot")
    labels = list(dict.fromkeys(r.label for r in ok))
    batches = sorted({r.batch for r in ok})
    width = 0.8 / len(batches)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(labels)), 4.0))
    for i, b in enumerate(batches):
        rows = {r.label: r for r in ok if r.batch == b}
        xs = [j + (i - (len(batches) - 1) / 2) * width for j, lab in enumerate(labels) if lab in rows]
        p50 = [rows[lab].per_image_ms["p50"] for lab in labels if lab in rows]
        p90 = [rows[lab].per_image_ms["p90"] for lab in labels if lab in rows]
        ax.bar(
            xs, p50, width, label=f"batch {b}", yerr=[[0] * len(p50), [h - m for h, m in zip(p90, p50, strict=True)]]
        )
    ax.axhline(
        report.settings["target_ms"], color="red", linestyle="--", label=f"target {report.settings['target_ms']:g} ms"
    )
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set_ylabel("ms per image (p50, whisker p90)")
    env = report.environment
    h, w = report.settings["image_hw"]
    ax.set_title(f"U-Net, {w}x{h} images, on {env.get('gpu') or env['cpu']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
