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
from typing import Any

import numpy as np

from .errors import UserError

SCHEMA_VERSION = 2           # 2: every file the manifest names carries its sha256
MANIFEST_NAME = "manifest.json"
TUNED_NAME = "tuned.json"        # written by `tune` on the device; ours, though not in the manifest
# GroupViT's evaluation normalises with the ImageNet statistics (mmseg's Normalize, to_rgb=True).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class Preprocess:
    """How pixels are prepared; identical for every backend."""
    height: int = 448
    width: int = 448
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "slide"            # "slide": short side → crop size, sliding window; "letterbox": fit + pad
    stride: tuple[int, int] = (224, 224)

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize, "stride": list(self.stride)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(height=int(d["height"]), width=int(d["width"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   resize=d["resize"], stride=tuple(d["stride"]))


@dataclass
class Manifest:
    """The parsed manifest. `data` is the whole JSON; the properties are the fields every runtime reads."""
    data: dict[str, Any]
    directory: Path | None = None

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.data["preprocess"])

    @property
    def logit_scale(self) -> float:
        return float(self.data["logit_scale"])

    @property
    def patch_size(self) -> int:
        return int(self.data["patch_size"])

    @property
    def graphs(self) -> dict[str, dict]:
        return self.data["graphs"]

    @property
    def target(self) -> str:
        return self.data["precision"]["target"]

    def graph_path(self, graph: str, key: str = "file") -> Path:
        return self._resolve(self.graphs[graph][key], f"the {graph} graph's {key}")

    def engine_path(self, graph: str) -> Path:
        return self._resolve(self.data["engines"][graph]["file"], f"the {graph} engine")

    def _resolve(self, relative: str, what: str) -> Path:
        # In-memory manifests (the PyTorch reference) hold absolute paths and no directory.
        if self.directory is None:
            return Path(relative)
        return inside_artifact(self.directory, relative, what)

    def tokenizer_source(self) -> Path | None:
        """The tokenizer to load: the one BPE file the manifest names, or the directory of its vocab.json +
        merges.txt — never another file that happens to lie in the folder."""
        entry = self.data.get("tokenizer")
        if not entry:
            return None
        files = entry.get("files") or []
        if len(files) == 1:
            return self._resolve(f"{entry['dir']}/{files[0]}", "the tokenizer file")
        return self._resolve(entry["dir"], "the tokenizer directory")

    def vocabulary_path(self) -> Path | None:
        entry = self.data.get("vocabulary")
        return self._resolve(entry["file"], "the vocabulary") if entry else None

    def files(self) -> list[tuple[str, str, str | None]]:
        """(what, relative path, sha256) of every file the manifest names: graphs, IR weights, engines,
        tokenizer files and the precomputed vocabulary."""
        named = []
        for role, record in self.graphs.items():
            what = f"{role.split('_')[0]} graph, {record.get('format', '?')}"
            named.append((what, record["file"], record.get("sha256")))
            if "weights" in record:
                named.append((f"{what} weights", record["weights"], record.get("weights_sha256")))
        for role, record in (self.data.get("engines") or {}).items():
            named.append((f"{role} engine", record["file"], record.get("sha256")))
        tokenizer = self.data.get("tokenizer")
        if tokenizer:
            digests = tokenizer.get("sha256") or {}
            named += [("tokenizer file", f"{tokenizer['dir']}/{name}", digests.get(name))
                      for name in tokenizer.get("files", [])]
        vocabulary = self.data.get("vocabulary")
        if vocabulary:
            named.append(("vocabulary", vocabulary["file"], vocabulary.get("sha256")))
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
    from . import __version__
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
    """The artifact's manifest, with every file it names checked to lie inside the artifact and, unless
    `verify=False`, to have its recorded sha256 (hashed once per file version in a process)."""
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
    if int(data["schema_version"]) > SCHEMA_VERSION:
        raise UserError(f"{path} has schema {data['schema_version']}, newer than this groupvit-edge understands "
                        f"({SCHEMA_VERSION}): upgrade groupvit-edge")
    if int(data["schema_version"]) < SCHEMA_VERSION:
        raise UserError(f"{path} has schema {data['schema_version']}, written before artifacts recorded the "
                        f"sha256 of every file, so it cannot be verified: re-run `groupvit-edge export`")
    _check_fields(data, path)
    manifest = Manifest(data, directory)
    if verify:
        manifest.verify()
    return manifest


def _check_fields(data: dict, path: Path) -> None:
    """Every field a runtime reads, with the type and range it relies on: a damaged or hand-edited manifest is a
    one-sentence error naming the field, not a traceback (or a silent division by a zero std) later."""
    def bad(field: str, why: str):
        raise UserError(f"{path}: {field} {why}; re-run `groupvit-edge export`")

    def number(field: str, value, *, whole=False, positive=False, nonzero=False):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (whole and not float(value).is_integer()):
            bad(field, f"is {value!r}, not a {'whole ' if whole else ''}number")
        if positive and value <= 0:
            bad(field, f"is {value}, not positive")
        if nonzero and value == 0:
            bad(field, "is 0")

    def mapping(field: str, value) -> dict:
        if not isinstance(value, dict):
            bad(field, f"is {type(value).__name__}, not an object")
        return value

    def text(field: str, value, what: str = "a file name"):
        if not isinstance(value, str) or not value:
            bad(field, f"is {value!r}, not {what}")

    preprocess = mapping("preprocess", data["preprocess"])
    for key in ("height", "width"):
        number(f"preprocess.{key}", preprocess.get(key), whole=True, positive=True)
    number("patch_size", data["patch_size"], whole=True, positive=True)
    if preprocess["height"] % data["patch_size"] or preprocess["width"] % data["patch_size"]:
        bad("preprocess.height/width", f"({preprocess['height']}x{preprocess['width']}) are not multiples of the "
                                       f"patch size {data['patch_size']}")
    for key, nonzero in (("mean", False), ("std", True)):
        values = preprocess.get(key)
        if not isinstance(values, list) or len(values) != 3:
            bad(f"preprocess.{key}", f"is {values!r}, not three numbers")
        for value in values:
            number(f"preprocess.{key}", value, nonzero=nonzero)
    stride = preprocess.get("stride")
    if not isinstance(stride, list) or len(stride) != 2:
        bad("preprocess.stride", f"is {stride!r}, not two numbers")
    for value in stride:
        number("preprocess.stride", value, whole=True, positive=True)
    if preprocess.get("resize") not in ("slide", "letterbox"):
        bad("preprocess.resize", f"is {preprocess.get('resize')!r}, not slide or letterbox")
    number("logit_scale", data["logit_scale"], positive=True)
    number("num_groups", data["num_groups"], whole=True, positive=True)
    number("embed_dim", data["embed_dim"], whole=True, positive=True)
    text("toolkit_version", data["toolkit_version"], "a version")
    text("created", data["created"], "a date")
    model = mapping("model", data["model"])
    for key in ("id", "weights_sha256"):
        text(f"model.{key}", model.get(key), "text")
    text("precision.target", mapping("precision", data["precision"]).get("target"), "a target name")
    graphs = mapping("graphs", data["graphs"])
    if "image" not in graphs:
        bad("graphs", "has no image graph")
    engines = mapping("engines", data.get("engines") or {})
    for name, record in [*((f"graphs.{role}", r) for role, r in graphs.items()),
                         *((f"engines.{role}", r) for role, r in engines.items())]:
        record = mapping(name, record)
        text(f"{name}.file", record.get("file"))
        for side in ("inputs", "outputs"):
            specs = record.get(side)
            if not isinstance(specs, list) or not specs:
                bad(f"{name}.{side}", f"is {specs!r}, not a list of tensors")
            for spec in specs:
                _check_tensor(f"{name}.{side}", mapping(f"{name}.{side}", spec), bad)
    shape = graphs["image"]["inputs"][0]["shape"]
    if len(shape) != 4 or shape[2:] != [preprocess["height"], preprocess["width"]]:
        bad("graphs.image.inputs", f"take {shape}, not the preprocess size {preprocess['height']}x"
                                   f"{preprocess['width']}")
    tokenizer = data.get("tokenizer")
    if tokenizer is not None:
        tokenizer = mapping("tokenizer", tokenizer)
        text("tokenizer.dir", tokenizer.get("dir"))
        files = tokenizer.get("files", [])
        if not isinstance(files, list):
            bad("tokenizer.files", f"is {files!r}, not a list")
        for name in files:
            text("tokenizer.files", name)
    vocabulary = data.get("vocabulary")
    if vocabulary is not None:
        text("vocabulary.file", mapping("vocabulary", vocabulary).get("file"))


def _check_tensor(field: str, spec: dict, bad) -> None:
    if not isinstance(spec.get("name"), str):
        bad(field, f"has a tensor without a name ({spec!r})")
    try:
        if not isinstance(spec.get("dtype"), str):
            raise TypeError
        np.dtype(spec["dtype"])
    except TypeError:
        bad(field, f"give {spec['name']} the type {spec.get('dtype')!r}, which is not a numpy dtype")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool)
                                                                     and d > 0) for d in shape):
        bad(field, f"give {spec['name']} the shape {shape!r}, not positive sizes and axis names")


def owned_entries(directory: Path) -> set[Path] | None:
    """The paths (relative) an artifact's manifest accounts for, or None when `directory` holds no readable
    manifest: what export may replace, and nothing else."""
    try:
        data = json.loads((Path(directory) / MANIFEST_NAME).read_text())
        named = Manifest(data, Path(directory)).files()    # any schema: an older artifact is still ours to replace
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
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


@dataclass
class GraphRecord:
    """One graph file in the manifest (ONNX, IR or engine): what it is, how to feed it and what it returns."""
    file: str
    format: str
    precision: str
    inputs: list[dict]
    outputs: list[dict]
    extra: dict = field(default_factory=dict)      # e.g. IR "weights", opset, engine build plan

    def to_dict(self, directory: Path, with_hashes: bool = True) -> dict:
        """The manifest entry; `with_hashes=False` for working manifests that runtimes read during export."""
        data = {"file": self.file, "format": self.format, "precision": self.precision,
                "inputs": self.inputs, "outputs": self.outputs, **self.extra}
        if with_hashes:
            data["sha256"] = sha256_file(directory / self.file)
            if "weights" in self.extra:
                data["weights_sha256"] = sha256_file(directory / self.extra["weights"])
        return data
