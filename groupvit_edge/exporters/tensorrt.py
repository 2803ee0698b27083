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
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..calibration.cache import calibration_key, changed_fields
from ..errors import UserError, ValidationFailed

MIN_VERSION = (10, 3)                # JetPack 6 (6.1/6.2); the parser table of checks.tensorrt is 10.3's
STRONG_BY_DEFAULT_FROM = (10, 12)    # weak typing deprecated in 10.12 (release notes)
WEAK_TYPING_REMOVED_IN = 11
TYPINGS = ("auto", "weak", "strong")
INT8_ROUTES = ("explicit", "implicit")
DEFAULT_WORKSPACE_MB = 2048          # ExportOptions.workspace_mb's default, for options objects without it
IMAGE_PROFILE = (1, 1, 8)            # ExportOptions.batch_min/opt/max defaults: windows per image-graph call
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


def batch_profiles(options) -> dict[str, BatchProfile]:
    """Profiles of both graphs from export options (`batch_*` for the image graph, `classes_*` for the text)."""
    def read(prefix, defaults):
        values = (getattr(options, f"{prefix}_{end}", None) for end in ("min", "opt", "max"))
        return BatchProfile(*(default if value is None else int(value) for value, default in zip(values, defaults)))
    return {"image": read("batch", IMAGE_PROFILE), "text": read("classes", TEXT_PROFILE)}


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
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.", dir=self.directory.parent))
        try:
            (staging / "calibration.cache").write_bytes(bytes(data))
            (staging / "key.json").write_text(json.dumps(self.key, indent=2, sort_keys=True))
            shutil.rmtree(self.directory, ignore_errors=True)
            staging.rename(self.directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


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

@dataclass
class BuildOptions:
    """The TensorRT part of the export options (read with getattr: older ExportOptions lack these fields)."""
    typing: str = "auto"
    int8_route: str = "explicit"
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    timing_cache: Path | None = None
    profiles: dict = field(default_factory=dict)
    calibration_batch: int = CALIBRATION_BATCH

    @classmethod
    def from_export_options(cls, options) -> "BuildOptions":
        workspace = getattr(options, "workspace_mb", None)
        workspace = DEFAULT_WORKSPACE_MB if workspace is None else workspace
        if int(workspace) < 1:
            raise UserError(f"--workspace-mb {workspace} is not a size: pass a positive number of MB")
        cache = getattr(options, "timing_cache", None)
        return cls(typing=getattr(options, "tensorrt_typing", None) or "auto",
                   int8_route=getattr(options, "int8_route", None) or "explicit", workspace_mb=int(workspace),
                   timing_cache=Path(cache) if cache else None, profiles=batch_profiles(options),
                   calibration_batch=int(getattr(options, "calibration_batch", None) or CALIBRATION_BATCH))


def build_fp16(context) -> None:
    """Step of target trt-fp16."""
    _build_target(context, "trt-fp16")


def build_int8(context) -> None:
    """Step of target trt-int8."""
    _build_target(context, "trt-int8")


def _readiness(context, target: str) -> None:
    from ..checks.tensorrt import check_manifest
    report = check_manifest(context.manifest, target)
    context.log(report.format(limit=10))
    if not report.ok:
        raise ValidationFailed(f"{report.summary()}, first: {report.errors[0]}; the artifact was not written")


def _build_target(context, target: str) -> None:
    from ..runtimes.tensorrt import device_properties, import_tensorrt
    from . import precision
    log, options = context.log, context.options
    _readiness(context, target)
    if target == "trt-int8" and options.calib_dir is None:   # both INT8 routes calibrate on COCO images
        raise UserError("--target trt-int8 needs calibration images: pass --calib-dir DIR "
                        "(e.g. ../shared/data/coco/calib2017)")
    trt = import_tensorrt()
    build = BuildOptions.from_export_options(options)
    plan = plan_build(target, trt.__version__, build.typing, build.int8_route)
    missing = missing_api(plan, trt)
    if missing:
        raise UserError(f"the installed TensorRT {trt.__version__} lacks {', '.join(missing)} that this build "
                        f"needs: choose another tensorrt_typing/int8_route or reinstall TensorRT")
    device = device_properties()
    log(f"building {target} engines on {device['gpu']} (sm {device['compute_capability']}): {plan.describe()}")
    if plan.source == "fp16":
        precision.to_fp16(context)
    elif plan.source == "qdq":
        precision.to_int8(context)
    if plan.source != "fp32":
        _readiness(context, target)     # the reduced-precision graph the engine is parsed from
    from ..calibration.cache import cache_root
    root = Path(options.cache_dir) if getattr(options, "cache_dir", None) else cache_root()
    timing = build.timing_cache or timing_cache_path(root, trt.__version__, device["gpu"],
                                                     device["compute_capability"])
    engines, calibration = {}, None
    for graph, graph_plan in (("image", plan), ("text", text_plan(plan))):
        source = context.staging / context.data["graphs"][graph]["file"]
        pin = kept_float_nodes(source) if graph_plan.pin_float32 else None
        calibrator = None
        if graph_plan.calibrator:
            calibrator, calibration = _implicit_calibration(context, trt, source, build, root)
        engines[graph] = build_engine(trt, source, context.staging / ENGINE_FILES[graph], graph_plan,
                                      context.data["graphs"][graph], build.profiles[graph],
                                      workspace_mb=build.workspace_mb, timing_cache=timing, pin=pin,
                                      calibrator=calibrator, log=log)
    context.data["engines"] = engines
    context.data["tensorrt"] = {"version": trt.__version__, "target": target, **device,
                                "plan": plan.to_manifest(), "text_plan": text_plan(plan).to_manifest(),
                                "workspace_mb": build.workspace_mb, "timing_cache": str(timing)}
    _record_precision(context, plan, engines, calibration)
    _validate_engines(context)


def build_engine(trt, onnx_path: Path, engine_path: Path, plan: BuildPlan, graph_record: dict,
                 profile: BatchProfile, *, workspace_mb: int, timing_cache: Path | None, pin=None,
                 calibrator=None, log=print) -> dict:
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
    for spec in graph_record["inputs"]:
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
        for spec in graph_record["inputs"]:
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
    from ..artifact import sha256_file
    return {"file": engine_path.name, "format": "tensorrt-engine", "source": onnx_path.name,
            "sha256": sha256_file(engine_path), "inputs": graph_record["inputs"],
            "outputs": graph_record["outputs"], "plan": plan.to_manifest(), "float32_pinned_layers": pinned,
            "profile": {name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])}
                        for name, s in shapes.items()},
            "build_seconds": round(seconds, 1)}


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
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(bytes(config.get_timing_cache().serialize()))
    partial.replace(path)


def _implicit_calibration(context, trt, source: Path, build: BuildOptions, root: Path):
    """The entropy calibrator over the COCO calibration images, with its cache keyed like the INT8 step's."""
    from ..artifact import sha256_file
    from ..calibration import CalibrationSet
    from ..runtimes.tensorrt import open_device_memory
    options = context.options
    if options.calib_dir is None:
        raise UserError("--target trt-int8 with int8_route implicit needs calibration images: pass --calib-dir "
                        "DIR (e.g. ../shared/data/coco/calib2017)")
    preprocess = context.manifest.preprocess
    calibration = CalibrationSet.from_dir(options.calib_dir, options.calib_count, preprocess, options.seed,
                                          log=context.log)
    # The INT8 step's key, plus what TensorRT names the tensors after (the exact graph) and writes the table with.
    key = calibration_key(context.data["model"]["weights_sha256"], calibration,
                          {"method": "tensorrt-entropy2", "batch": build.calibration_batch},
                          tensorrt=trt.__version__, network_sha256=sha256_file(source))
    cache = CalibrationCacheFile(root, key, log=context.log)
    memory = open_device_memory()
    stream = memory.stream()
    batch = build.calibration_batch
    nbytes = batch * 3 * preprocess.height * preprocess.width * 4
    batches = calibration_batches(calibration.iter_windows(), batch)
    return _entropy_calibrator(trt, batches, batch, cache, memory, stream, nbytes), (calibration, cache, batch)


def _record_precision(context, plan: BuildPlan, engines: dict, calibration) -> None:
    precision_info = context.data["precision"]
    if plan.target == "trt-fp16" and plan.typing == "weak":
        from ..calibration.policy import FP16_KEEP_FLOAT_OPS
        names, kept = kept_float_nodes(context.staging / context.data["graphs"]["image"]["file"])
        precision_info.update(compute="fp16", kept_float=FP16_KEEP_FLOAT_OPS + ["grouping assignment"],
                              kept_float_nodes=sorted(kept), quantized_nodes=[])
    elif plan.calibrator:
        calibration_set, cache, batch = calibration
        precision_info.update(compute="int8", kept_float=["LayerNormalization", "Softmax", "grouping assignment"],
                              quantized_nodes="chosen by TensorRT (implicit calibration)")
        context.data["calibration"] = {**calibration_set.summary(), "method": "tensorrt-entropy2", "batch": batch,
                                       "cache": str(cache.directory), "reused_cache": cache.reused}
    # The strongly typed paths ran precision.to_fp16 / to_int8, which recorded their own precision fields.
    precision_info["engines"] = {graph: record["plan"]["typing"] for graph, record in engines.items()}


def _validate_engines(context) -> None:
    """Drift of the image engine against the PyTorch reference on held-out images, when there are any."""
    from ..calibration import CalibrationSet
    from ..metrics.drift import measure_drift
    from ..runtimes.tensorrt import TensorRTRuntime
    from .precision import drift_images
    options = context.options
    held_out = None
    if options.calib_dir is not None:
        held_out = CalibrationSet.from_dir(options.calib_dir, options.calib_count, context.manifest.preprocess,
                                           options.seed, log=lambda message: None).held_out
    try:
        images = drift_images(context, held_out)
    except UserError:
        context.log("  engine drift not measured: pass --validation-images DIR to measure it at export")
        return
    with TensorRTRuntime(context.manifest) as runtime:
        report = measure_drift(context.reference, [runtime], images, labels=options.drift_labels,
                               confident_margin=0.01, progress=False)
    result = report.data["candidates"][0]
    context.data["validation"]["engine_drift_vs_reference"] = {
        "images": [p.name for p in images], "vocabulary": options.drift_labels,
        "class_level": {k: result["class_level"][k] for k in ("miou_vs_reference", "pixel_agreement")},
        "model_level": result["model_level"]}
    context.log(f"  engine vs PyTorch on {len(images)} held-out images: mIoU "
                f"{result['class_level']['miou_vs_reference']:.2f}, group cosine mean "
                f"{result['model_level']['group_embed_cosine']['mean']:.5f}")

