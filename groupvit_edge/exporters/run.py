"""Run an export plan: resolve the inputs once, run the target's steps, assemble the manifest once, and move
the finished artifact into place atomically (an interrupted or failed export leaves nothing)."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..artifact import (
    MANIFEST_NAME,
    GraphRecord,
    Manifest,
    Preprocess,
    owned_entries,
    sha256_file,
    working_manifest,
)
from ..assets import default_tokenizer, sample_photos, samples_description
from ..files import replace_directory, tree_size, write_text_atomic
from ..listing import listed
from ..quantization.calibration_set import VALIDATION_IMAGES, CalibrationSet, PhotoSet
from ..runtimes.pytorch import TorchRuntime, check_image_size
from ..segmentation.preprocess import list_images
from ..segmentation.vocabulary import Vocabulary, load_tokenizer
from . import onnx
from .onnx import onnx_record
from .options import ExportOptions
from .plan import ExportPlan, backend_option_groups, check, family, make_plan, raise_problems
from .records import ArtifactParts, FloatGraphs

TOKENIZER_DIR = "tokenizer"
VOCABULARY_FILE = "vocab.npz"

if TYPE_CHECKING:
    from ..model.loading import LoadedModel
    from ..runtimes.pytorch import TorchRuntime


@dataclass
class ExportJob:
    """One export's resolved inputs and its staging directory: what every step receives."""
    plan: ExportPlan
    staging: Path
    loaded: LoadedModel
    reference: TorchRuntime             # over the same weights
    tokenizer: Path
    validation: PhotoSet                # fp32 validation, and drift of targets that calibrate on nothing
    calibration: CalibrationSet | None  # calibration photos and the held-out photos their drift is measured on
    log: Callable[[str], None]
    # Plain fields, not properties: the quantization steps read them through `QuantizationJob` without calling
    # back into this layer.
    options: ExportOptions = field(init=False)
    preprocess: Preprocess = field(init=False)
    weights_sha256: str = field(init=False)
    drift_photos: PhotoSet = field(init=False)      # where reduced graphs' drift is measured

    def __post_init__(self):
        self.options = self.plan.options
        self.preprocess = self.reference.manifest.preprocess
        self.weights_sha256 = self.loaded.weights_sha256
        self.drift_photos = self.calibration.drift_photos() if self.calibration is not None else self.validation

    def backend_options(self, name: str):
        return self.options.backends[name]

    def graph_record(self, file: str, precision: str = "fp32") -> GraphRecord:
        """The manifest record of the ONNX graph `file` in the staging directory."""
        return onnx_record(self.staging, file, precision)

    def working_manifest(self, graphs: dict[str, GraphRecord], engines: dict[str, GraphRecord] | None = None,
                         **sections) -> Manifest:
        """A manifest over graphs in the staging directory, for runtimes that measure them during export."""
        return working_manifest(self.reference.manifest, self.staging, self.plan.target.name, graphs, engines,
                                **sections)


@dataclass
class ExportResult:
    directory: Path
    manifest: Manifest
    seconds: float
    floats: FloatGraphs
    parts: ArtifactParts


def export(model, out_dir, target: str = "onnx", *, log: Callable[[str], None] = print, **options) -> ExportResult:
    """Export `model` (a spec like "random:0", a checkpoint path, or a LoadedModel) to an artifact directory for
    `target`. Options are the CLI's flags in snake case (see `groupvit-edge export --help`)."""
    started = time.perf_counter()
    typed = ExportOptions.from_values(backend_option_groups(), **options)
    export_plan = make_plan(getattr(model, "model_id", model), target, out_dir, typed)
    raise_problems(export_plan, check(export_plan))
    log(f"export {export_plan.target.name}: {export_plan.describe()}")
    with replace_directory(out_dir, ours=owned_entries, what="artifact", force=typed.common.force,
                           log=log) as staging:
        job = _start(export_plan, model, staging, log)
        floats = onnx.build_float_graphs(job)
        parts = family(export_plan.target.family).build(job, floats)
        staged = Manifest(_assemble_manifest(job, floats, parts, started), staging)
        _keep_only_named(staging, staged)
        write_text_atomic(staging / MANIFEST_NAME, staged.to_json())
        data = staged.data
    result = ExportResult(Path(out_dir), Manifest(data, Path(out_dir)), time.perf_counter() - started, floats, parts)
    log(summary(result))
    return result


def _start(export_plan: ExportPlan, model, staging: Path, log) -> ExportJob:
    """Resolve every input once: the checkpoint, the tokenizer, validation and calibration photos."""
    from ..model.loading import LoadedModel, load_model
    options = export_plan.options
    loaded = model if isinstance(model, LoadedModel) else load_model(str(model))
    height, width = options.common.image_size
    check_image_size(height, width, loaded.model.config.vision.patch_size)
    reference = TorchRuntime(loaded, image_size=(height, width), resize=options.common.resize)
    tokenizer = Path(options.common.tokenizer or loaded.tokenizer_dir or default_tokenizer())
    if options.common.validation_images:
        validation = PhotoSet(tuple(list_images(list(options.common.validation_images))), VALIDATION_IMAGES)
    else:
        validation = PhotoSet(tuple(sample_photos()), f"the {samples_description()}")
    calibration = None
    if export_plan.target.calibrated:
        given = validation if options.common.validation_images else None
        calibration = CalibrationSet.resolve(options.calibration.calib_dir, options.calibration.calib_count,
                                             reference.manifest.preprocess, options.calibration.seed,
                                             validation=given, log=log)
        log(f"calibration: {calibration.source}; drift measured on {calibration.held_out_source}")
    return ExportJob(export_plan, staging, loaded, reference, tokenizer, validation, calibration, log)


def _assemble_manifest(job: ExportJob, floats: FloatGraphs, parts: ArtifactParts, started: float) -> dict:
    data = dict(job.reference.manifest.data)
    data["graphs"] = {role: record.to_dict(job.staging) for role, record in parts.graphs.items()}
    if parts.engines:
        data["engines"] = {role: record.to_dict(job.staging) for role, record in parts.engines.items()}
    data["precision"] = parts.precision.to_dict(job.plan.target.name)
    data["calibration"] = parts.calibration.to_dict() if parts.calibration is not None else None
    data["tokenizer"] = _copy_tokenizer(job.tokenizer, job.staging / TOKENIZER_DIR)
    vocabulary = _write_vocabulary(job)
    if vocabulary is not None:
        data["vocabulary"] = vocabulary
    else:
        data.pop("vocabulary", None)
    fp32_check = {**floats.check.to_dict(), "text_max_abs_diff": floats.text_max_abs_diff}
    validation: dict[str, object] = {"fp32_vs_pytorch": fp32_check}
    validation.update({name: check.to_dict() for name, check in parts.checks.items()})
    if parts.search is not None:
        validation["drift_budget_search"] = parts.search.to_dict()
    if parts.outliers is not None:
        validation["outlier_remedy"] = parts.outliers.to_dict()
    validation.update(parts.figures)
    data["validation"] = validation
    data.update(parts.sections)
    data["export"] = {"plan": job.plan.describe(), "seconds": round(time.perf_counter() - started, 1)}
    return data


def _copy_tokenizer(source: Path, destination: Path) -> dict:
    """The tokenizer files into the artifact, so a device needs nothing else."""
    load_tokenizer(source)      # fail now with the tokenizer's own sentence, not on a device later
    destination.mkdir()
    if source.is_file():
        files = [source]
    elif (source / "vocab.json").is_file():
        files = [source / "vocab.json", source / "merges.txt"]
    else:
        files = sorted(source.glob("bpe*.txt.gz"))[:1]
    for file in files:
        shutil.copyfile(file, destination / file.name)
    return {"dir": destination.name, "files": [file.name for file in files],
            "sha256": {file.name: sha256_file(destination / file.name) for file in files}}


def _write_vocabulary(job: ExportJob) -> dict | None:
    labels = job.options.common.labels
    if not labels:
        return None
    vocabulary = Vocabulary.encode(job.reference, list(labels), job.options.common.templates,
                                   load_tokenizer(job.tokenizer))
    path = vocabulary.save(job.staging / VOCABULARY_FILE)
    return {"file": path.name, "sha256": sha256_file(path), "labels": vocabulary.labels,
            "template_set": vocabulary.templates.name, "templates": list(vocabulary.templates.templates),
            "averaging": vocabulary.averaging}


def _keep_only_named(staging: Path, manifest: Manifest) -> None:
    """Drop the intermediates steps wrote (e.g. the fp32 image graph of an INT8 artifact): the artifact holds
    what its manifest names, and nothing else."""
    named = {Path(relative).parts[0] for _, relative, _ in manifest.files()} | {MANIFEST_NAME}
    for entry in staging.iterdir():
        if entry.name not in named:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def summary(result: ExportResult) -> str:
    """What was written, what it was measured at, and what to run next."""
    manifest, directory = result.manifest, result.directory
    lines = [f"wrote {directory} ({manifest.target}) in {result.seconds:.0f} s:"]
    for what, relative, _ in manifest.files():
        if "/" in relative:
            continue
        lines.append(f"  {relative:<24} {tree_size([directory / relative]) / 1e6:8.1f} MB  {what}")
    if manifest.tokenizer:
        folder = manifest.tokenizer.dir
        lines.append(f"  {folder + '/':<24} {tree_size([directory / folder]) / 1e6:8.1f} MB  tokenizer")
    lines.append(f"  {'total':<24} {tree_size([directory]) / 1e6:8.1f} MB")
    lines.append(f"checked: {result.floats.check.line()}")
    for reduced in result.parts.checks.values():
        lines += [f"checked: {reduced.line()}", f"  {reduced.verdict().line()}"]
    if result.parts.search is not None and result.parts.search.chosen is not None:
        chosen = result.parts.search.chosen
        lines.append(f"drift budget ({result.parts.search.budget.describe()}): met with "
                     f"{len(chosen.float_blocks)} block(s) in float ({listed(chosen.float_blocks)})")
    if result.parts.outliers is not None:
        lines.append(f"activation outliers: {result.parts.outliers.summary()}")
    model = manifest.model.id
    labels = ",".join(manifest.vocabulary.labels if manifest.vocabulary else ()) or "person,dog,grass,sky"
    lines += ["next (photos: add --images DIR, default the sample photos shipped with groupvit-edge):",
              f"  groupvit-edge segment {directory} --labels \"{labels}\" --out {directory}-segmented",
              f"  groupvit-edge drift --ref {model} --candidate {directory}",
              f"  groupvit-edge bench {directory}"]
    return "\n".join(lines)
