"""Building TensorRT engines from ONNX on this GPU: the build plan per TensorRT version, optimization profiles,
FP32 pins by layer metadata, the timing cache. exporters.tensorrt builds an artifact's engines with it; the
block probe (runtimes.tensorrt.probe) rebuilds the artifact's image engine with block outputs marked.

Which plan a build follows depends on the TensorRT actually installed (`plan_build`, a pure function):

| target   | TensorRT                     | network, ONNX parsed                   | builder flags                     |
|----------|------------------------------|----------------------------------------|-----------------------------------|
| trt-fp16 | 10.3 … 10.11 (auto)          | weak, fp32 (image.onnx)                | FP16, OBEY_PRECISION_CONSTRAINTS¹ |
| trt-fp16 | ≥ 10.12 (auto), 11           | STRONGLY_TYPED, FP16 (to_fp16)         | none                              |
| trt-int8 | every version (auto)         | STRONGLY_TYPED, QDQ with FP16 floats   | none                              |
| trt-int8 | 10.x, `tensorrt_typing weak` | weak, QDQ (to_int8)                    | INT8, FP16, OBEY_PRECISION_…¹     |
| trt-int8 | 10.x, `int8_route implicit`  | weak, fp32, IInt8EntropyCalibrator2    | INT8, FP16, OBEY_PRECISION_…¹     |
¹ the policy layers pinned to FP32 (layer precision and output types).
The text graph stays fp32 (`text_plan`): strongly typed from text.onnx on every version. The exporter makes the
reduced image graphs (FP16 and QDQ: exporters.precision; QDQ with FP16 floats: exporters.tensorrt); which ONNX a
plan parses is its `source`.

Version facts used below, with their sources:
- weak typing deprecated in 10.12: "Weak typing APIs deprecated ... TensorRT will be using strong-typing
  exclusively in the future" (TensorRT 10.12.0 release notes,
  https://docs.nvidia.com/deeplearning/tensorrt/latest/getting-started/release-notes-10/10.12.0.html)
- 11 removes it: "TensorRT 11.x removes all weak typing APIs" and "all precision-enabling builder flags such as
  BuilderFlag.FP16 and BuilderFlag.INT8", OBEY_PRECISION_CONSTRAINTS, `int8_calibrator`, `set_calibration_profile`
  (https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html);
  the 11.4 bindings confirm it (tests/test_tensorrt_conformance.py reads them).
- IInt8EntropyCalibrator2 "Deprecated in TensorRT 10.1. Superseded by explicit quantization."
  (https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/c-api/deprecated.html)
- STRONGLY_TYPED is bit 1 of `create_network`'s flags on 10.x (after EXPLICIT_BATCH, "ignored because networks
  are always explicit batch in TensorRT 10.0") and bit 0 on 11.x, where EXPLICIT_BATCH is gone: always read from
  the enum.
- "Precision-control build flags are not required and should not be specified" with explicit quantization and
  strong typing (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/
  quantized-types-explicit-quantization.html)
- The parser names a node's extra layers `<node>_<N>` with one counter for the whole network, so a layer name
  does not tell its node; it writes "[ONNX Layer: <node name>]" into `ILayer.metadata` (importerUtils.cpp
  processMetadata, release/10.3-GA), which is what pinning reads.
- JetPack 6.1/6.2 ship TensorRT 10.3 (JetPack 6.0 shipped 8.6, which no path here supports); JetPack is not
  supported by TensorRT 11.3/11.4 (migration guide), so Jetson stays on the 10.x paths.
Verification: the TensorRT calls are checked against the real Python bindings of 10.3, the newest 10.x and the
newest 11.x (signatures, enums, and recording fakes generated from them; tests/test_tensorrt_conformance.py).
Building and running engines on a GPU is what `benchmarks/tensorrt_device_check.py` checks; it has not yet been
run on one.
"""
from __future__ import annotations

import inspect
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ...artifact import GraphRecord
from ...errors import UserError, ValidationFailed
from ...files import write_bytes_atomic
from ...imports import require
from ...quantization.policy import fp16_blocked_nodes
from .install import tensorrt_logger
from .version import MIN_VERSION, STRONG_BY_DEFAULT_FROM, WEAK_TYPING_REMOVED_IN, version_parts

TRT_TARGETS = ("trt-fp16", "trt-int8")   # the targets a build plans for; checks.tensorrt checks graphs for them
TYPINGS = ("auto", "weak", "strong")
INT8_ROUTES = ("explicit", "implicit")
# Layer types the FP16/INT8 weak paths keep in FP32 whatever node they came from: LayerNormalization, Softmax.
FLOAT32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX")
# Never pinned: constants compute nothing, and the parser fixes Q/DQ layers' precision and output types itself.
UNPINNED_LAYER_TYPES = ("CONSTANT", "QUANTIZE", "DEQUANTIZE")
FLOAT_TYPES = ("FLOAT", "HALF", "BF16")
_LAYER_METADATA = re.compile(r"^\[ONNX Layer: (.*?)(?: \| [^|]*)*\]?$")


# ------------------------------------------------------------------------------ the TensorRT API a build uses
# Every member of the `tensorrt` module a build touches, in three forms: "Class.member" is read (a property, an
# enum member, a class attribute), "Class.member()" is called, "Class.member=" is assigned; "Class()" constructs.
# `missing_api` checks the installed TensorRT against it before anything is traced; the tests check it against
# the real bindings of 10.3, the newest 10.x and the newest 11.x, and record that a build touches nothing else.

BUILD_API = (
    "Logger()", "Logger.WARNING", "Builder()", "Builder.create_network()", "OnnxParser()",
    "OnnxParser.parse_from_file()", "OnnxParser.num_errors", "OnnxParser.get_error()",
    "Builder.create_builder_config()", "IBuilderConfig.set_memory_pool_limit()", "MemoryPoolType.WORKSPACE",
    "IBuilderConfig.profiling_verbosity=", "ProfilingVerbosity.DETAILED", "Builder.create_optimization_profile()",
    "IOptimizationProfile.set_shape()", "IBuilderConfig.add_optimization_profile()",
    "IBuilderConfig.create_timing_cache()", "IBuilderConfig.set_timing_cache()", "ITimingCache.serialize()",
    "Builder.build_serialized_network()",
)
FLAGS_API = ("IBuilderConfig.set_flag()",)
PIN_API = (
    "INetworkDefinition.num_layers", "INetworkDefinition.get_layer()", "ILayer.metadata", "ILayer.type",
    "ILayer.num_inputs", "ILayer.get_input()", "ILayer.num_outputs", "ILayer.get_output()", "ITensor.dtype",
    "ILayer.precision=", "ILayer.set_output_type()", "float32",
)
CALIBRATOR_API = (
    "IInt8EntropyCalibrator2()", "IBuilderConfig.int8_calibrator=", "IBuilderConfig.set_calibration_profile()",
)


@dataclass(frozen=True)
class BuildPlan:
    """How one engine is built: which ONNX it parses and with which network/builder flags."""
    target: str
    tensorrt: str
    typing: str                     # "strong" | "weak"
    source: str                     # "fp32" | "fp16" | "qdq" | "qdq-fp16": the ONNX the network is parsed from
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
    parsed = version_parts(version)
    if len(parsed) < 2:
        raise UserError(f"cannot read the TensorRT version {version!r}: reinstall TensorRT "
                        f"(`groupvit-edge doctor` says how on this machine)")
    if parsed[:2] < MIN_VERSION:
        raise UserError(f"TensorRT {version} is older than {MIN_VERSION[0]}.{MIN_VERSION[1]}, the oldest this "
                        f"toolkit builds for (JetPack 6.1+; JetPack 6.0 has TensorRT 8.6): upgrade TensorRT")
    if typing not in TYPINGS:
        raise UserError(f"tensorrt_typing={typing!r} is unknown: use one of {', '.join(TYPINGS)}")
    if int8_route not in INT8_ROUTES:
        raise UserError(f"int8_route={int8_route!r} is unknown: use one of {', '.join(INT8_ROUTES)}")
    modern = parsed[0] >= WEAK_TYPING_REMOVED_IN
    if modern and typing == "weak":
        raise UserError(f"TensorRT {version} removed weak typing (the FP16/INT8 builder flags): use "
                        f"tensorrt_typing strong (or auto)")
    strong = ("STRONGLY_TYPED",)
    weak_flags = ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    if target == "trt-fp16":
        if typing == "strong" or (typing == "auto" and parsed[:2] >= STRONG_BY_DEFAULT_FROM):
            return BuildPlan(target, version, "strong", "fp16", strong, ())
        return BuildPlan(target, version, "weak", "fp32", (), weak_flags, pin_float32=True)
    if target == "trt-int8":
        if int8_route == "implicit":
            if modern:
                raise UserError(f"TensorRT {version} removed implicit INT8 calibration (IInt8EntropyCalibrator2): "
                                f"use int8_route explicit, the QDQ graph")
            if typing == "strong":
                raise UserError("implicit INT8 calibration needs a weakly typed network: use tensorrt_typing weak "
                                "or auto, or int8_route explicit")
            return BuildPlan(target, version, "weak", "fp32", (), ("INT8",) + weak_flags, pin_float32=True,
                             calibrator=True)
        if typing == "weak":
            # A weakly typed network takes Q/DQ layers too; FP16 lets the float part leave FP32.
            return BuildPlan(target, version, "weak", "qdq", (), ("INT8",) + weak_flags, pin_float32=True)
        return BuildPlan(target, version, "strong", "qdq-fp16", strong, ())
    raise UserError(f"target {target!r} is not a TensorRT target: use trt-fp16 or trt-int8")


def text_plan(image_plan: BuildPlan) -> BuildPlan:
    """The text graph stays fp32 by the precision policy: strongly typed from text.onnx on every version."""
    return BuildPlan(image_plan.target, image_plan.tensorrt, "strong", "fp32", ("STRONGLY_TYPED",), ())


def required_api(plan: BuildPlan) -> tuple[str, ...]:
    """The members of `tensorrt` building this plan's engine touches (notation: see BUILD_API)."""
    needed = list(BUILD_API)
    needed += [f"NetworkDefinitionCreationFlag.{flag}" for flag in plan.network_flags]
    if plan.builder_flags:
        needed += list(FLAGS_API) + [f"BuilderFlag.{flag}" for flag in plan.builder_flags]
    if plan.pin_float32:
        needed += list(PIN_API)
    if plan.calibrator:
        needed += list(CALIBRATOR_API)
    return tuple(needed)


def missing_api(names, trt) -> list[str]:
    """The names (notation of BUILD_API) the installed bindings lack, or hold read-only where they are assigned."""
    missing = []
    for name in names:
        path = name.rstrip("()=").split(".")
        holder = trt
        for part in path[:-1]:
            holder = getattr(holder, part, None)
        found = holder is not None and hasattr(holder, path[-1])
        if found and name.endswith("="):
            static = inspect.getattr_static(holder, path[-1], None)
            found = not isinstance(static, property) or static.fset is not None
        if not found:
            missing.append(name.rstrip("()="))
    return missing


def network_flag_bits(plan: BuildPlan, trt) -> int:
    # EXPLICIT_BATCH is never passed: ignored on 10.x, gone on 11.
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
        return (self.minimum, *rest), (self.optimum, *rest), (self.maximum, *rest)


# ------------------------------------------------------------------------------------ layer pinning (weak)

@dataclass(frozen=True)
class LayerInfo:
    """What pinning needs to know of a network layer (names of trt.LayerType / trt.DataType members)."""
    index: int
    node: str | None               # the ONNX node the parser made it for; None for its own helper layers
    type: str
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]


def node_of_layer(metadata: str) -> str | None:
    """The ONNX node named by a layer's metadata, "[ONNX Layer: <node> | Local Function: …]"; None without one."""
    match = _LAYER_METADATA.match(metadata or "")
    return match.group(1) if match and match.group(1) else None


def float32_pins(layers: list[LayerInfo], kept_nodes) -> list[tuple[int, tuple[int, ...]]]:
    """(layer index, float output indices) to pin to FP32: normalization and softmax layers, and every layer of
    a node the precision policy keeps in float32. Layers that touch no float tensor (shape arithmetic),
    constants and Q/DQ layers are left alone, and only float outputs get an output type."""
    pins = []
    for layer in layers:
        if layer.type in UNPINNED_LAYER_TYPES:
            continue
        if layer.type not in FLOAT32_LAYER_TYPES and layer.node not in kept_nodes:
            continue
        if not any(t in FLOAT_TYPES for t in layer.input_types + layer.output_types):
            continue
        pins.append((layer.index, tuple(i for i, t in enumerate(layer.output_types) if t in FLOAT_TYPES)))
    return pins


def kept_float_nodes(onnx_path: Path) -> set[str]:
    """Nodes of an image graph the precision policy keeps float32: the FP16 keep-list ops and the grouping
    assignment — the set precision.to_fp16 blocks, so weak and strong builds agree. Q/DQ nodes are not compute."""
    onnx = require("onnx", extra="export", what="reading the float32 nodes of an image graph")
    model = onnx.load(str(onnx_path), load_external_data=False)
    return fp16_blocked_nodes(model)


def _layer_infos(network) -> list[LayerInfo]:
    infos = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        inputs = [layer.get_input(i) for i in range(layer.num_inputs)]
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        infos.append(LayerInfo(index, node_of_layer(layer.metadata), layer.type.name,
                               tuple(t.dtype.name for t in inputs if t is not None),
                               tuple(t.dtype.name for t in outputs)))
    return infos


def _pin_float32(trt, network, kept) -> int:
    # Layer precision and output types are weak-typing hints unless OBEY_PRECISION_CONSTRAINTS is set (the plan
    # sets it); "Setting layer precision and layer output types is not allowed" in strongly typed networks.
    pins = float32_pins(_layer_infos(network), kept)
    for index, outputs in pins:
        layer = network.get_layer(index)
        layer.precision = trt.float32
        for output in outputs:
            layer.set_output_type(output, trt.float32)
    return len(pins)


# -------------------------------------------------------------------------------------------------- build

def build_engine(trt, onnx_path: Path, engine_path: Path, plan: BuildPlan, graph_record: GraphRecord,
                 profile: BatchProfile, *, workspace_mb: int, timing_cache: Path | None, pin=None,
                 calibrator=None, log=print) -> GraphRecord:
    """Parse `onnx_path`, build one serialized engine per `plan` and write it to `engine_path`; its manifest record.

    Every call is one the real bindings of 10.3, the newest 10.x and 11.x have with this signature
    (tests/test_tensorrt_conformance.py); every bool and index TensorRT returns is checked.
    """
    started = time.perf_counter()
    logger = tensorrt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flag_bits(plan, trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ValidationFailed(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: "
                               f"{errors[0] if errors else 'no parser error given'}; the artifact was not written")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    shapes = _add_profile(builder, config, graph_record, profile)
    pinned = _pin_float32(trt, network, pin) if pin is not None else 0
    if calibrator is not None:
        _attach_calibrator(builder, config, calibrator, shapes)
    cache = _attach_timing_cache(trt, config, timing_cache, log) if timing_cache is not None else None
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValidationFailed(f"TensorRT {trt.__version__} could not build {onnx_path.name} ({plan.describe()}); "
                               f"its log above says why; the artifact was not written")
    if cache is not None and timing_cache is not None:
        _save_timing_cache(cache, timing_cache)
    engine_path.write_bytes(bytes(serialized))
    seconds = time.perf_counter() - started
    log(f"  {engine_path.name}: {engine_path.stat().st_size / 2**20:.1f} MB in {seconds:.0f} s from "
        f"{onnx_path.name}" + (f", {pinned} layers pinned to FP32" if pin is not None else ""))
    profile_shapes = {name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for name, s in shapes.items()}
    return GraphRecord(engine_path.name, "tensorrt-engine", plan.source, graph_record.inputs, graph_record.outputs,
                       {"source": onnx_path.name, "plan": plan.to_manifest(), "float32_pinned_layers": pinned,
                        "profile": profile_shapes, "build_seconds": round(seconds, 1)})


def _add_profile(builder, config, graph_record: GraphRecord, profile: BatchProfile) -> dict:
    """Optimization profile 0 over every input's batch axis; {input: (min, opt, max) shapes}."""
    shapes = {spec["name"]: profile.shapes(spec["shape"]) for spec in graph_record.inputs}
    optimization_profile = builder.create_optimization_profile()
    for name, (minimum, optimum, maximum) in shapes.items():
        optimization_profile.set_shape(name, minimum, optimum, maximum)
    if config.add_optimization_profile(optimization_profile) < 0:
        raise RuntimeError(f"TensorRT rejected the optimization profile {shapes}")
    return shapes


def _attach_calibrator(builder, config, calibrator, shapes: dict) -> None:
    # Calibration of a dynamic-shape network runs at one shape: a calibration profile whose min = opt = max is
    # the calibration batch (TensorRT developer guide, "INT8 Calibration with Dynamic Shapes").
    fixed = {name: (calibrator.get_batch_size(), *minimum[1:]) for name, (minimum, _, _) in shapes.items()}
    calibration_profile = builder.create_optimization_profile()
    for name, shape in fixed.items():
        calibration_profile.set_shape(name, shape, shape, shape)
    config.int8_calibrator = calibrator
    if not config.set_calibration_profile(calibration_profile):
        raise RuntimeError(f"TensorRT rejected the calibration profile {fixed}")


def _attach_timing_cache(trt, config, path: Path, log):
    """The timing cache stored at `path`, or a new one when there is none or this TensorRT/GPU cannot use it."""
    data = path.read_bytes() if path.is_file() else b""
    if data:
        stored = config.create_timing_cache(data)
        # ignore_mismatch=False: a cache from another GPU or TensorRT is refused (False), never half-used.
        if stored is not None and config.set_timing_cache(stored, False):
            return stored
        log(f"  timing cache {path} is unreadable or from another GPU/TensorRT; starting a new one")
    fresh = config.create_timing_cache(b"")   # b"" creates an empty cache ([PyDoc] IBuilderConfig)
    if fresh is None or not config.set_timing_cache(fresh, False):
        raise RuntimeError(f"TensorRT {trt.__version__} refused a new, empty timing cache")
    return fresh


def _save_timing_cache(cache, path: Path) -> None:
    # The cache attached to the config is the one the build filled in (IBuilderConfig.get_timing_cache returns it).
    write_bytes_atomic(path, bytes(cache.serialize()))
