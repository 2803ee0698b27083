"""The manifest's records, each parsed from its JSON section and checked once, by `ManifestFields`.

A damaged or hand-edited manifest is one sentence naming the field, not a traceback (or a silent division by a
zero std) later.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np

from .errors import UserError
from .files import sha256_file
from .imports import require
from .model.specs import is_random

# GroupViT's evaluation normalises with the ImageNet statistics (mmseg's Normalize, to_rgb=True).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class ManifestFields:
    """Reads one manifest's fields, each with the type and range a runtime relies on."""

    def __init__(self, source: str):
        self.source = source

    def bad(self, name: str, why: str) -> NoReturn:
        raise UserError(f"{self.source}: {name} {why}; re-run `groupvit-edge export`")

    def number(self, name: str, value, *, whole=False, positive=False, nonzero=False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (whole and not float(value).is_integer()):
            self.bad(name, f"is {value!r}, not a {'whole ' if whole else ''}number")
        if positive and value <= 0:
            self.bad(name, f"is {value}, not positive")
        if nonzero and value == 0:
            self.bad(name, "is 0")
        return value

    def whole(self, name: str, value) -> int:
        return int(self.number(name, value, whole=True, positive=True))

    def mapping(self, name: str, value) -> dict:
        if not isinstance(value, dict):
            self.bad(name, f"is {type(value).__name__}, not an object")
        return value

    def text(self, name: str, value, what: str = "a file name") -> str:
        if not isinstance(value, str) or not value:
            self.bad(name, f"is {value!r}, not {what}")
        return value

    def numbers(self, name: str, value, count: int, **rules) -> tuple:
        if not isinstance(value, list) or len(value) != count:
            self.bad(name, f"is {value!r}, not {'three' if count == 3 else 'two'} numbers")
        return tuple(self.number(name, item, **rules) for item in value)

    def tensors(self, name: str, value) -> list[dict]:
        if not isinstance(value, list) or not value:
            self.bad(name, f"is {value!r}, not a list of tensors")
        for spec in value:
            self._tensor(name, self.mapping(name, spec))
        return value

    def _tensor(self, name: str, spec: dict) -> None:
        if not isinstance(spec.get("name"), str):
            self.bad(name, f"has a tensor without a name ({spec!r})")
        try:
            if not isinstance(spec.get("dtype"), str):
                raise TypeError
            np.dtype(spec["dtype"])
        except TypeError:
            self.bad(name, f"give {spec['name']} the type {spec.get('dtype')!r}, which is not a numpy dtype")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(
                isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d > 0) for d in shape):
            self.bad(name, f"give {spec['name']} the shape {shape!r}, not positive sizes and axis names")


@dataclass(frozen=True)
class Preprocess:
    """How pixels are prepared; identical for every backend."""
    height: int = 448
    width: int = 448
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: str = "slide"            # "slide": short side → crop size, sliding window; "letterbox": fit + pad
    stride: tuple[int, ...] = (224, 224)

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize, "stride": list(self.stride)}

    @classmethod
    def parse(cls, fields: ManifestFields, value) -> Preprocess:
        d = fields.mapping("preprocess", value)
        height, width = (fields.whole(f"preprocess.{key}", d.get(key)) for key in ("height", "width"))
        mean = fields.numbers("preprocess.mean", d.get("mean"), 3)
        std = fields.numbers("preprocess.std", d.get("std"), 3, nonzero=True)
        stride = tuple(int(v) for v in fields.numbers("preprocess.stride", d.get("stride"), 2, whole=True,
                                                      positive=True))
        if d.get("resize") not in ("slide", "letterbox"):
            fields.bad("preprocess.resize", f"is {d.get('resize')!r}, not slide or letterbox")
        return cls(height, width, mean, std, d["resize"], stride)


@dataclass(frozen=True)
class ModelRecord:
    """The weights an artifact was exported from."""
    id: str
    weights_sha256: str
    config: dict

    @classmethod
    def parse(cls, fields: ManifestFields, value) -> ModelRecord:
        d = fields.mapping("model", value)
        return cls(fields.text("model.id", d.get("id"), "text"),
                   fields.text("model.weights_sha256", d.get("weights_sha256"), "text"), d.get("config") or {})

    @property
    def weights_are_random(self) -> bool:
        """Exported from seeded random weights: the graphs run, but no class name means anything to them."""
        return is_random(self.id)


@dataclass(frozen=True)
class OutlierNote:
    """An INT8 reader the export found activation outliers in (quantization.outliers), as the manifest keeps it."""
    node: str
    channels: tuple[int, ...]
    ratio: float
    in_float: bool                        # kept in float to hold the drift budget
    split: bool = False                   # its outlier channels computed in float, the others in INT8

    def describe(self) -> str:
        shown = ", ".join(str(c) for c in self.channels[:6]) + (", …" if len(self.channels) > 6 else "")
        kept = "; kept in float" if self.in_float else "; its outlier channels in float" if self.split else ""
        return f"{self.node} (channels {shown}: {self.ratio:.0f}x the median{kept})"


@dataclass(frozen=True)
class PrecisionInfo:
    """What the artifact's image graph computes in, and which parts stayed float."""
    target: str
    compute: str
    kept_float: tuple[str, ...]
    quantized_nodes: tuple[str, ...] | str     # a sentence where the backend chooses (TensorRT implicit INT8)
    inference_precision: str | None       # the OpenVINO hint its drift was measured with
    backends: tuple[str, ...]             # the only backends that run it; empty: every backend
    outliers: tuple[OutlierNote, ...] = ()

    @classmethod
    def parse(cls, fields: ManifestFields, value) -> PrecisionInfo:
        d = fields.mapping("precision", value)
        return cls(fields.text("precision.target", d.get("target"), "a target name"), d.get("compute") or "fp32",
                   tuple(d.get("kept_float") or ()), cls._nodes(d.get("quantized_nodes")),
                   d.get("inference_precision"), tuple(d.get("backends") or ()), cls._outliers(d))

    @staticmethod
    def _outliers(d: dict) -> tuple[OutlierNote, ...]:
        in_float, split = set(d.get("float_readers") or ()), set(d.get("split_readers") or ())
        return tuple(OutlierNote(str(r.get("node")), tuple(int(c) for c in r.get("channels") or ()),
                                 float(r.get("ratio") or 0.0), r.get("node") in in_float, r.get("node") in split)
                     for r in d.get("outlier_readers") or () if isinstance(r, dict))

    @staticmethod
    def _nodes(value) -> tuple[str, ...] | str:
        return value if isinstance(value, str) else tuple(value or ())


@dataclass(frozen=True)
class TokenizerRecord:
    dir: str
    files: tuple[str, ...]
    sha256: dict[str, str]

    @classmethod
    def parse(cls, fields: ManifestFields, value) -> TokenizerRecord:
        d = fields.mapping("tokenizer", value)
        files = d.get("files", [])
        if not isinstance(files, list):
            fields.bad("tokenizer.files", f"is {files!r}, not a list")
        return cls(fields.text("tokenizer.dir", d.get("dir")),
                   tuple(fields.text("tokenizer.files", name) for name in files), d.get("sha256") or {})


@dataclass(frozen=True)
class VocabularyRecord:
    file: str
    sha256: str | None
    labels: tuple[str, ...]
    template_set: str | None = None     # None, like averaging: written before vocabularies recorded them
    averaging: str | None = None

    @classmethod
    def parse(cls, fields: ManifestFields, value) -> VocabularyRecord:
        d = fields.mapping("vocabulary", value)
        return cls(fields.text("vocabulary.file", d.get("file")), d.get("sha256"), tuple(d.get("labels") or ()),
                   d.get("template_set"), d.get("averaging"))


@dataclass(frozen=True)
class GraphRecord:
    """One graph file in the manifest (ONNX, IR or engine): what it is, how to feed it and what it returns."""
    file: str
    format: str
    precision: str
    inputs: list[dict]
    outputs: list[dict]
    extra: dict = field(default_factory=dict)      # e.g. IR "weights", opset, engine build plan
    sha256: str | None = None                      # as read from a manifest; written by `to_dict`
    weights_sha256: str | None = None

    @property
    def weights(self) -> str | None:
        return self.extra.get("weights")

    @property
    def inference_precision(self) -> str | None:
        """An IR's: the OpenVINO inference precision its drift was measured with."""
        return self.extra.get("inference_precision")

    def to_dict(self, directory: Path, with_hashes: bool = True) -> dict:
        """The manifest entry; `with_hashes=False` for working manifests that runtimes read during export."""
        data = {"file": self.file, "format": self.format, "precision": self.precision,
                "inputs": self.inputs, "outputs": self.outputs, **self.extra}
        if with_hashes:
            data["sha256"] = sha256_file(directory / self.file)
            if self.weights is not None:
                data["weights_sha256"] = sha256_file(directory / self.weights)
        return data

    @classmethod
    def from_onnx(cls, directory: Path, file: str, precision: str, extra: dict) -> GraphRecord:
        """The record of the ONNX graph `directory / file`, its tensors read from the graph itself."""
        onnx = require("onnx", extra="export")
        graph = onnx.load(str(directory / file), load_external_data=False).graph

        def specs(values):
            return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                     "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

        return cls(file=file, format="onnx", precision=precision, inputs=specs(graph.input),
                   outputs=specs(graph.output), extra=dict(extra))

    @classmethod
    def parse(cls, fields: ManifestFields, name: str, value) -> GraphRecord:
        d = fields.mapping(name, value)
        known = ("file", "format", "precision", "inputs", "outputs", "sha256", "weights_sha256")
        return cls(fields.text(f"{name}.file", d.get("file")), d.get("format") or "?", d.get("precision") or "fp32",
                   fields.tensors(f"{name}.inputs", d.get("inputs")),
                   fields.tensors(f"{name}.outputs", d.get("outputs")),
                   {key: item for key, item in d.items() if key not in known}, d.get("sha256"),
                   d.get("weights_sha256"))
