"""Several checkpoints as one model: their probabilities averaged, as nnU-Net ensembles its folds and MONAI's
MeanEnsemble does (`unet-infer --checkpoint a.pth --checkpoint b.pth`).

The members must read images the same way and predict the same classes (input channels, classes and their
names, resize rule, normalization, threshold), run on one engine and precision, and be different weights; a
difference is one line naming both values. The average is
taken of probabilities, not logits, and handed on as the logits of that average (the logit of a mean
sigmoid, the log of a mean softmax), so tiling, TTA and every output see one model. Members run in the order
of their digests, so the same set gives the same float sums whatever order they were named in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from unetkit.core.meta import ModelMeta

from .base import Engine, EngineUnavailable

#: What every member must share, with the words that name it.
SHARED = {
    "n_classes": "classes", "in_channels": "input channels", "class_names": "class names",
    "resize_rule": "resize rule", "mean": "mean", "std": "std", "threshold": "threshold",
}  # fmt: skip
#: Probabilities are clamped this far from 0 and 1 before their logit is taken.
EPS = 1e-7


def ensemble_problem(metas: Sequence[ModelMeta], names: Sequence[str]) -> str | None:
    """Why these models cannot be averaged (the first setting they differ in, with both values), or None."""
    first = metas[0]
    for meta, name in zip(metas[1:], names[1:], strict=True):
        for attr, words in SHARED.items():
            a, b = getattr(first, attr), getattr(meta, attr)
            if a != b:
                return (f"{names[0]} and {name} differ in their {words} ({_shown(a)} and {_shown(b)}): an ensemble "
                        "averages models that read images alike and predict the same classes")  # fmt: skip
    return None


def _shown(value: Any) -> Any:
    return value.describe() if hasattr(value, "describe") else value


def runtime_problem(members: Sequence[Engine], digests: Sequence[str]) -> str | None:
    """Why these engines cannot run as one (another engine or precision among them, one checkpoint named
    twice, which would count it double), or None."""
    kinds = {(m.name, m.precision, m.input_dtype) for m in members}
    if len(kinds) > 1:
        shown = ", ".join(f"{m.source} on {m.label}" for m in members)
        return f"an ensemble runs every member with one engine and precision; these differ: {shown}"
    seen: dict[str, Engine] = {}
    for member, digest in zip(members, digests, strict=True):
        if digest in seen:
            return (f"{seen[digest].source} and {member.source} hold the same weights: an ensemble names each "
                    "model once")  # fmt: skip
        seen[digest] = member
    return None


def mean_probability_logits(logits: Sequence[torch.Tensor], n_classes: int) -> torch.Tensor:
    """The logits whose probabilities are the mean of each member's: logit(mean sigmoid) for a binary model,
    log(mean softmax) for a multi-class one (softmax of it gives the mean back)."""
    if n_classes == 1:
        p = torch.stack([torch.sigmoid(x.float()) for x in logits]).mean(0).clamp(EPS, 1 - EPS)
        return torch.log(p) - torch.log1p(-p)
    p = torch.stack([torch.softmax(x.float(), dim=1) for x in logits]).mean(0)
    return torch.log(p.clamp_min(EPS))


def ensemble_digest(digests: Sequence[str]) -> str:
    """One digest for the set of members (order-free): what the output folder records as its model."""
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


class EnsembleEngine(Engine):
    """The members' mean probability, through the Engine interface; closing it closes them."""

    def __init__(self, members: Sequence[Engine], digests: Sequence[str]) -> None:
        if len(members) < 2:
            raise EngineUnavailable("an ensemble needs at least two models")
        names = [str(m.source) for m in members]
        problem = ensemble_problem([m.meta for m in members], names) or runtime_problem(members, digests)
        if problem:
            for m in members:
                m.close()
            raise EngineUnavailable(problem)
        order = sorted(range(len(members)), key=lambda i: digests[i])
        self.members = [members[i] for i in order]
        self.digests = [digests[i] for i in order]
        first = self.members[0]
        meta = replace(first.meta, extra={**first.meta.extra, "source_sha256": ensemble_digest(self.digests)})
        super().__init__(first.device, first.precision, meta, None, first.input_dtype, first.shapes,
                         f"mean probability of {len(members)} models")  # fmt: skip
        self.name = first.name  # type: ignore[misc]  # reported as the members' engine
        self.static_shapes = any(m.static_shapes for m in self.members)  # type: ignore[misc]
        kept = [m.compiled_sizes for m in self.members if m.compiled_sizes is not None]
        self.compiled_sizes = min(kept) if kept else None  # type: ignore[misc]

    @property
    def label(self) -> str:
        return f"ensemble of {len(self.members)} x {self.members[0].label}"

    def check(self, shape: tuple[int, ...]) -> None:
        for member in self.members:
            member.check(shape)

    def check_batch(self, batch: int) -> None:
        for member in self.members:
            member.check_batch(batch)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return mean_probability_logits([m(x) for m in self.members], self.n_classes)

    def close(self) -> None:
        for member in self.members:
            member.close()
        super().close()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "members": [m.describe() for m in self.members]}
