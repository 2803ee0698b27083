"""Running serialized TensorRT engines: one `EngineSession` per engine, and `TensorRTRuntime` over an artifact's
image and text engines.

Each runtime owns one CUDA stream and allocates its buffers once, for the largest shapes of the engines'
optimization profiles; calls with more windows than the profile allows run in chunks, calls with fewer than its
minimum are padded to it and sliced back. Written against the TensorRT ≥ 10 Python API (name-based I/O:
`set_input_shape`, `set_tensor_address`, `execute_async_v3`); every member used is listed in RUNTIME_API.
"""
from __future__ import annotations

import json
import math
import re
import threading
import warnings
from dataclasses import dataclass

import numpy as np

from ...artifact import Manifest
from ...errors import UserError
from ...options import option
from ..base import ImageEncoding, Runtime
from . import cuda, install
from .version import engine_incompatibility

# The members of `tensorrt` the runtime touches (notation of build.BUILD_API: "X.y" read, "X.y()"
# called, "X.y=" assigned, "X()" constructed); tests check them against the real bindings of every version.
LOGGER_API = ("Logger()", "Logger.WARNING")
RUNTIME_API = LOGGER_API + (
    "Runtime()", "Runtime.deserialize_cuda_engine()", "ICudaEngine.create_execution_context()",
    "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name()", "ICudaEngine.get_tensor_mode()",
    "TensorIOMode.INPUT", "ICudaEngine.get_tensor_dtype()", "nptype()", "ICudaEngine.get_tensor_profile_shape()",
    "IExecutionContext.set_input_shape()", "IExecutionContext.get_tensor_shape()",
    "IExecutionContext.set_tensor_address()", "IExecutionContext.execute_async_v3()",
)
INSPECTOR_API = ("ICudaEngine.create_engine_inspector()", "EngineInspector.execution_context=",
                 "ICudaEngine.num_layers", "LayerInformationFormat.JSON", "EngineInspector.get_layer_information()")


def batch_chunks(count: int, largest: int) -> list[slice]:
    """Slices of at most `largest` items covering `count`: calls beyond the profile's max batch run in pieces."""
    if largest < 1:
        raise ValueError("the profile's largest batch must be at least 1")
    return [slice(start, min(start + largest, count)) for start in range(0, count, largest)]


def manifest_reason(manifest: Manifest) -> str | None:
    """The manifest half of `unsupported_reason`: engines named and present, whatever this machine has."""
    engines = manifest.engines
    if not {"image", "text"} <= set(engines):
        return "the artifact holds no TensorRT engines (export it with --target trt-fp16 or trt-int8)"
    if manifest.directory is not None:
        for graph, record in engines.items():
            if not manifest.engine_path(graph).is_file():
                return f"it is missing {record.file} ({graph} engine) that its manifest names; re-run export"
    return None


def numpy_dtype(trt, dtype) -> np.dtype | None:
    """The numpy type of a TensorRT DataType; None for BF16/FP8/INT4/FP4/E8M0, for which `trt.nptype` raises
    TypeError ("Could not resolve TensorRT datatype to an equivalent numpy datatype") in every version."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        return None


def padded_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` with its last row repeated up to `rows` rows: a call below the profile's minimum batch runs at the
    minimum and the extra rows are dropped again (a real row keeps every layer's numbers in range)."""
    if len(array) >= rows:
        return array
    return np.concatenate([array, np.repeat(array[-1:], rows - len(array), axis=0)])


@dataclass(frozen=True)
class LayerPrecision:
    """One engine layer as the engine inspector reports it."""
    name: str
    layer_type: str
    precision: str          # the narrowest type among its inputs and outputs: INT8, FP8, FP16, BF16, FP32, …
    formats: tuple[str, ...]


# Engine-inspector "Format/Datatype" texts ("Row major linear FP16 format", "Thirty-two wide channel vectorized
# row major Int8 format.", "Float", "Half") → type names, narrowest first; bf16 before "float" (bfloat16).
_FORMAT_TYPES = (("INT4", r"int4"), ("FP4", r"fp4"), ("INT8", r"int8"), ("FP8", r"fp8"), ("BF16", r"bf16|bfloat"),
                 ("FP16", r"fp16|half"), ("FP32", r"fp32|float"), ("INT32", r"int32"), ("INT64", r"int64"),
                 ("BOOL", r"bool"))
NOT_COMPUTING_LAYERS = ("Reformat", "NoOp", "Constant", "Shuffle")


def format_type(text: str) -> str | None:
    for name, pattern in _FORMAT_TYPES:
        if re.search(pattern, text, re.IGNORECASE):
            return name
    return None


def parse_layer_information(text: str) -> LayerPrecision:
    """One layer's `get_layer_information(i, LayerInformationFormat.JSON)` (DETAILED profiling verbosity)."""
    info = json.loads(text)
    if not isinstance(info, dict):    # an engine built without DETAILED verbosity names its layers only
        return LayerPrecision(str(info), "?", "unknown", ())
    formats = tuple(str(tensor.get("Format/Datatype", tensor.get("DataType", "")))
                    for key in ("Inputs", "Outputs") for tensor in info.get(key, []) if isinstance(tensor, dict))
    found = [format_type(text) for text in formats]
    order = [name for name, _ in _FORMAT_TYPES]
    precision = min((t for t in found if t), key=order.index, default="unknown")
    return LayerPrecision(str(info.get("Name", "?")), str(info.get("LayerType", "?")), precision, formats)


def precision_counts(layers: list[LayerPrecision]) -> dict[str, int]:
    """How many computing layers run in each precision (reformats, no-ops, constants, shuffles left out)."""
    counts: dict[str, int] = {}
    for layer in layers:
        if layer.layer_type not in NOT_COMPUTING_LAYERS:
            counts[layer.precision] = counts.get(layer.precision, 0) + 1
    return counts


class EngineSession:
    """One deserialized engine with its execution context and I/O buffers sized for the profile's maxima.

    Every bool TensorRT returns (set_input_shape, set_tensor_address, execute_async_v3) is checked: a False is a
    bug here, never something to run past."""

    def __init__(self, trt, runtime, path, memory, stream):
        self.trt, self.memory, self.stream, self.path = trt, memory, stream, path
        self._lock = threading.Lock()
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            # deserialize_cuda_engine "Returns: The ICudaEngine, or None if it could not be deserialized."
            raise UserError(f"TensorRT {trt.__version__} cannot load {path}: it was built by another TensorRT or "
                            f"for another GPU; re-export the artifact with its trt-* target on this machine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {}
        for name in names:
            dtype = self.engine.get_tensor_dtype(name)
            self.dtypes[name] = numpy_dtype(trt, dtype)
            if self.dtypes[name] is None:
                raise UserError(f"{path} has I/O tensor {name} of type {dtype.name}, which numpy cannot hold: "
                                f"re-export the artifact; the toolkit's graphs keep float32/int32 I/O")
        # Profile 0: (min, opt, max) per input; buffers are sized once for max and reused by every call.
        self.profile = {n: [tuple(shape) for shape in self.engine.get_tensor_profile_shape(n, 0)] for n in self.inputs}
        self.min_batch = max(shapes[0][0] for shapes in self.profile.values())
        self.max_batch = min(shapes[2][0] for shapes in self.profile.values())
        for name, shapes in self.profile.items():
            self._set_shape(name, shapes[2])
        shapes = {**{n: s[2] for n, s in self.profile.items()},
                  **{n: tuple(self.context.get_tensor_shape(n)) for n in self.outputs}}
        self.buffers = {}
        for name in names:
            self.buffers[name] = memory.buffer(math.prod(shapes[name]) * self.dtypes[name].itemsize)
            if not self.context.set_tensor_address(name, self.buffers[name].ptr):
                raise RuntimeError(f"TensorRT refused the device address of {name} in {path}")

    def _set_shape(self, name: str, shape: tuple) -> None:
        if not self.context.set_input_shape(name, shape):
            low, _, high = self.profile[name]
            raise RuntimeError(f"TensorRT refused input shape {list(shape)} for {name} of {self.path} "
                               f"(profile {list(low)} … {list(high)})")

    def _check(self, name: str, array: np.ndarray) -> None:
        expected = self.profile[name][2][1:]
        if tuple(array.shape[1:]) != tuple(expected):
            raise UserError(f"{name} has shape {list(array.shape)} but this engine takes [N, "
                            f"{', '.join(map(str, expected))}]: prepare inputs at the artifact's export size")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # One execution context and one set of buffers: concurrent callers take turns.
        with self._lock:
            return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(next(iter(feeds.values())))
        if count == 0:
            raise UserError(f"no {', '.join(self.inputs)} to encode: pass at least one")
        parts = []
        for piece in batch_chunks(count, self.max_batch):
            rows = piece.stop - piece.start
            for name in self.inputs:
                array = np.ascontiguousarray(feeds[name][piece], dtype=self.dtypes[name])
                self._check(name, array)
                array = padded_rows(array, self.min_batch)
                self._set_shape(name, array.shape)
                self.buffers[name].upload(array, self.stream)
            if not self.context.execute_async_v3(self.stream.handle):
                raise RuntimeError(f"TensorRT execution failed for inputs {[feeds[n].shape for n in self.inputs]}")
            pending = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                nbytes = math.prod(shape) * self.dtypes[name].itemsize
                pending[name] = (shape, self.buffers[name].download(nbytes, self.stream))
            self.stream.synchronize()
            # Copy out of the reused pinned buffers (dropping padded rows); float outputs as float32 whatever the
            # engine's I/O type.
            parts.append({name: raw.view(self.dtypes[name]).reshape(shape)[:rows].astype(
                np.float32 if self.dtypes[name].kind == "f" else self.dtypes[name]) for name, (shape, raw) in
                pending.items()})
        return {name: np.concatenate([part[name] for part in parts]) for name in self.outputs}

    def layer_precisions(self) -> list[LayerPrecision]:
        """What the engine inspector says about every layer (precisions need DETAILED profiling verbosity, which
        build.build_engine sets); the context, whose input shapes are set, resolves the dynamic shapes."""
        inspector = self.engine.create_engine_inspector()
        inspector.execution_context = self.context
        layout = self.trt.LayerInformationFormat.JSON
        return [parse_layer_information(inspector.get_layer_information(index, layout))
                for index in range(self.engine.num_layers)]

    def close(self) -> None:
        for buffer in self.buffers.values():
            buffer.free()
        self.buffers = {}
        self.context = self.engine = None


@dataclass(frozen=True)
class Options:
    device_memory: str = option("auto", "tensorrt: where I/O buffers come from.",
                                choices=("auto", "cuda-python", "torch"))
    gpu: int = option(0, "tensorrt: CUDA device index.", minimum=0)


def open_runtime(manifest: Manifest, options: Options) -> TensorRTRuntime:
    return TensorRTRuntime(manifest, device_memory=options.device_memory, device=options.gpu)


class TensorRTRuntime(Runtime):
    name = install.NAME

    def __init__(self, manifest: Manifest, device_memory: str = "auto", device: int = 0):
        reason = manifest_reason(manifest)
        if reason:
            raise UserError(f"{manifest.directory} cannot run on TensorRT: {reason}")
        trt = install.import_tensorrt()
        self.manifest, self._trt = manifest, trt
        self.device = cuda.device_properties(device)
        reason = engine_incompatibility(manifest.tensorrt, trt.__version__, self.device)
        if reason:
            raise UserError(f"{manifest.directory} cannot run here: {reason}")
        recorded = manifest.tensorrt or {}
        if recorded.get("gpu") != self.device.gpu:
            warnings.warn(f"engines built on {recorded.get('gpu')} run on {self.device.gpu} (same compute "
                          f"capability); rebuild on this GPU if the timings matter", stacklevel=2)
        self._memory = cuda.open_device_memory(device_memory, device)
        self._stream = self._memory.stream()
        self._runtime = trt.Runtime(install.tensorrt_logger(trt))
        self._image: EngineSession | None = self._session("image")
        self._text: EngineSession | None = None    # built on first use: a precomputed vocabulary never needs it
        self._text_lock = threading.Lock()

    def _session(self, graph: str) -> EngineSession:
        path = self.manifest.engine_path(graph)
        return EngineSession(self._trt, self._runtime, path, self._memory, self._stream)

    def _image_session(self) -> EngineSession:
        if self._image is None:
            raise RuntimeError(f"the TensorRT runtime of {self.manifest.directory} is closed")
        return self._image

    def _text_session(self) -> EngineSession:
        with self._text_lock:
            if self._text is None:
                self._text = self._session("text")
            return self._text

    def encode_image(self, pixels: np.ndarray) -> ImageEncoding:
        outputs = self._image_session().run({"pixels": pixels})
        return ImageEncoding.from_outputs(outputs)

    def encode_text(self, token_ids: np.ndarray) -> np.ndarray:
        return self._text_session().run({"token_ids": token_ids})[self.manifest.text_output]

    def layer_precisions(self, graph: str = "image") -> list[LayerPrecision]:
        """Per layer of the image (or text) engine, the precision TensorRT chose (engine inspector)."""
        return (self._image_session() if graph == "image" else self._text_session()).layer_precisions()

    @property
    def description(self) -> str:
        compute = self.manifest.precision.compute
        return f"tensorrt {self._trt.__version__} ({self.device.gpu}, {compute}, {self._memory.kind} buffers)"

    def close(self) -> None:
        for session in (self._image, self._text):
            if session is not None:
                session.close()
        self._image = self._text = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

