"""What a model is: the one list of what using a model needs, typed, checked once.

A `ModelMeta` is written into every checkpoint, every ONNX file (as `unetkit.*` metadata) and every
TensorRT engine's sidecar, and read back from each with `ModelMeta.from_dict`, so no stage keeps its own
list of required keys or reads them by string. Everything else a producer wants to record (training
arguments, per-class scores, versions, where an artifact came from) travels in `extra`, flat beside the
fields in the dict form, which is also the form the first checkpoints and ONNX files were written in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .labels import IGNORE_INDEX

#: ImageNet statistics, in [0, 1] units; stored in every model so inference never guesses.
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)
#: The seed's input scale (1918x1280 Carvana images -> 959x640 inputs): unet-train's default, and the rule of
#: the random-weight model unet-bench measures when it has no checkpoint.
RECIPE_SCALE = 0.5
MASK_KINDS = ("binary", "multiclass", "cityscapes")
RESIZE_MODES = ("scale", "size", "max_side")


class MetaError(ValueError):
    """A model description that is missing a field or holds a value no model can have."""


@dataclass(frozen=True)
class ResizeRule:
    """How an image of any size becomes a model input of (height, width): one rule for training and every
    inference path, so a model always sees what it was trained on.

    - scale: both sides times `scale` (the tutorial's rule; small images shrink with the large ones);
    - size: exactly `size` = (height, width), whatever the image's aspect;
    - max_side: the longer side becomes `max_side`, the aspect is kept (images larger and smaller alike).
    """

    mode: str = "scale"
    scale: float = 1.0
    size: tuple[int, int] | None = None
    max_side: int | None = None

    def __post_init__(self) -> None:
        if self.size is not None:
            if len(self.size) != 2:
                raise MetaError(f"invalid resize rule: input_size {list(self.size)} (needs a height and a width)")
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        problems = [
            (self.mode in RESIZE_MODES, f"resize '{self.mode}' (one of {', '.join(RESIZE_MODES)})"),
            (self.mode != "scale" or (math.isfinite(self.scale) and self.scale > 0),
             f"scale {self.scale} (must be a positive number)"),
            (self.mode != "size" or (self.size is not None and min(self.size) >= 1),
             f"input_size {self.size} (resize 'size' needs a positive height and width)"),
            (self.mode != "max_side" or (self.max_side is not None and self.max_side >= 1),
             f"max_side {self.max_side} (resize 'max_side' needs a positive side)"),
        ]  # fmt: skip
        bad = [text for ok, text in problems if not ok]
        if bad:
            raise MetaError("invalid resize rule: " + "; ".join(bad))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size is resized to (at least 1x1)."""
        if self.mode == "size":
            assert self.size is not None  # checked in __post_init__
            return self.size
        factor = self.scale if self.mode == "scale" else (self.max_side or 1) / max(height, width)
        return max(1, round(height * factor)), max(1, round(width * factor))

    def describe(self) -> str:
        if self.mode == "size":
            assert self.size is not None
            return f"size {self.size[0]}x{self.size[1]} (HxW)"  # as --size takes it; images print as WxH
        return f"max side {self.max_side}" if self.mode == "max_side" else f"scale {self.scale:g}"


@dataclass(frozen=True)
class ModelMeta:
    """How to feed a model and read its output, and how good it was."""

    n_classes: int  # output channels: 1 for binary (sigmoid), else one per class (softmax)
    scale: float  # input scale applied to an image before the model sees it (resize "scale")
    mean: tuple[float, ...] = DEFAULT_MEAN  # normalization, per channel, in [0, 1] units
    std: tuple[float, ...] = DEFAULT_STD
    threshold: float = 0.5  # binary decision threshold on the probability
    class_names: tuple[str, ...] = ()
    in_channels: int = 3
    mask_kind: str = "binary"  # binary, multiclass, or cityscapes (which also picks the palette)
    ignore_index: int = IGNORE_INDEX
    layout: str = ""  # the data layout it was trained on
    val_dice: float | None = None
    val_iou: float | None = None
    epoch: int | None = None
    resize: str = "scale"  # scale | size | max_side: see ResizeRule; descriptions without it mean scale
    input_size: tuple[int, int] | None = None  # (height, width) for resize "size"
    max_side: int | None = None  # for resize "max_side"
    extra: Mapping[str, Any] = field(default_factory=dict)

    #: Keys a stored description must hold; the rest have defaults.
    REQUIRED = ("n_classes", "scale", "mean", "std", "threshold")

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "class_names", tuple(str(v) for v in self.class_names))
        object.__setattr__(self, "extra", dict(self.extra))
        if self.input_size is not None:
            object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        if self.max_side is not None:
            object.__setattr__(self, "max_side", int(self.max_side))
        problems = [
            (self.n_classes >= 1, f"n_classes {self.n_classes} (must be at least 1)"),
            (self.in_channels >= 1, f"in_channels {self.in_channels} (must be at least 1)"),
            (math.isfinite(self.scale) and self.scale > 0, f"scale {self.scale} (must be a positive number)"),
            (math.isfinite(self.threshold) and 0 < self.threshold < 1,
             f"threshold {self.threshold} (must be in (0, 1))"),
            (len(self.mean) == self.in_channels, f"mean {list(self.mean)} (needs {self.in_channels} values)"),
            (len(self.std) == self.in_channels, f"std {list(self.std)} (needs {self.in_channels} values)"),
            (all(math.isfinite(v) and v > 0 for v in self.std), f"std {list(self.std)} (must be positive)"),
            (all(math.isfinite(v) for v in self.mean), f"mean {list(self.mean)} (must be finite)"),
            (self.mask_kind in MASK_KINDS, f"mask_kind '{self.mask_kind}' (one of {', '.join(MASK_KINDS)})"),
            ((self.mask_kind == "binary") == (self.n_classes == 1), f"mask_kind '{self.mask_kind}' with n_classes "
             f"{self.n_classes} (binary models have one output channel)"),
        ]  # fmt: skip
        bad = [text for ok, text in problems if not ok]
        if bad:
            raise MetaError("invalid model description: " + "; ".join(bad))
        ResizeRule(self.resize, self.scale, self.input_size, self.max_side)  # MetaError on an impossible rule

    @property
    def resize_rule(self) -> ResizeRule:
        """How images are resized before this model sees them (`core.preprocess.input_size`)."""
        return ResizeRule(self.resize, self.scale, self.input_size, self.max_side)

    @property
    def trained_crop(self) -> tuple[int, int] | None:
        """The (height, width) windows the model trained on (unet-train --crop), from its recorded training
        arguments; None when it trained on whole images or records none."""
        train_args = self.extra.get("train_args")
        crop = train_args.get("crop") if isinstance(train_args, dict) else None
        return (int(crop[0]), int(crop[1])) if isinstance(crop, (list, tuple)) and len(crop) == 2 else None

    @property
    def names(self) -> tuple[str, ...]:
        """Class names, made up where none were stored."""
        if self.class_names:
            return self.class_names
        return ("foreground",) if self.n_classes == 1 else tuple(f"class {i}" for i in range(self.n_classes))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able types, `extra` flat beside the fields (fields win over a same-named extra key)."""
        out = {**self.extra}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelMeta:
        """The inverse of `to_dict`; unknown keys go to `extra`. MetaError names what is missing or wrong."""
        missing = [k for k in cls.REQUIRED if k not in values]
        if missing:
            raise MetaError(f"model description lacks {', '.join(missing)}")
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in values.items() if k in known}
        extra = {k: v for k, v in values.items() if k not in known}
        try:
            kwargs["n_classes"] = int(kwargs["n_classes"])
            kwargs["scale"] = float(kwargs["scale"])
            kwargs["threshold"] = float(kwargs["threshold"])
            if "mask_kind" not in kwargs:  # the first checkpoints of multi-class models may lack it
                kwargs["mask_kind"] = "binary" if kwargs["n_classes"] == 1 else "multiclass"
            return cls(**kwargs, extra=extra)
        except MetaError:
            raise
        except (TypeError, ValueError) as exc:
            raise MetaError(f"model description holds a value of the wrong type ({exc})") from None

    def replace(self, **changes: Any) -> ModelMeta:
        """A copy with `changes` (keys that are not fields land in `extra`), checked like any other."""
        return ModelMeta.from_dict({**self.to_dict(), **changes})
