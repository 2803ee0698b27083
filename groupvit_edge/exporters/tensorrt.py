"""TensorRT engines (targets trt-fp16, trt-int8), built from the artifact's ONNX by the TensorRT installed here.

Which path runs depends on the TensorRT actually installed (`plan_build`, a pure function):

| target   | TensorRT            | network                         | from ONNX                | builder flags            |
|----------|---------------------|---------------------------------|--------------------------|--------------------------|
| trt-fp16 | 10.3 … 10.11 (auto) | weakly typed                    | fp32 (image.onnx)        | FP16 + OBEY_PRECISION_CONSTRAINTS, policy layers pinned to FP32 |
| trt-fp16 | ≥ 10.12 (auto), 11  | STRONGLY_TYPED                  | FP16 (precision.to_fp16) | none                     |
| trt-int8 | ≥ 10.3 (default)    | STRONGLY_TYPED (explicit Q/DQ)  | QDQ (precision.to_int8)  | none                     |
| trt-int8 | 10.x, implicit      | weakly typed + entropy calib.   | fp32                     | INT8 + FP16 + OBEY_PRECISION_CONSTRAINTS, policy layers pinned |

The text graph stays fp32 (it runs once per vocabulary) and is always built strongly typed from text.onnx.
`tensorrt_typing="weak"|"strong"` and `int8_route="explicit"|"implicit"` override the automatic choice where
the installed TensorRT allows it. Every engine gets an optimization profile over its batch axis
(`batch_min/opt/max` for windows, `classes_min/opt/max` for prompts), a workspace limit and a timing cache
keyed by TensorRT version and GPU. The engines go into the artifact; the manifest records the TensorRT version,
GPU, compute capability and the exact plan (flags, pinned layers, profile).

Version facts used below, with their sources:
- weak typing deprecated in 10.12: "Weak typing APIs deprecated ... TensorRT will be using strong-typing
  exclusively in the future" (https://docs.nvidia.com/deeplearning/tensorrt/latest/getting-started/release-notes-10/10.12.0.html)
- 11 removes it: "TensorRT 11.x removes all weak typing APIs" and "all precision-enabling builder flags such as
  BuilderFlag.FP16 and BuilderFlag.INT8", OBEY_PRECISION_CONSTRAINTS, `int8_calibrator`, `set_calibration_profile`
  (https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html)
- IInt8EntropyCalibrator2 "Deprecated in TensorRT 10.1. Superseded by explicit quantization."
  (https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/c-api/deprecated.html)
- STRONGLY_TYPED is `1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)`; EXPLICIT_BATCH is "Ignored because
  networks are always explicit batch in TensorRT 10.0" and absent from the 11.0 enum
  (https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/Builder.html,
  https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html)
- "Precision-control build flags are not required and should not be specified" with explicit quantization and
  strong typing (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html)
- JetPack is not supported by TensorRT 11.3/11.4 (migration guide), so Jetson stays on the 10.x paths.
TensorRT cannot be installed where this module was written: the pure functions are unit-tested, the build calls
follow the documented Python API and have not been executed.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..artifact import GraphRecord
from ..calibration.cache import cache_root, calibration_key, changed_fields
from ..errors import UserError, ValidationFailed
from .options import option
from .plan import Step, Target
from .records import ArtifactParts, DriftCheck, PrecisionRecord

MIN_VERSION = (10, 3)                # JetPack 6 (6.1/6.2); the parser table of checks.tensorrt is 10.3's
STRONG_BY_DEFAULT_FROM = (10, 12)    # weak typing deprecated in 10.12 (release notes)
WEAK_TYPING_REMOVED_IN = 11
TYPINGS = ("auto", "weak", "strong")
INT8_ROUTES = ("explicit", "implicit")
DEFAULT_WORKSPACE_MB = 2048
IMAGE_PROFILE = (1, 1, 8)            # windows per image-graph call: min, opt, max
TEXT_PROFILE = (1, 64, 256)          # prompts per call: vocabulary.TEXT_BATCH is 256
CALIBRATION_BATCH = 8
# Layer types the FP16/INT8 weak paths keep in FP32 whatever their names: LayerNormalization and Softmax.
FLOAT32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX")
FLOAT_TYPES = ("FLOAT", "HALF", "BF16")
ENGINE_FILES = {"image": "image.engine", "text": "text.engine"}


# ------------------------------------------------------------------------------------------- version, plan

def parse_version(version: str) -> tuple[int, ...]:
    """"10.3.0" / "10.12.0.36" / "11.0.0.1" → (10, 3, 0) …; a UserError for anything else."""
    match = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    if not match:
        raise UserError(f"cannot read the TensorRT version {version!r}: reinstall TensorRT "
                        f"(pip install groupvit-edge[tensorrt])")
    return tuple(int(part) for part in match.groups(default="0"))


@dataclass(frozen=True)
class BuildPlan:
    """How one engine is built: which ONNX it parses and with which network/builder flags."""
    target: str
    tensorrt: str
    typing: str                     # "strong" | "weak"
    source: str                     # "fp32" | "fp16" | "qdq": the ONNX the network is parsed from
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names
    builder_flags: tuple[str, ...]  # BuilderFlag names
    pin_float32: bool = False       # weak typing: policy layers get precision/output type FLOAT
    calibrator: bool = False        # implicit INT8: IInt8EntropyCalibrator2 + calibration cache

    def describe(self) -> str:
        flags = ", ".join(self.builder_flags) or "no precision flags"
        extra = (", policy layers pinned to FP32" if self.pin_float32 else "") + \
                (", IInt8EntropyCalibrator2" if self.calibrator else "")
        return f"TensorRT {self.tensorrt}: {self.typing}ly typed from the {self.source} ONNX ({flags}{extra})"

    def to_manifest(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def plan_build(target: str, version: str, typing: str = "auto", int8_route: str = "explicit") -> BuildPlan:
    """The image engine's plan for `target` on TensorRT `version` (see the module table)."""
    parsed = parse_version(version)
    if parsed[:2] < MIN_VERSION:
        raise UserError(f"TensorRT {version} is older than {MIN_VERSION[0]}.{MIN_VERSION[1]}, the oldest this "
                        f"toolkit builds for (JetPack 6.1+): upgrade TensorRT")
    if typing not in TYPINGS:
        raise UserError(f"tensorrt_typing={typing!r} is unknown: use one of {', '.join(TYPINGS)}")
    if int8_route not in INT8_ROUTES:
        raise UserError(f"int8_route={int8_route!r} is unknown: use one of {', '.join(INT8_ROUTES)}")
    modern = parsed[0] >= WEAK_TYPING_REMOVED_IN
    if modern and typing == "weak":
        raise UserError(f"TensorRT {version} removed weak typing (the FP16/INT8 builder flags): use "
                        f"tensorrt_typing strong (or auto)")
    strong = ("STRONGLY_TYPED",)
    if target == "trt-fp16":
        if typing == "strong" or (typing == "auto" and parsed[:2] >= STRONG_BY_DEFAULT_FROM):
            return BuildPlan(target, version, "strong", "fp16", strong, ())
        return BuildPlan(target, version, "weak", "fp32", (), ("FP16", "OBEY_PRECISION_CONSTRAINTS"),
                         pin_float32=True)
    if target == "trt-int8":
        if int8_route == "implicit":
            if modern:
                raise UserError(f"TensorRT {version} removed implicit INT8 calibration (IInt8EntropyCalibrator2): "
                                f"use int8_route explicit, the QDQ graph")
            if typing == "strong":
                raise UserError("implicit INT8 calibration needs a weakly typed network: use tensorrt_typing weak "
                                "or auto, or int8_route explicit")
            return BuildPlan(target, version, "weak", "fp32", (),
                             ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"), pin_float32=True, calibrator=True)
        if typing == "weak":
            raise UserError("explicit INT8 (the QDQ graph) is built strongly typed on TensorRT ≥ 10: use "
                            "tensorrt_typing strong or auto, or int8_route implicit for a weakly typed build")
        return BuildPlan(target, version, "strong", "qdq", strong, ())
    raise UserError(f"target {target!r} is not a TensorRT target: use trt-fp16 or trt-int8")


def text_plan(image_plan: BuildPlan) -> BuildPlan:
    """The text graph stays fp32 by the precision policy: strongly typed from text.onnx on every version."""
    return BuildPlan(image_plan.target, image_plan.tensorrt, "strong", "fp32", ("STRONGLY_TYPED",), ())


def missing_api(plan: BuildPlan, trt) -> list[str]:
    """Names the plan needs that the installed bindings lack (e.g. BuilderFlag.FP16 on 11.x)."""
    needed = [("NetworkDefinitionCreationFlag", flag) for flag in plan.network_flags]
    needed += [("BuilderFlag", flag) for flag in plan.builder_flags]
    if plan.calibrator:
        needed.append((None, "IInt8EntropyCalibrator2"))
    missing = []
    for owner, name in needed:
        holder = trt if owner is None else getattr(trt, owner, None)
        if holder is None or not hasattr(holder, name):
            missing.append(name if owner is None else f"{owner}.{name}")
    return missing


def network_flag_bits(plan: BuildPlan, trt) -> int:
    # EXPLICIT_BATCH is never passed: ignored on 10.x, gone on 11 (Builder API pages cited above).
    bits = 0
    for flag in plan.network_flags:
        bits |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, flag))
    return bits


# ------------------------------------------------------------------------------------------------ profiles

@dataclass(frozen=True)
class BatchProfile:
    minimum: int
    optimum: int
    maximum: int

    def __post_init__(self):
        values = (self.minimum, self.optimum, self.maximum)
        if not all(isinstance(v, int) and v >= 1 for v in values) or not self.minimum <= self.optimum <= self.maximum:
            raise UserError(f"batch profile {self.minimum}/{self.optimum}/{self.maximum} is invalid: it needs "
                            f"1 ≤ min ≤ opt ≤ max (e.g. --batch-min 1 --batch-opt 2 --batch-max 8)")

    def shapes(self, shape: list) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of a manifest shape like ["batch", 3, 448, 448]: the named axis varies."""
        dynamic = [i for i, d in enumerate(shape) if isinstance(d, str)]
        if dynamic != [0]:
            raise UserError(f"shape {shape} varies on axes {dynamic}: engines are profiled on axis 0 only; "
                            f"re-export the artifact")
        rest = tuple(int(d) for d in shape[1:])
        return tuple((n, *rest) for n in (self.minimum, self.optimum, self.maximum))


def batch_profiles(options: "TensorRTOptions") -> dict[str, BatchProfile]:
    """Profiles of both graphs: windows per image-graph call, prompts per text-graph call."""
    return {"image": BatchProfile(options.batch_min, options.batch_opt, options.batch_max),
            "text": BatchProfile(options.classes_min, options.classes_opt, options.classes_max)}


# ------------------------------------------------------------------------------------ layer pinning (weak)

@dataclass(frozen=True)
class LayerInfo:
    """What pinning needs to know of a network layer (names of trt.LayerType / trt.DataType members)."""
    index: int
    name: str
    type: str
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]


def node_of_layer(layer_name: str, node_names) -> str | None:
    """The ONNX node a parsed layer came from: its name, or its name plus the parser's uniqueness suffixes."""
    candidate = layer_name
    while candidate:
        if candidate in node_names:
            return candidate
        if "_" not in candidate:
            return None
        candidate = candidate.rsplit("_", 1)[0]
    return None


def float32_pins(layers: list[LayerInfo], node_names, kept_nodes) -> list[tuple[int, tuple[int, ...]]]:
    """(layer index, float output indices) to pin to FP32: normalization and softmax layers, and every layer of
    a node the precision policy keeps in float32. Layers that touch no float tensor (shape arithmetic) are left
    alone, and only float outputs get an output type."""
    pins = []
    for layer in layers:
        node = node_of_layer(layer.name, node_names)
        if layer.type not in FLOAT32_LAYER_TYPES and node not in kept_nodes:
            continue
        if not any(t in FLOAT_TYPES for t in layer.input_types + layer.output_types):
            continue
        pins.append((layer.index, tuple(i for i, t in enumerate(layer.output_types) if t in FLOAT_TYPES)))
    return pins


def kept_float_nodes(onnx_path: Path) -> tuple[set[str], set[str]]:
    """(all node names, nodes the precision policy keeps float32) of an image graph: the FP16 keep-list ops and
    the grouping assignment — the same set precision.to_fp16 blocks, so weak and strong builds agree."""
    import onnx
    from ..calibration.policy import FP16_KEEP_FLOAT_OPS, image_graph_policy
    model = onnx.load(str(onnx_path), load_external_data=False)
    names = {node.name for node in model.graph.node}
    kept = {node.name for node in model.graph.node if node.op_type in FP16_KEEP_FLOAT_OPS}
    return names, kept | set(image_graph_policy(model).assignment)


def _layer_infos(network) -> list[LayerInfo]:
    infos = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        inputs = [layer.get_input(i) for i in range(layer.num_inputs)]
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        infos.append(LayerInfo(index, layer.name, layer.type.name, tuple(t.dtype.name for t in inputs if t is not None),
                               tuple(t.dtype.name for t in outputs)))
    return infos


def _pin_float32(trt, network, node_names, kept) -> int:
    # Layer precision and output types are weak-typing hints unless OBEY_PRECISION_CONSTRAINTS is set (the plan
    # sets it); "Setting layer precision and layer output types is not allowed" in strongly typed networks.
    pins = float32_pins(_layer_infos(network), node_names, kept)
    for index, outputs in pins:
        layer = network.get_layer(index)
        layer.precision = trt.float32
        for output in outputs:
            layer.set_output_type(output, trt.float32)
    return len(pins)


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
        from ..files import all_ours, replace_directory
        with replace_directory(self.directory, ours=all_ours, what="calibration cache", log=self.log) as staging:
            (staging / "calibration.cache").write_bytes(bytes(data))
            (staging / "key.json").write_text(json.dumps(self.key, indent=2, sort_keys=True))


def calibration_batches(windows, batch: int):
    """Full batches only: calibration runs at the calibration profile's one shape (min = opt = max)."""
    import numpy as np
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

    return EntropyCalibrator()


# -------------------------------------------------------------------------------------------------- build

# ------------------------------------------------------------------------------------- options, family

TRT_TARGETS = ("trt-fp16", "trt-int8")
TARGETS = (
    Target("trt-fp16", "tensorrt", "tensorrt", "TensorRT engines, FP16, built on the target GPU",
           ),
    Target("trt-int8", "tensorrt", "tensorrt", "TensorRT engines, INT8 (QDQ graph, or TensorRT 10's entropy "
           "calibrator), built on the target GPU", calibrated=True),
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
    tensorrt_typing: str = option("auto", "trt-*: auto = weak typing with the FP16 flag before TensorRT 10.12, "
                                          "strong from 10.12.", targets=TRT_TARGETS, choices=TYPINGS)
    int8_route: str = option("explicit", "trt-int8: explicit = the QDQ graph; implicit = IInt8EntropyCalibrator2 "
                                         "(TensorRT 10 only).", targets=("trt-int8",), choices=INT8_ROUTES)


OPTIONS = TensorRTOptions


def steps(target: Target, options) -> list:
    from . import precision
    return precision.base_steps() + [
        Step("readiness", "check the ONNX against the TensorRT parser's rules"),
        Step("engines", "build engines (the installed TensorRT decides typing and the graph they parse)"),
        Step("drift", "measure the engines against fp32")]


def problems(export_plan) -> list[str]:
    """TensorRT, a GPU, and a build plan this TensorRT supports: all known before anything is traced."""
    from ..runtimes.tensorrt import device_properties, import_tensorrt
    from .drift_budget import budget_from
    options = export_plan.options.backends["tensorrt"]
    try:
        BatchProfile(options.batch_min, options.batch_opt, options.batch_max)
        BatchProfile(options.classes_min, options.classes_opt, options.classes_max)
        trt = import_tensorrt()
        device_properties()
        build_plan = plan_build(export_plan.target.name, trt.__version__, options.tensorrt_typing, options.int8_route)
    except UserError as error:
        return [str(error)]
    found = []
    missing = missing_api(build_plan, trt)
    if missing:
        found.append(f"the installed TensorRT {trt.__version__} lacks {', '.join(missing)} that this build needs: "
                     f"choose another --tensorrt-typing/--int8-route or reinstall TensorRT")
    if build_plan.calibrator and budget_from(export_plan.options) is not None:
        found.append("a drift budget searches the QDQ graph: use --int8-route explicit with it")
    return found


def build(job, floats) -> ArtifactParts:
    from ..runtimes.tensorrt import device_properties, import_tensorrt
    from . import precision
    trt = import_tensorrt()
    options = job.backend_options("tensorrt")
    target = job.plan.target.name
    plan = plan_build(target, trt.__version__, options.tensorrt_typing, options.int8_route)
    device = device_properties()
    job.log(f"building {target} engines on {device['gpu']} (sm {device['compute_capability']}): {plan.describe()}")
    reduced = None
    if plan.source == "fp16":
        reduced = precision.to_fp16(job, floats)
    elif plan.source == "qdq":
        reduced = precision.to_int8(job, floats)
    graphs = {"image": reduced.graph if reduced else floats.image, "text": floats.text}
    _readiness(job.working_manifest(graphs), target, job.log)
    root = Path(job.options.common.cache_dir) if job.options.common.cache_dir else cache_root()
    timing = Path(options.timing_cache) if options.timing_cache else timing_cache_path(
        root, trt.__version__, device["gpu"], device["compute_capability"])
    profiles = batch_profiles(options)
    engines, calibration = {}, None
    for graph, graph_plan in (("image", plan), ("text", text_plan(plan))):
        source = job.staging / graphs[graph].file
        pin = kept_float_nodes(source) if graph_plan.pin_float32 else None
        calibrator = None
        if graph_plan.calibrator:
            calibrator, calibration = _implicit_calibration(job, trt, source, root)
        engines[graph] = build_engine(trt, source, job.staging / ENGINE_FILES[graph], graph_plan, graphs[graph],
                                      profiles[graph], workspace_mb=options.workspace_mb, timing_cache=timing,
                                      pin=pin, calibrator=calibrator, log=job.log)
    section = {"version": trt.__version__, "target": target, **device, "plan": plan.to_manifest(),
               "text_plan": text_plan(plan).to_manifest(), "workspace_mb": options.workspace_mb,
               "timing_cache": str(timing)}
    precision_record, calibration_record = _precision(job, plan, reduced, graphs, calibration)
    check = _check_engines(job, floats, graphs, engines, section, job.drift_photos(),
                           reduced.check.budget if reduced else None)
    checks = {"drift_vs_fp32": check}
    if reduced is not None:
        checks["drift_vs_fp32_onnxruntime"] = reduced.check
    return ArtifactParts(graphs, precision_record, checks, calibration_record, reduced.search if reduced else None,
                         engines=engines, sections={"tensorrt": section})


def _readiness(manifest, target: str, log) -> None:
    from ..checks.tensorrt import check_manifest
    report = check_manifest(manifest, target)
    log(report.format(limit=10))
    if not report.ok:
        raise ValidationFailed(f"{report.summary()}, first: {report.errors[0]}; the artifact was not written")


def build_engine(trt, onnx_path: Path, engine_path: Path, plan: BuildPlan, graph_record: GraphRecord,
                 profile: BatchProfile, *, workspace_mb: int, timing_cache: Path | None, pin=None,
                 calibrator=None, log=print) -> GraphRecord:
    """Parse `onnx_path`, build one serialized engine per `plan` and write it to `engine_path`; its manifest record.

    API per the TensorRT 10 Python docs: Builder/create_network/OnnxParser.parse_from_file, set_memory_pool_limit
    (WORKSPACE), create_optimization_profile/set_shape, create_timing_cache/set_timing_cache/get_timing_cache,
    build_serialized_network (None on failure).
    """
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flag_bits(plan, trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ValidationFailed(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: "
                               f"{errors[0] if errors else 'no parser error given'}; the artifact was not written")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    shapes = {}
    optimization_profile = builder.create_optimization_profile()
    for spec in graph_record.inputs:
        shapes[spec["name"]] = profile.shapes(spec["shape"])
        optimization_profile.set_shape(spec["name"], *shapes[spec["name"]])
    config.add_optimization_profile(optimization_profile)
    pinned = 0
    if pin is not None:
        pinned = _pin_float32(trt, network, *pin)
    if calibrator is not None:
        # Calibration of a dynamic-shape network runs at one shape: a calibration profile whose min = opt = max is
        # the calibration batch (TensorRT developer guide, "INT8 Calibration with Dynamic Shapes"; recalled, not
        # found verbatim in the stored docs — hence min = opt = max, which satisfies either reading).
        calibration_profile = builder.create_optimization_profile()
        for spec in graph_record.inputs:
            fixed = (calibrator.get_batch_size(), *shapes[spec["name"]][0][1:])
            calibration_profile.set_shape(spec["name"], fixed, fixed, fixed)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(calibration_profile)
    cache = _load_timing_cache(config, timing_cache, log)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValidationFailed(f"TensorRT {trt.__version__} could not build {onnx_path.name} ({plan.describe()}); "
                               f"its log above says why; the artifact was not written")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache is not None and cache is not None:
        _save_timing_cache(config, timing_cache)
    seconds = time.perf_counter() - started
    log(f"  {engine_path.name}: {engine_path.stat().st_size / 2**20:.1f} MB in {seconds:.0f} s from "
        f"{onnx_path.name}" + (f", {pinned} layers pinned to FP32" if pin is not None else ""))
    profile_shapes = {name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for name, s in shapes.items()}
    return GraphRecord(engine_path.name, "tensorrt-engine", plan.source, graph_record.inputs, graph_record.outputs,
                       {"source": onnx_path.name, "plan": plan.to_manifest(), "float32_pinned_layers": pinned,
                        "profile": profile_shapes, "build_seconds": round(seconds, 1)})


def _load_timing_cache(config, path: Path | None, log):
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)   # b"" creates a new cache ([PyDoc] IBuilderConfig)
    if cache is None and data:
        log(f"  timing cache {path} is unreadable; starting a new one")
        cache = config.create_timing_cache(b"")
    if cache is not None:
        config.set_timing_cache(cache, False)   # ignore_mismatch=False: the file is keyed by version and GPU
    return cache


def _save_timing_cache(config, path: Path) -> None:
    from ..files import write_bytes_atomic
    write_bytes_atomic(path, bytes(config.get_timing_cache().serialize()))


def _implicit_calibration(job, trt, source: Path, root: Path):
    """The entropy calibrator over the export's calibration photos, its cache keyed like the INT8 step's."""
    from ..artifact import sha256_file
    from ..runtimes.tensorrt import open_device_memory
    calibration = job.calibration
    preprocess = job.preprocess
    # The INT8 step's key, plus what TensorRT names the tensors after (the exact graph) and writes the table with.
    key = calibration_key(job.loaded.weights_sha256, calibration,
                          {"method": "tensorrt-entropy2", "batch": CALIBRATION_BATCH},
                          tensorrt=trt.__version__, network_sha256=sha256_file(source))
    cache = CalibrationCacheFile(root, key, log=job.log)
    memory = open_device_memory()
    stream = memory.stream()
    nbytes = CALIBRATION_BATCH * 3 * preprocess.height * preprocess.width * 4
    batches = calibration_batches(calibration.iter_windows(), CALIBRATION_BATCH)
    return (_entropy_calibrator(trt, batches, CALIBRATION_BATCH, cache, memory, stream, nbytes),
            (calibration, cache))


def _precision(job, plan: BuildPlan, reduced, graphs: dict, calibration):
    """The precision record and calibration record of the engines' build."""
    engines_typing = {"image": plan.typing, "text": text_plan(plan).typing}
    if reduced is not None:      # strongly typed from the FP16 or QDQ graph: that step's own record
        reduced.precision.details["engines"] = engines_typing
        return reduced.precision, reduced.calibration
    if plan.calibrator:
        calibration_set, cache = calibration
        record = PrecisionRecord("int8", ["LayerNormalization", "Softmax", "grouping assignment"],
                                 quantized_nodes="chosen by TensorRT (implicit calibration)",
                                 details={"engines": engines_typing})
        return record, {**calibration_set.summary(), "method": "tensorrt-entropy2", "batch": CALIBRATION_BATCH,
                        "cache": str(cache.directory), "reused_cache": cache.reused}
    from ..calibration.policy import FP16_KEEP_FLOAT_OPS
    _, kept = kept_float_nodes(job.staging / graphs["image"].file)
    return PrecisionRecord("fp16", FP16_KEEP_FLOAT_OPS + ["grouping assignment"], sorted(kept),
                           details={"engines": engines_typing}), None


def _check_engines(job, floats, graphs, engines, section, photos, budget):
    """The image engine against the fp32 ONNX image graph in ONNX Runtime, on the drift photos (always)."""
    from ..metrics.drift import validate_candidate
    from ..runtimes.onnxruntime import OnnxRuntime
    from ..runtimes.tensorrt import TensorRTRuntime
    from . import precision
    reference = OnnxRuntime(job.working_manifest({"image": floats.image, "text": floats.text}))
    labels = precision.drift_labels(job.options)
    with TensorRTRuntime(job.working_manifest(graphs, engines, tensorrt=section)) as runtime:
        drift = validate_candidate(reference, runtime, list(photos.paths), labels=labels)
        check = DriftCheck(f"{floats.image.file} in {reference.description}", runtime.description, photos, labels,
                           drift, budget)
    job.log(f"  {check.line()}")
    return check
