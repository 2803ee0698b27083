"""The artifact directory and its manifest: everything a runtime needs to use the graphs correctly.

An artifact is a directory holding `manifest.json`, the graphs it names (image.onnx, text.onnx, later IR and
engines), the tokenizer files and optionally a precomputed vocabulary. Runtimes refuse an artifact whose manifest
is missing, corrupt, from a newer schema, or written for another backend, with a one-line reason.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifact_records import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GraphRecord,
    ManifestFields,
    ModelRecord,
    PrecisionInfo,
    Preprocess,
    TokenizerRecord,
    VocabularyRecord,
)
from .errors import UserError
from .files import sha256_file, sha256_file_cached
from .version import __version__

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MANIFEST_NAME", "NORMALISED_TEXT_OUTPUT", "SCHEMA_VERSION",
           "TEXT_OUTPUT", "TUNED_NAME", "GraphRecord",
           "Manifest", "ModelRecord", "PrecisionInfo", "Preprocess", "TokenizerRecord", "VocabularyRecord",
           "inside_artifact", "new_manifest_data", "owned_entries", "read_manifest", "sha256_file",
           "sha256_file_cached", "working_manifest"]

# The text graph's one output: the projected features the official class embedding averages. Artifacts exported
# before it existed return NORMALISED_TEXT_OUTPUT instead, L2-normalised per prompt.
TEXT_OUTPUT = "text_features"
NORMALISED_TEXT_OUTPUT = "text_embeds"
SCHEMA_VERSION = 2           # 2: every file the manifest names carries its sha256
MANIFEST_NAME = "manifest.json"
TUNED_NAME = "tuned.json"        # written by `tune` on the device; ours, though not in the manifest


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
        fields = ManifestFields(source)
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

    def _check_sizes(self, fields: ManifestFields) -> None:
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
    def text_output(self) -> str:
        """The name of the text graph's output: TEXT_OUTPUT, or NORMALISED_TEXT_OUTPUT in an earlier artifact."""
        records = [record for role, record in {**self.graphs, **self.engines}.items() if role.startswith("text")]
        names = {output["name"] for record in records for output in record.outputs}
        return NORMALISED_TEXT_OUTPUT if NORMALISED_TEXT_OUTPUT in names else TEXT_OUTPUT

    @property
    def text_output_normalised(self) -> bool:
        return self.text_output == NORMALISED_TEXT_OUTPUT

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


def working_manifest(base: Manifest, directory: Path, target: str, graphs: dict[str, GraphRecord],
                     engines: dict[str, GraphRecord] | None = None, **sections) -> Manifest:
    """A manifest over graphs still being written in `directory` (not hashed yet), with `base`'s model and
    preprocess: what runtimes read while an export measures its graphs."""
    data = dict(base.data)
    data["graphs"] = {role: record.to_dict(directory, with_hashes=False) for role, record in graphs.items()}
    if engines:
        data["engines"] = {role: record.to_dict(directory, with_hashes=False) for role, record in engines.items()}
    data["precision"] = {"target": target, "compute": "fp32"}
    data.update(sections)
    return Manifest(data, directory)


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
        ManifestFields(str(path)).bad("graphs", "has no image graph")
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
