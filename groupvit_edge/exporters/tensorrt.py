"""TensorRT engines (targets trt-fp16, trt-int8), built from the artifact's ONNX by the TensorRT installed here.

Which path runs depends on the TensorRT actually installed: `runtimes.tensorrt.build.plan_build` (a pure function)
chooses the typing, the ONNX the image engine parses and the builder flags, and that module builds the engines;
its docstring tables the paths and gives the version facts behind them. This module makes the graph the plan
parses (FP16, QDQ, QDQ with an FP16 float part), checks it against the parser's rules, builds both engines into
the artifact, calibrates the implicit INT8 route and measures the image engine's drift.

Strongly typed INT8 parses a QDQ graph whose float part is FP16 because the 10.3 parser gives a strongly typed
DequantizeLinear the output type of its scale (`addDequantize(data, scale, scaleType)`, onnx-tensorrt
onnxOpImporters.cpp, tag release/10.3-GA): with FP32 scales every DQ output, and so LayerNorm's neighbours,
GELU, the activation×activation products and the grouping, would compute in FP32 and trt-int8 would be slower
than trt-fp16. The FP16 keep-list of the precision policy stays FP32 in both, so the two agree on what is float32.

The text graph stays fp32 (it runs once per vocabulary) and is always built strongly typed from text.onnx.
`tensorrt_typing="weak"|"strong"` and `int8_route="explicit"|"implicit"` override the automatic choice where
the installed TensorRT allows it. Every engine gets an optimization profile over its batch axis
(`batch_min/opt/max` for windows, `classes_min/opt/max` for prompts), a workspace limit, a timing cache keyed by
TensorRT version and GPU, and DETAILED profiling verbosity so the engine inspector can say which precision each
layer runs in. The engines go into the artifact; the manifest records the TensorRT version, GPU, compute
capability and the exact plan (flags, pinned layers, profile).

Verification: the TensorRT calls are checked against the real Python bindings of 10.3, the newest 10.x and the
newest 11.x (tests/test_tensorrt_conformance.py); building and running engines on a GPU is what
`benchmarks/tensorrt_device_check.py` checks; it has not yet been run on one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..artifact import sha256_file
from ..checks.tensorrt import check_artifact, check_manifest
from ..errors import UserError, ValidationFailed
from ..files import all_ours, cache_root, replace_directory
from ..imports import require
from ..metrics.drift import validate_candidate
from ..quantization.cache import calibration_key, changed_fields
from ..quantization.measure import drift_labels, graph_drift
from ..quantization.pipeline import to_int8
from ..quantization.policy import FP16_KEEP_FLOAT_OPS, fp16_blocked_nodes
from ..quantization.records import CalibrationRecord, DriftCheck, PrecisionRecord, ReducedImageGraph
from ..quantization.search import budget_from
from ..runtimes.onnxruntime import OnnxRuntime
from ..runtimes.tensorrt import cuda as trt_cuda
from ..runtimes.tensorrt import install as trt_install
from ..runtimes.tensorrt.build import (
    INT8_ROUTES,
    TRT_TARGETS,
    TYPINGS,
    BatchProfile,
    BuildPlan,
    build_engine,
    kept_float_nodes,
    missing_api,
    plan_build,
    required_api,
    text_plan,
)
from ..runtimes.tensorrt.runner import TensorRTRuntime
from . import precision
from .contract import Step, Target
from .onnx import onnx_record
from .options import option
from .records import ArtifactParts

DEFAULT_WORKSPACE_MB = 2048
IMAGE_PROFILE = (1, 1, 8)            # windows per image-graph call: min, opt, max
TEXT_PROFILE = (1, 64, 256)          # prompts per call: vocabulary.TEXT_BATCH is 256
CALIBRATION_BATCH = 8
# The implicit route's calibration: what keys its cache and what the manifest records, one value for both.
IMPLICIT_METHOD = {"method": "tensorrt-entropy2", "batch": CALIBRATION_BATCH}
ENGINE_FILES = {"image": "image.engine", "text": "text.engine"}
INT8_FP16_FILE = "image.int8-fp16.onnx"
# DequantizeLinear/QuantizeLinear take FP16 scales from opset 19 (ONNX operator changelog); 10.3 parses ≤ 20.
QDQ_FP16_OPSET = 19


# ---------------------------------------------------------------------------- INT8 with an FP16 float part

def qdq_with_fp16_float(model):
    """A QDQ image graph with its float part in FP16: the FP16 keep-list and the grouping assignment stay FP32,
    every Q/DQ scale becomes FP16 (so a strongly typed DequantizeLinear outputs FP16), graph I/O stays float32.

    onnxconverter-common's float16 converter treats Q/DQ like any op: their float scales become FP16 unless a
    node is blocked, which is why Q/DQ nodes are never on the block list (the assignment's regex also matches
    the Q/DQ pair ONNX Runtime puts after its MatMul)."""
    version_converter = require("onnx.version_converter", extra="export", package="onnx")
    float16 = require("onnxconverter_common.float16", extra="export", package="onnxconverter-common")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    blocked = fp16_blocked_nodes(model)
    if opset is not None and opset < QDQ_FP16_OPSET:
        model = version_converter.convert_version(model, QDQ_FP16_OPSET)
    blocked_by_op = {node.name for node in model.graph.node if node.op_type in FP16_KEEP_FLOAT_OPS}
    with warnings.catch_warnings():
        # It warns for every weight below fp16's range, which it flushes as intended.
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FLOAT_OPS,
                                                node_block_list=sorted(blocked - blocked_by_op),
                                                disable_shape_infer=True)


def to_int8_fp16(job, floats, int8: ReducedImageGraph) -> ReducedImageGraph:
    """The calibrated QDQ graph of `quantization.pipeline.to_int8` with an FP16 float part, measured in ONNX Runtime."""
    onnx = require("onnx", extra="export")
    job.log(f"converting the float part of {int8.graph.file} to FP16 (float32 kept for "
            f"{', '.join(FP16_KEEP_FLOAT_OPS)} and the grouping assignment; Q/DQ scales FP16, opset "
            f"{QDQ_FP16_OPSET})")
    half = qdq_with_fp16_float(onnx.load(str(job.staging / int8.graph.file)))
    onnx.save(half, str(job.staging / INT8_FP16_FILE))
    check = graph_drift(job, floats, INT8_FP16_FILE, job.drift_photos, int8.check.budget)
    job.log(f"  {check.line()}")
    record = dataclasses.replace(int8.precision, float_part="fp16",
                                 float32_kept=FP16_KEEP_FLOAT_OPS + ["grouping assignment"])
    graph = onnx_record(job.staging, INT8_FP16_FILE, "int8")
    graph = dataclasses.replace(graph, extra={**graph.extra, "opset": QDQ_FP16_OPSET})
    return ReducedImageGraph(graph, record, check, int8.calibration, int8.search, int8.outliers)


# ------------------------------------------------------------------------------------------------- caches

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", str(text).lower()).strip("-") or "gpu"


def timing_cache_path(root: Path, version: str, gpu: str, compute_capability: str) -> Path:
    """One timing cache per TensorRT version and GPU: ITimingCache.combine skips caches "generated by a TensorRT
    build of" another version, and a cache from another device needs ignore_mismatch (TimingCache API page)."""
    return Path(root) / "tensorrt" / f"timing-{version}-{_slug(gpu)}-sm{compute_capability.replace('.', '')}.cache"


class CalibrationCacheFile:
    """A TensorRT calibration table on disk, handed to TensorRT only when its key matches exactly."""

    def __init__(self, root: Path, key: dict, log=print):
        self.key, self.log = key, log
        self.directory = Path(root) / "calibration" / "tensorrt" / f"{key['weights_sha256'][:16]}-entropy2"
        self.reused = False

    def read(self) -> bytes | None:
        key_file, table = self.directory / "key.json", self.directory / "calibration.cache"
        if not (key_file.is_file() and table.is_file()):
            return None
        stored = json.loads(key_file.read_text())
        if stored != self.key:
            self.log(f"calibration cache {self.directory} was made with different "
                     f"{', '.join(changed_fields(stored, self.key))}; recalibrating")
            return None
        self.log(f"reusing calibration cache {self.directory}")
        self.reused = True
        return table.read_bytes()

    def write(self, data: bytes) -> None:
        with replace_directory(self.directory, ours=all_ours, what="calibration cache", announce=False,
                               log=self.log) as staging:
            (staging / "calibration.cache").write_bytes(bytes(data))
            (staging / "key.json").write_text(json.dumps(self.key, indent=2, sort_keys=True))


def calibration_batches(windows, batch: int):
    """Full batches only: calibration runs at the calibration profile's one shape (min = opt = max)."""
    pending = []
    for window in windows:
        pending.append(window)
        if len(pending) == batch:
            yield np.stack(pending).astype(np.float32)
            pending = []


def _entropy_calibrator(trt, batches, batch: int, cache: CalibrationCacheFile, memory, stream, nbytes: int):
    """An IInt8EntropyCalibrator2 over preprocessed COCO windows (pattern of NVIDIA's efficientdet sample)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.device_batch = memory.buffer(nbytes)
            self.batches_seen = 0

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            pixels = next(batches, None)
            if pixels is None:
                return None
            self.device_batch.upload(pixels, stream)
            stream.synchronize()
            self.batches_seen += 1
            return [int(self.device_batch.ptr)]

        def read_calibration_cache(self):
            return cache.read()

        def write_calibration_cache(self, data):
            cache.write(bytes(data))

        def close(self):
            self.device_batch.free()

    return EntropyCalibrator()


# ------------------------------------------------------------------------------------- options, family

TARGETS = (
    Target("trt-fp16", "tensorrt", "tensorrt", "TensorRT engines, FP16, built on the target GPU", readiness=True),
    Target("trt-int8", "tensorrt", "tensorrt", "TensorRT engines, INT8 (QDQ graph with an FP16 float part, or "
           "TensorRT 10's entropy calibrator), built on the target GPU", calibrated=True, readiness=True,
           int8_weight_bits=8),
)


@dataclass(frozen=True)
class TensorRTOptions:
    batch_min: int = option(IMAGE_PROFILE[0], "trt-*: fewest windows per image-graph call (optimization profile).",
                            targets=TRT_TARGETS, minimum=1)
    batch_opt: int = option(IMAGE_PROFILE[1], "trt-*: windows per call the engine is tuned for.",
                            targets=TRT_TARGETS, minimum=1)
    batch_max: int = option(IMAGE_PROFILE[2], "trt-*: most windows per image-graph call.", targets=TRT_TARGETS,
                            minimum=1)
    classes_min: int = option(TEXT_PROFILE[0], "trt-*: fewest prompts per text-graph call.", targets=TRT_TARGETS,
                              minimum=1)
    classes_opt: int = option(TEXT_PROFILE[1], "trt-*: prompts per call the text engine is tuned for.",
                              targets=TRT_TARGETS, minimum=1)
    classes_max: int = option(TEXT_PROFILE[2], "trt-*: most prompts per text-graph call.", targets=TRT_TARGETS,
                              minimum=1)
    workspace_mb: int = option(DEFAULT_WORKSPACE_MB, "trt-*: builder workspace limit in MB.", targets=TRT_TARGETS,
                               minimum=1)
    timing_cache: str | None = option(None, "trt-*: timing cache file (default: one per TensorRT version and GPU "
                                            "in the cache directory).", targets=TRT_TARGETS, metavar="FILE")
    tensorrt_typing: str = option("auto", "trt-*: auto = weakly typed trt-fp16 with the FP16 flag before "
                                          "TensorRT 10.12, strongly typed otherwise; weak trt-int8 (TensorRT 10) "
                                          "builds the QDQ graph with the INT8 and FP16 flags.",
                                  targets=TRT_TARGETS, choices=TYPINGS)
    int8_route: str = option("explicit", "trt-int8: explicit = the QDQ graph; implicit = IInt8EntropyCalibrator2 "
                                         "(TensorRT 10 only).", targets=("trt-int8",), choices=INT8_ROUTES)


OPTIONS = TensorRTOptions


def batch_profiles(options: TensorRTOptions) -> dict[str, BatchProfile]:
    """Profiles of both graphs: windows per image-graph call, prompts per text-graph call."""
    return {"image": BatchProfile(options.batch_min, options.batch_opt, options.batch_max),
            "text": BatchProfile(options.classes_min, options.classes_opt, options.classes_max)}


def steps(target: Target, options) -> list[Step]:
    """What `build` runs. The installed TensorRT's build plan decides which image graph the engines parse; without
    TensorRT (which the plan check refuses) the list says so instead."""
    plan = _installed_plan(target.name, options.backends["tensorrt"])
    if plan is None:
        reduce = [Step("reduce", "make the image graph the installed TensorRT parses (fp32, FP16 or INT8 QDQ)")]
        engines = "build engines (the installed TensorRT decides typing and the graph they parse)"
    else:
        reduce = _reduce_steps(plan, options)
        engines = f"build engines: {plan.describe()}"
    return precision.base_steps() + reduce + [
        Step("readiness", "check the ONNX against the TensorRT parser's rules"),
        Step("engines", engines),
        Step("drift", "measure the image engine against fp32")]


def _installed_plan(target: str, options) -> BuildPlan | None:
    try:
        return plan_build(target, trt_install.import_tensorrt().__version__, options.tensorrt_typing,
                          options.int8_route)
    except UserError:
        return None


def _reduce_steps(plan: BuildPlan, options) -> list[Step]:
    if plan.source == "fp16":
        return precision.reduce_steps("onnx-fp16", options)
    if plan.source == "qdq":
        return precision.reduce_steps("onnx-int8", options)
    if plan.source == "qdq-fp16":
        return precision.reduce_steps("onnx-int8", options) + [
            Step("fp16-float", "convert the QDQ graph's float part to FP16"),
            Step("drift", "measure drift vs fp32")]
    if plan.calibrator:
        return [Step("calibrate", "calibrate INT8 in TensorRT (IInt8EntropyCalibrator2) while building")]
    return []


def problems(export_plan) -> list[str]:
    """TensorRT, a GPU, and a build plan this TensorRT supports: all known before anything is traced."""
    options = export_plan.options.backends["tensorrt"]
    try:
        BatchProfile(options.batch_min, options.batch_opt, options.batch_max)
        BatchProfile(options.classes_min, options.classes_opt, options.classes_max)
        trt = trt_install.import_tensorrt()
        trt_cuda.device_properties()
        build_plan = plan_build(export_plan.target.name, trt.__version__, options.tensorrt_typing, options.int8_route)
    except UserError as error:
        return [str(error)]
    found = []
    missing = missing_api(required_api(build_plan) + required_api(text_plan(build_plan)), trt)
    if missing:
        found.append(f"the installed TensorRT {trt.__version__} lacks {', '.join(dict.fromkeys(missing))} that "
                     f"this build needs: choose another --tensorrt-typing/--int8-route or reinstall TensorRT")
    if build_plan.calibrator and budget_from(export_plan.options) is not None:
        found.append("a drift budget searches the QDQ graph: use --int8-route explicit with it")
    for flag, given in (("--keep-float", export_plan.options.calibration.keep_float),
                        ("--int8-attention", export_plan.options.calibration.int8_attention)):
        if build_plan.calibrator and given:
            found.append(f"{flag} applies to the QDQ graph: use --int8-route explicit with it")
    return found


# -------------------------------------------------------------------------------------------------- build

def build(job, floats) -> ArtifactParts:
    trt = trt_install.import_tensorrt()
    options = job.backend_options("tensorrt")
    target = job.plan.target.name
    plan = plan_build(target, trt.__version__, options.tensorrt_typing, options.int8_route)
    device = trt_cuda.device_properties()
    job.log(f"building {target} engines on {device.gpu} (sm {device.compute_capability}): {plan.describe()}")
    reduced = _reduced_image_graph(job, floats, plan)
    graphs = {"image": reduced.graph if reduced else floats.image, "text": floats.text}
    _readiness(job.working_manifest(graphs), target, job.log)
    root = Path(job.options.common.cache_dir) if job.options.common.cache_dir else cache_root()
    timing = Path(options.timing_cache) if options.timing_cache else timing_cache_path(
        root, trt.__version__, device.gpu, device.compute_capability)
    profiles = batch_profiles(options)
    engines, calibration = {}, None
    for graph, graph_plan in (("image", plan), ("text", text_plan(plan))):
        source = job.staging / graphs[graph].file
        settings = dict(workspace_mb=options.workspace_mb, timing_cache=timing, log=job.log,
                        pin=kept_float_nodes(source) if graph_plan.pin_float32 else None)
        with contextlib.ExitStack() as resources:
            if graph_plan.calibrator:
                settings["calibrator"], calibration = resources.enter_context(
                    _implicit_calibration(job, trt, source, root))
            engines[graph] = build_engine(trt, source, job.staging / ENGINE_FILES[graph], graph_plan, graphs[graph],
                                          profiles[graph], **settings)
    section = {"version": trt.__version__, "target": target, **asdict(device), "plan": plan.to_manifest(),
               "text_plan": text_plan(plan).to_manifest(), "workspace_mb": options.workspace_mb,
               "timing_cache": str(timing)}
    precision_record, calibration_record = _precision_records(job, plan, reduced, graphs, calibration)
    check = _check_engines(job, floats, graphs, engines, section, precision_record.compute, job.drift_photos,
                           reduced.check.budget if reduced else None)
    checks = {"drift_vs_fp32": check}
    if reduced is not None:
        checks["drift_vs_fp32_onnxruntime"] = reduced.check
    return ArtifactParts(graphs, precision_record, checks, calibration_record, reduced.search if reduced else None,
                         engines=engines, sections={"tensorrt": section})


def _reduced_image_graph(job, floats, plan: BuildPlan) -> ReducedImageGraph | None:
    """The image graph the engine parses when it is not the fp32 one."""
    if plan.source == "fp16":
        return precision.to_fp16(job, floats)
    if plan.source == "qdq":
        return to_int8(job, floats)
    if plan.source == "qdq-fp16":
        return to_int8_fp16(job, floats, to_int8(job, floats))
    return None


def readiness_report(artifact_dir, target: str):
    """Whether TensorRT 10.3's parser and builder will take the artifact's ONNX graphs, without TensorRT here."""
    return check_artifact(artifact_dir, target)


def _readiness(manifest, target: str, log) -> None:
    report = check_manifest(manifest, target)
    log(report.format(limit=10))
    if not report.ok:
        raise ValidationFailed(f"{report.summary()}, first: {report.errors[0]}; the artifact was not written")


@contextlib.contextmanager
def _implicit_calibration(job, trt, source: Path, root: Path):
    """The entropy calibrator over the export's calibration photos, its cache keyed like the INT8 step's; its
    device buffer and stream are released when the build is done, whether it succeeded or not."""
    calibration = job.calibration
    preprocess = job.preprocess
    # The INT8 step's key, plus what TensorRT names the tensors after (the exact graph) and writes the table with.
    key = calibration_key(job.weights_sha256, calibration, IMPLICIT_METHOD,
                          tensorrt=trt.__version__, network_sha256=sha256_file(source))
    cache = CalibrationCacheFile(root, key, log=job.log)
    memory = trt_cuda.open_device_memory()
    stream = memory.stream()
    try:
        nbytes = CALIBRATION_BATCH * 3 * preprocess.height * preprocess.width * 4
        batches = calibration_batches(calibration.iter_windows(), CALIBRATION_BATCH)
        calibrator = _entropy_calibrator(trt, batches, CALIBRATION_BATCH, cache, memory, stream, nbytes)
        try:
            yield calibrator, (calibration, cache)
        finally:
            calibrator.close()
    finally:
        stream.close()


def _precision_records(job, plan: BuildPlan, reduced, graphs: dict, calibration):
    """The precision record and calibration record of the engines' build."""
    engines_typing = {"image": plan.typing, "text": text_plan(plan).typing}
    if reduced is not None:      # built from the FP16 or QDQ graph: that step's own record
        return dataclasses.replace(reduced.precision, engines=engines_typing), reduced.calibration
    if plan.calibrator:
        calibration_set, cache = calibration
        record = PrecisionRecord("int8", ["LayerNormalization", "Softmax", "grouping assignment"],
                                 quantized_nodes="chosen by TensorRT (implicit calibration)",
                                 engines=engines_typing)
        return record, CalibrationRecord(calibration_set, IMPLICIT_METHOD,
                                         cache.reused, cache=str(cache.directory))
    kept = kept_float_nodes(job.staging / graphs["image"].file)
    return PrecisionRecord("fp16", FP16_KEEP_FLOAT_OPS + ["grouping assignment"], sorted(kept),
                           engines=engines_typing), None


def _check_engines(job, floats, graphs, engines, section, compute: str, photos, budget):
    """The image engine against the fp32 ONNX image graph in ONNX Runtime, on the drift photos — one rule for
    every plan and TensorRT version (the shipped sample photos make it measurable without --validation-images)."""
    reference = OnnxRuntime(job.working_manifest({"image": floats.image, "text": floats.text}))
    labels = drift_labels(job.options)
    # The working manifest's precision is the engines' own, so the check names what actually ran.
    engine_precision = {"target": job.plan.target.name, "compute": compute}
    with TensorRTRuntime(job.working_manifest(graphs, engines, tensorrt=section,
                                              precision=engine_precision)) as runtime:
        drift = validate_candidate(reference, runtime, list(photos.paths), labels=labels)
        check = DriftCheck(f"{floats.image.file} in {reference.description}", runtime.description, photos, labels,
                           drift, budget)
    job.log(f"  {check.line()}")
    return check
