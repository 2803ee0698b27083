"""The artifact directory and its manifest: everything a runtime needs to use the graphs correctly.

An artifact is a directory holding `manifest.json`, the graphs it names (image.onnx, text.onnx, later IR and
engines), the tokenizer files and optionally a precomputed vocabulary. Runtimes refuse an artifact whose manifest
is missing, corrupt, from a newer schema, or written for another backend, with a one-line reason.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .errors import UserError
from .version import __version__

SCHEMA_VERSION = 2           # 2: every file the manifest names carries its sha256
MANIFEST_NAME = "manifest.json"
TUNED_NAME = "tuned.json"        # written by `tune` on the device; ours, though not in the manifest
# GroupViT's evaluation normalises with the ImageNet statistics (mmseg's Normalize, to_rgb=True).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class _Fields:
    """Reads one manifest's fields, each with the type and range a runtime relies on: a damaged or hand-edited
    manifest is one sentence naming the field, not a traceback (or a silent division by a zero std) later."""

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
    def parse(cls, fields: _Fields, value) -> Preprocess:
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
    def parse(cls, fields: _Fields, value) -> ModelRecord:
        d = fields.mapping("model", value)
        return cls(fields.text("model.id", d.get("id"), "text"),
                   fields.text("model.weights_sha256", d.get("weights_sha256"), "text"), d.get("config") or {})


@dataclass(frozen=True)
class PrecisionInfo:
    """What the artifact's image graph computes in, and which parts stayed float."""
    target: str
    compute: str
    kept_float: tuple[str, ...]
    quantized_nodes: tuple[str, ...] | str     # a sentence where the backend chooses (TensorRT implicit INT8)
    inference_precision: str | None       # the OpenVINO hint its drift was measured with

    @classmethod
    def parse(cls, fields: _Fields, value) -> PrecisionInfo:
        d = fields.mapping("precision", value)
        return cls(fields.text("precision.target", d.get("target"), "a target name"), d.get("compute") or "fp32",
                   tuple(d.get("kept_float") or ()), cls._nodes(d.get("quantized_nodes")),
                   d.get("inference_precision"))

    @staticmethod
    def _nodes(value) -> tuple[str, ...] | str:
        return value if isinstance(value, str) else tuple(value or ())


@dataclass(frozen=True)
class TokenizerRecord:
    dir: str
    files: tuple[str, ...]
    sha256: dict[str, str]

    @classmethod
    def parse(cls, fields: _Fields, value) -> TokenizerRecord:
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

    @classmethod
    def parse(cls, fields: _Fields, value) -> VocabularyRecord:
        d = fields.mapping("vocabulary", value)
        return cls(fields.text("vocabulary.file", d.get("file")), d.get("sha256"), tuple(d.get("labels") or ()))


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
    def parse(cls, fields: _Fields, name: str, value) -> GraphRecord:
        d = fields.mapping(name, value)
        known = ("file", "format", "precision", "inputs", "outputs", "sha256", "weights_sha256")
        return cls(fields.text(f"{name}.file", d.get("file")), d.get("format") or "?", d.get("precision") or "fp32",
                   fields.tensors(f"{name}.inputs", d.get("inputs")),
                   fields.tensors(f"{name}.outputs", d.get("outputs")),
                   {key: item for key, item in d.items() if key not in known}, d.get("sha256"),
                   d.get("weights_sha256"))


@dataclass
class Manifest:
    """The manifest: `data` is the JSON as written; the records are its fields, parsed and checked once, here."""
    data: dict[str, Any]
    directory: Path | None = None
    toolkit_version: str = field(init=False)
    created: str = field(init=False)
    model: ModelRecord = field(init=False)
    preprocess: Preprocess = field(init=False)
    patch_size: int = field(init=False)
    logit_scale: float = field(init=False)
    num_groups: int = field(init=False)
    embed_dim: int = field(init=False)
    graphs: dict[str, GraphRecord] = field(init=False)
    engines: dict[str, GraphRecord] = field(init=False)
    precision: PrecisionInfo = field(init=False)
    tokenizer: TokenizerRecord | None = field(init=False)
    vocabulary: VocabularyRecord | None = field(init=False)

    def __post_init__(self):
        source = str(self.directory / MANIFEST_NAME) if self.directory else "the in-memory manifest"
        fields = _Fields(source)
        data = self.data
        self.model = ModelRecord.parse(fields, data.get("model"))
        self.preprocess = Preprocess.parse(fields, data.get("preprocess"))
        self.patch_size = fields.whole("patch_size", data.get("patch_size"))
        self.logit_scale = float(fields.number("logit_scale", data.get("logit_scale"), positive=True))
        self.num_groups = fields.whole("num_groups", data.get("num_groups"))
        self.embed_dim = fields.whole("embed_dim", data.get("embed_dim"))
        self.toolkit_version = fields.text("toolkit_version", data.get("toolkit_version"), "a version")
        self.created = fields.text("created", data.get("created"), "a date")
        self.graphs = {role: GraphRecord.parse(fields, f"graphs.{role}", record)
                       for role, record in fields.mapping("graphs", data.get("graphs")).items()}
        self.engines = {role: GraphRecord.parse(fields, f"engines.{role}", record)
                        for role, record in fields.mapping("engines", data.get("engines") or {}).items()}
        self.precision = PrecisionInfo.parse(fields, data.get("precision"))
        self.tokenizer = None if data.get("tokenizer") is None else TokenizerRecord.parse(fields, data["tokenizer"])
        self.vocabulary = None if data.get("vocabulary") is None else \
            VocabularyRecord.parse(fields, data["vocabulary"])
        self._check_sizes(fields)

    def _check_sizes(self, fields: _Fields) -> None:
        pre = self.preprocess
        if pre.height % self.patch_size or pre.width % self.patch_size:
            fields.bad("preprocess.height/width", f"({pre.height}x{pre.width}) are not multiples of the patch size "
                                                  f"{self.patch_size}")
        if "image" in self.graphs:
            shape = self.graphs["image"].inputs[0]["shape"]
            if len(shape) != 4 or shape[2:] != [pre.height, pre.width]:
                fields.bad("graphs.image.inputs", f"take {shape}, not the preprocess size {pre.height}x{pre.width}")

    @property
    def target(self) -> str:
        return self.precision.target

    @property
    def tensorrt(self) -> dict | None:
        """What the engines were built with (TensorRT version, device, build plan), read by the TensorRT runtime."""
        return self.data.get("tensorrt")

    @property
    def calibration(self) -> dict | None:
        return self.data.get("calibration")

    @property
    def validation(self) -> dict | None:
        return self.data.get("validation")

    def graph_path(self, graph: str) -> Path:
        return self._resolve(self.graphs[graph].file, f"the {graph} graph's file")

    def weights_path(self, graph: str) -> Path:
        weights = self.graphs[graph].weights
        if weights is None:
            raise UserError(f"{self.directory}/{MANIFEST_NAME} names no weights file for its {graph} graph; "
                            f"re-run `groupvit-edge export`")
        return self._resolve(weights, f"the {graph} graph's weights")

    def engine_path(self, graph: str) -> Path:
        return self._resolve(self.engines[graph].file, f"the {graph} engine")

    def _resolve(self, relative: str, what: str) -> Path:
        # In-memory manifests (the PyTorch reference) hold absolute paths and no directory.
        if self.directory is None:
            return Path(relative)
        return inside_artifact(self.directory, relative, what)

    def tokenizer_source(self) -> Path | None:
        """The tokenizer to load: the one BPE file the manifest names, or the directory of its vocab.json +
        merges.txt — never another file that happens to lie in the folder."""
        if self.tokenizer is None:
            return None
        if len(self.tokenizer.files) == 1:
            return self._resolve(f"{self.tokenizer.dir}/{self.tokenizer.files[0]}", "the tokenizer file")
        return self._resolve(self.tokenizer.dir, "the tokenizer directory")

    def vocabulary_path(self) -> Path | None:
        return self._resolve(self.vocabulary.file, "the vocabulary") if self.vocabulary else None

    def files(self) -> list[tuple[str, str, str | None]]:
        """(what, relative path, sha256) of every file the manifest names: graphs, IR weights, engines,
        tokenizer files and the precomputed vocabulary."""
        named: list[tuple[str, str, str | None]] = []
        for role, record in self.graphs.items():
            what = f"{role.split('_')[0]} graph, {record.format}"
            named.append((what, record.file, record.sha256))
            if record.weights is not None:
                named.append((f"{what} weights", record.weights, record.weights_sha256))
        for role, record in self.engines.items():
            named.append((f"{role} engine", record.file, record.sha256))
        if self.tokenizer:
            named += [("tokenizer file", f"{self.tokenizer.dir}/{name}", self.tokenizer.sha256.get(name))
                      for name in self.tokenizer.files]
        if self.vocabulary:
            named.append(("vocabulary", self.vocabulary.file, self.vocabulary.sha256))
        return named

    def verify(self) -> None:
        """Every named file lies inside the artifact and has the sha256 the manifest records; else a UserError."""
        for what, relative, expected in self.files():
            path = self._resolve(relative, what)
            if not path.is_file():
                raise UserError(f"{self.directory} is missing {relative} ({what}) that its manifest names; "
                                f"re-run `groupvit-edge export`")
            if expected is None:
                raise UserError(f"{self.directory}/{MANIFEST_NAME} records no sha256 for {relative} ({what}), so it "
                                f"cannot be verified; re-run `groupvit-edge export`")
            if sha256_file_cached(path) != expected:
                raise UserError(f"{path} ({what}) does not match the sha256 its manifest records: the file was "
                                f"changed or damaged after export; re-run `groupvit-edge export`")

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False) + "\n"


def new_manifest_data(*, model_id: str, weights_sha256: str, config: dict, preprocess: Preprocess,
                      patch_size: int, logit_scale: float, num_groups: int, embed_dim: int) -> dict:
    """The model half of a manifest; exporters add graphs, precision, calibration and validation."""
    return {
        "schema_version": SCHEMA_VERSION,
        "toolkit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"id": model_id, "weights_sha256": weights_sha256, "config": config},
        "preprocess": preprocess.to_dict(),
        "patch_size": patch_size,
        "logit_scale": logit_scale,
        "num_groups": num_groups,
        "embed_dim": embed_dim,
        "graphs": {},
        "precision": {"target": "reference", "compute": "fp32", "kept_float": [], "quantized_nodes": []},
        "calibration": None,
        "validation": None,
    }


REQUIRED_KEYS = ("schema_version", "toolkit_version", "created", "model", "preprocess", "patch_size", "logit_scale",
                 "num_groups", "embed_dim", "graphs", "precision")


def read_manifest(directory: str | Path, verify: bool = True) -> Manifest:
    """The artifact's manifest, parsed and checked once, with every file it names checked to lie inside the
    artifact and, unless `verify=False`, to have its recorded sha256 (hashed once per file version in a process).
    A schema-1 manifest (before files carried their sha256) parses, but cannot be verified."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise UserError(f"artifact {directory} does not exist: pass a directory made by `groupvit-edge export`")
    if not path.is_file():
        raise UserError(f"{directory} has no {MANIFEST_NAME}: it is not a groupvit-edge artifact; "
                        f"re-run `groupvit-edge export`")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is corrupt ({error}); re-run `groupvit-edge export`") from None
    if not isinstance(data, dict) or any(key not in data for key in REQUIRED_KEYS):
        missing = [key for key in REQUIRED_KEYS if not isinstance(data, dict) or key not in data]
        raise UserError(f"{path} lacks {', '.join(missing)}; re-run `groupvit-edge export`")
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"{path}: schema_version is {version!r}, not a whole number; re-run `groupvit-edge export`")
    if version > SCHEMA_VERSION:
        raise UserError(f"{path} has schema {version}, newer than this groupvit-edge understands "
                        f"({SCHEMA_VERSION}): upgrade groupvit-edge")
    manifest = Manifest(data, directory)
    if "image" not in manifest.graphs:
        _Fields(str(path)).bad("graphs", "has no image graph")
    if verify and version < SCHEMA_VERSION:
        raise UserError(f"{path} has schema {version}, written before artifacts recorded the sha256 of every file, "
                        f"so it cannot be verified: re-run `groupvit-edge export`")
    if verify:
        manifest.verify()
    return manifest


def owned_entries(directory: Path) -> set[Path] | None:
    """The paths (relative) an artifact's manifest accounts for, or None when `directory` holds no readable
    manifest: what export may replace, and nothing else."""
    try:
        data = json.loads((Path(directory) / MANIFEST_NAME).read_text())
        named = Manifest(data, Path(directory)).files()    # any schema: an older artifact is still ours to replace
    except (OSError, ValueError, TypeError, KeyError, AttributeError, UserError):
        return None
    return {Path(MANIFEST_NAME), Path(TUNED_NAME), *(Path(relative) for _, relative, _ in named)}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# (device, inode, size, mtime, ctime) → sha256. Any write changes ctime, which no user can set back, so a file
# that still has the same identity has the same bytes: opening an artifact again in one process hashes nothing.
_VERIFIED: dict[tuple, str] = {}


def sha256_file_cached(path: Path) -> str:
    stat = path.stat()
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if identity not in _VERIFIED:
        _VERIFIED[identity] = sha256_file(path)
    return _VERIFIED[identity]


def inside_artifact(directory: Path, relative, what: str) -> Path:
    """`directory / relative`, refused unless it is a relative path that stays inside the artifact (symlinks
    followed): a manifest must not make a runtime open /proc/self/environ or ../../other/image.onnx."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        raise UserError(f"{directory}/{MANIFEST_NAME} names {what} as {relative!r}, not a path inside the artifact: "
                        f"refused; re-run `groupvit-edge export`")
    path = directory / relative
    root = directory.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise UserError(f"{directory}/{MANIFEST_NAME} names {what} as {relative!r}, which lies outside the "
                        f"artifact: refused; re-run `groupvit-edge export`")
    return path
