"""TensorRT backend: runs the serialized engines of a trt-fp16 / trt-int8 artifact on an NVIDIA GPU.

Device memory comes from cuda-python (no torch needed on a Jetson) or, as an alternative, torch CUDA tensors.
Each runtime owns one CUDA stream and allocates its buffers once, for the largest shapes of the engines'
optimization profiles; calls with more windows than the profile allows run in chunks, calls with fewer than its
minimum are padded to it and sliced back.

Written against the TensorRT ≥ 10 Python API (name-based I/O: `set_input_shape`, `set_tensor_address`,
`execute_async_v3`), and checked against the real bindings of 10.3, the newest 10.x and the newest 11.x: every
member used is listed in RUNTIME_API, and tests run this module against recording fakes generated from each
version's bindings. Running engines on a GPU is what `benchmarks/tensorrt_device_check.py` checks; it has not
yet been run on one.
"""
from __future__ import annotations

import ctypes
import functools
import json
import math
import platform
import re
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import Manifest
from ..errors import UserError
from ..options import option
from .base import Configuration, ImageEncoding, Runtime, importable
from .probes import IMAGE_INPUT, REFERENCE_SUFFIX, Probe

NAME = "tensorrt"
EXTRA = "tensorrt"
# cuda-python 13 links the CUDA 13 runtime statically and needs an R580 driver; JetPack 6 has CUDA 12.6.
CUDA_PYTHON_PIN = "cuda-python>=12.6,<13"
JETSON_CUDA_PYTHON_PIN = "cuda-python>=12.6,<12.7"

# The members of `tensorrt` the runtime touches (notation of tensorrt_build.BUILD_API: "X.y" read, "X.y()"
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


def install_hint(machine: str | None = None) -> str:
    """How TensorRT gets onto a machine: pip on x86-64; on a Jetson (aarch64) JetPack's apt packages, which pip
    cannot replace (PyPI's aarch64 TensorRT wheels are for Arm servers, not Jetson)."""
    if (machine or platform.machine()).lower() in ("aarch64", "arm64"):
        return (f"on a Jetson TensorRT comes with JetPack 6.1+ (sudo apt install python3-libnvinfer), so create the "
                f"venv with `python3 -m venv --system-site-packages` and pip install groupvit-edge[tensorrt] "
                f"'{JETSON_CUDA_PYTHON_PIN}' in it")
    return "pip install groupvit-edge[tensorrt] on a machine with an NVIDIA GPU"


def not_installed_message(machine: str | None = None) -> str:
    return (f"TensorRT is not installed: engines are built and run on the machine that uses them; "
            f"{install_hint(machine)}; `groupvit-edge doctor` shows what is here")


# ----------------------------------------------------------------------------------------- imports and device

def import_tensorrt():
    """The `tensorrt` module, or a UserError with the one sentence that says how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise UserError(not_installed_message()) from None
    except Exception as error:   # a wheel whose CUDA libraries are missing fails with OSError and friends
        raise UserError(f"TensorRT is installed but cannot be loaded ({error}): reinstall it for this machine's "
                        f"CUDA ({install_hint()})") from None
    return tensorrt


@functools.cache
def tensorrt_logger(trt):
    """The one logger of this process for `trt`: TensorRT keeps the logger of the first Builder or Runtime and
    ignores later ones, so builds and runtimes share it."""
    return trt.Logger(trt.Logger.WARNING)


def cuda_runtime_module():
    """cuda-python's runtime API, or None.

    cuda-python 12.6.1 moved `cuda.cudart` to `cuda.bindings.runtime` and 13.0 removed the old name
    (https://nvidia.github.io/cuda-python/cuda-bindings/latest/release/13.0.0-notes.html), so try both.
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def is_installed() -> bool:
    return importable("tensorrt") and (cuda_runtime_module() is not None or _torch_cuda() is not None)


def devices() -> list[str]:
    """The CUDA device engines are built for and run on (device 0, as export and --gpu default to)."""
    return [str(device_properties())]


@dataclass(frozen=True)
class CudaDevice:
    """What ties an engine to a GPU: engines load only on the compute capability they were built for."""
    gpu: str
    compute_capability: str       # "8.7"

    def __str__(self) -> str:
        return f"{self.gpu} (compute capability {self.compute_capability})"


def device_properties(device: int = 0) -> CudaDevice:
    """Name and compute capability of a CUDA device, from cuda-python or torch; a UserError when there is none."""
    cudart = cuda_runtime_module()
    failure = None
    if cudart is not None:
        try:
            properties = _call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        except CudaError as error:
            failure = error
        else:
            name = properties.name
            name = name.decode(errors="replace").rstrip("\0") if isinstance(name, bytes) else str(name)
            return CudaDevice(name, f"{properties.major}.{properties.minor}")
    torch = _torch_cuda()
    if torch is not None:
        properties = torch.cuda.get_device_properties(device)
        return CudaDevice(properties.name, f"{properties.major}.{properties.minor}")
    if failure is not None:
        raise UserError(cuda_python_failure(failure, device))
    raise UserError(f"no CUDA device {device} is visible (cuda-python {'found' if cudart else 'missing'}, torch "
                    f"CUDA missing): TensorRT needs an NVIDIA GPU; {install_hint()}")


class CudaError(RuntimeError):
    """A CUDA runtime call through cuda-python returned an error; `name` is the cudaError_t member's name."""

    def __init__(self, call: str, error):
        self.call, self.name = call, getattr(error, "name", str(error))
        super().__init__(f"{call} failed: {self.name}")


def _call(cudart, result, call: str):
    # cuda-python returns (error, *values) from every call (NVIDIA/cuda-python discussion #1035).
    error, values = result[0], result[1:]
    if error != cudart.cudaError_t.cudaSuccess:
        raise CudaError(call, error)
    return values[0] if len(values) == 1 else (values or None)


def cuda_python_version() -> str:
    from importlib import metadata
    for distribution in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "(version unknown)"


def cuda_python_failure(error: CudaError, device: int = 0) -> str:
    """One sentence for a cuda-python that cannot use this machine's CUDA."""
    if error.name == "cudaErrorInsufficientDriver":
        # cuda-python 13 links the CUDA 13 runtime statically: a CUDA 12 driver (JetPack 6: 12.6) is too old.
        pin = JETSON_CUDA_PYTHON_PIN if platform.machine().lower() == "aarch64" else CUDA_PYTHON_PIN
        return (f"cuda-python {cuda_python_version()} needs a newer CUDA driver than this machine has ({error}): "
                f"pip install '{pin}', the cuda-python of this driver's CUDA 12, or use torch CUDA buffers "
                f"(--device-memory torch)")
    return (f"cuda-python {cuda_python_version()} cannot use CUDA device {device} ({error}): check the driver "
            f"(nvidia-smi, or tegrastats on a Jetson) and --gpu")


# --------------------------------------------------------------------------------------------- pure checks

def version_parts(version: str) -> tuple[int, ...]:
    """The dotted numbers a TensorRT version starts with: "10.3.0" → (10, 3, 0), "10.12.0.36" → (10, 12, 0, 36),
    "10.3.0rc1" → (10, 3, 0); () for a string that starts with none."""
    match = re.match(r"\s*\d+(?:\.\d+)*", str(version))
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def versions_match(built: str, installed: str) -> bool:
    """Same TensorRT release. The standard runtime needs major, minor, patch (and build where both have one) to
    match (DRIVE OS TensorRT release notes; "By default, TensorRT engines are compatible only with the version of
    TensorRT used to build them", 10.16 version-compatibility page); `tensorrt.__version__` has 3 or 4 parts."""
    a, b = version_parts(built), version_parts(installed)
    common = min(len(a), len(b))
    return common >= 3 and a[:common] == b[:common]


def engine_incompatibility(recorded: dict | None, installed_version: str, device: CudaDevice | None) -> str | None:
    """Why engines described by a manifest's `tensorrt` record cannot load here, in one sentence; None if they can.

    Engines are tied to the TensorRT version that built them and, without hardware compatibility mode, to the GPU
    architecture ("Engines built with hardware compatibility mode can run on multiple GPU architectures ... Without
    this mode, engines are not portable across different GPU architectures", support matrix 10.10).
    """
    if not recorded or not recorded.get("version"):
        return ("its manifest does not say which TensorRT built the engines; re-run `groupvit-edge export` "
                "with a trt-* target on this machine")
    target = recorded.get("target", "trt-fp16")
    if not versions_match(recorded["version"], installed_version):
        return (f"its engines were built with TensorRT {recorded['version']} and this machine has TensorRT "
                f"{installed_version}: an engine loads only in the TensorRT that built it; rebuild here with "
                f"`groupvit-edge export --target {target}`")
    if device is not None and recorded.get("compute_capability") != device.compute_capability:
        return (f"its engines were built for compute capability {recorded.get('compute_capability')} "
                f"({recorded.get('gpu')}) and this GPU ({device.gpu}) is {device.compute_capability}: "
                f"rebuild on this GPU with `groupvit-edge export --target {target}`")
    return None


def batch_chunks(count: int, largest: int) -> list[slice]:
    """Slices of at most `largest` items covering `count`: calls beyond the profile's max batch run in pieces."""
    if largest < 1:
        raise ValueError("the profile's largest batch must be at least 1")
    return [slice(start, min(start + largest, count)) for start in range(0, count, largest)]


def manifest_reason(manifest: Manifest) -> str | None:
    """The manifest half of `unsupported_reason`: engines named and present, whatever this machine has."""
    engines = manifest.data.get("engines") or {}
    if not {"image", "text"} <= set(engines):
        return "the artifact holds no TensorRT engines (export it with --target trt-fp16 or trt-int8)"
    if manifest.directory is not None:
        for graph, record in engines.items():
            if not manifest.engine_path(graph).is_file():
                return f"it is missing {record['file']} ({graph} engine) that its manifest names; re-run export"
    return None


def unsupported_reason(manifest: Manifest) -> str | None:
    reason = manifest_reason(manifest)
    if reason is None and is_installed():
        import tensorrt
        try:
            device = device_properties()
        except UserError as error:
            return str(error)
        reason = engine_incompatibility(manifest.data.get("tensorrt"), tensorrt.__version__, device)
    return reason


def configurations(manifest: Manifest) -> list[Configuration]:
    """The engines run in the precision they were built with; there is one way to run them."""
    if not is_installed() or unsupported_reason(manifest) is not None:
        return []
    return [Configuration(NAME, {}, f"tensorrt, {manifest.data['precision'].get('compute', '?')} engines")]


# ------------------------------------------------------------------------------------------ device memory

class _CudaPythonMemory:
    """Device buffers and a stream from cuda-python; pinned host staging so copies can be asynchronous."""
    kind = "cuda-python"

    def __init__(self, cudart, device: int = 0):
        self.cudart = cudart
        self.call(cudart.cudaSetDevice(device), "cudaSetDevice")

    def call(self, result, call: str):
        return _call(self.cudart, result, call)

    def stream(self):
        return _CudaPythonStream(self)

    def buffer(self, nbytes: int):
        return _CudaPythonBuffer(self, nbytes)


class _CudaPythonStream:
    def __init__(self, memory: _CudaPythonMemory):
        self.memory = memory
        self.handle = memory.call(memory.cudart.cudaStreamCreate(), "cudaStreamCreate")

    def synchronize(self) -> None:
        self.memory.call(self.memory.cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            self.memory.call(self.memory.cudart.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


class _CudaPythonBuffer:
    def __init__(self, memory: _CudaPythonMemory, nbytes: int):
        cudart = memory.cudart
        self.memory, self.nbytes = memory, max(int(nbytes), 1)
        self.ptr = int(memory.call(cudart.cudaMalloc(self.nbytes), "cudaMalloc"))
        host = memory.call(cudart.cudaMallocHost(self.nbytes), "cudaMallocHost")
        self._host_ptr = int(host)
        self.host = np.ctypeslib.as_array(ctypes.cast(self._host_ptr, ctypes.POINTER(ctypes.c_uint8)), (self.nbytes,))

    def upload(self, array: np.ndarray, stream: _CudaPythonStream) -> None:
        raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        self.host[:raw.size] = raw
        cudart = self.memory.cudart
        self.memory.call(cudart.cudaMemcpyAsync(self.ptr, self._host_ptr, raw.size,
                                                cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle),
                         "cudaMemcpyAsync")

    def download(self, nbytes: int, stream: _CudaPythonStream) -> np.ndarray:
        """Enqueue a device→host copy; the returned bytes are valid after `stream.synchronize()`."""
        cudart = self.memory.cudart
        self.memory.call(cudart.cudaMemcpyAsync(self._host_ptr, self.ptr, nbytes,
                                                cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle),
                         "cudaMemcpyAsync")
        return self.host[:nbytes]

    def free(self) -> None:
        if self.ptr:
            self.memory.call(self.memory.cudart.cudaFree(self.ptr), "cudaFree")
            self.memory.call(self.memory.cudart.cudaFreeHost(self._host_ptr), "cudaFreeHost")
            self.ptr = 0


class _TorchMemory:
    """The same buffers as torch CUDA tensors, for machines that have torch but not cuda-python."""
    kind = "torch"

    def __init__(self, torch, device: int = 0):
        self.torch, self.device = torch, torch.device("cuda", device)

    def stream(self):
        return _TorchStream(self.torch, self.device)

    def buffer(self, nbytes: int):
        return _TorchBuffer(self.torch, self.device, nbytes)


class _TorchStream:
    def __init__(self, torch, device):
        self.cuda_stream = torch.cuda.Stream(device=device)
        self.handle = self.cuda_stream.cuda_stream
        self.torch = torch

    def synchronize(self) -> None:
        self.cuda_stream.synchronize()

    def close(self) -> None:
        self.cuda_stream = None


class _TorchBuffer:
    def __init__(self, torch, device, nbytes: int):
        self.torch, self.nbytes = torch, max(int(nbytes), 1)
        self.device_tensor = torch.empty(self.nbytes, dtype=torch.uint8, device=device)
        self.host = torch.empty(self.nbytes, dtype=torch.uint8, pin_memory=True)
        self.ptr = self.device_tensor.data_ptr()

    def upload(self, array: np.ndarray, stream: _TorchStream) -> None:
        raw = self.torch.from_numpy(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
        self.host[:raw.numel()].copy_(raw)
        with self.torch.cuda.stream(stream.cuda_stream):
            self.device_tensor[:raw.numel()].copy_(self.host[:raw.numel()], non_blocking=True)

    def download(self, nbytes: int, stream: _TorchStream) -> np.ndarray:
        with self.torch.cuda.stream(stream.cuda_stream):
            self.host[:nbytes].copy_(self.device_tensor[:nbytes], non_blocking=True)
        return self.host[:nbytes].numpy()

    def free(self) -> None:
        self.device_tensor = self.host = None
        self.ptr = 0


def open_device_memory(kind: str = "auto", device: int = 0):
    """Buffers and streams from cuda-python ("cuda-python"), torch ("torch"), or whichever works here ("auto":
    cuda-python first, torch when cuda-python is missing or cannot use this driver)."""
    if kind not in ("auto", "cuda-python", "torch"):
        raise UserError(f"device_memory={kind!r} is unknown: use auto, cuda-python or torch")
    failure = None
    cudart = cuda_runtime_module() if kind in ("auto", "cuda-python") else None
    if cudart is not None:
        try:
            return _CudaPythonMemory(cudart, device)
        except CudaError as error:
            failure = error
    torch = _torch_cuda() if kind in ("auto", "torch") else None
    if torch is not None:
        if failure is not None:
            warnings.warn(f"{cuda_python_failure(failure, device)}; using torch CUDA buffers", stacklevel=2)
        return _TorchMemory(torch, device)
    if failure is not None:
        raise UserError(cuda_python_failure(failure, device))
    wanted = "cuda-python" if kind == "auto" else kind
    raise UserError(f"TensorRT needs device memory from {wanted}, which is not available here: {install_hint()} "
                    f"(it brings cuda-python)")


# ------------------------------------------------------------------------------------------------ engines

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
        tensorrt_build.build_engine sets); the context, whose input shapes are set, resolves the dynamic shapes."""
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
    name = NAME

    def __init__(self, manifest: Manifest, device_memory: str = "auto", device: int = 0):
        reason = manifest_reason(manifest)
        if reason:
            raise UserError(f"{manifest.directory} cannot run on TensorRT: {reason}")
        trt = import_tensorrt()
        self.manifest, self._trt = manifest, trt
        self.device = device_properties(device)
        reason = engine_incompatibility(manifest.data.get("tensorrt"), trt.__version__, self.device)
        if reason:
            raise UserError(f"{manifest.directory} cannot run here: {reason}")
        recorded = manifest.data["tensorrt"]
        if recorded.get("gpu") != self.device.gpu:
            warnings.warn(f"engines built on {recorded.get('gpu')} run on {self.device.gpu} (same compute "
                          f"capability); rebuild on this GPU if the timings matter", stacklevel=2)
        self._memory = open_device_memory(device_memory, device)
        self._stream = self._memory.stream()
        self._runtime = trt.Runtime(tensorrt_logger(trt))
        self._image = self._session("image")
        self._text = None    # built on first use: a precomputed vocabulary never needs it
        self._text_lock = threading.Lock()

    def _session(self, graph: str) -> EngineSession:
        path = self.manifest.engine_path(graph)
        return EngineSession(self._trt, self._runtime, path, self._memory, self._stream)

    def encode_image(self, pixels: np.ndarray) -> ImageEncoding:
        outputs = self._image.run({"pixels": pixels})
        return ImageEncoding.from_outputs(outputs)

    def encode_text(self, token_ids: np.ndarray) -> np.ndarray:
        with self._text_lock:
            if self._text is None:
                self._text = self._session("text")
        return self._text.run({"token_ids": token_ids})["text_embeds"]

    def layer_precisions(self, graph: str = "image") -> list[LayerPrecision]:
        """Per layer of the image (or text) engine, the precision TensorRT chose (engine inspector)."""
        if graph == "text" and self._text is None:
            self._text = self._session("text")
        return (self._image if graph == "image" else self._text).layer_precisions()

    @property
    def description(self) -> str:
        compute = self.manifest.data["precision"].get("compute", "?")
        return f"tensorrt {self._trt.__version__} ({self.device.gpu}, {compute}, {self._memory.kind} buffers)"

    def close(self) -> None:
        for session in (self._image, self._text):
            if session is not None:
                session.close()
        self._image = self._text = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None


# ------------------------------------------------------------------------------------------ block probe

def block_probe(manifest: Manifest, outputs, forced, options: Options) -> BlockProbe:
    return BlockProbe(manifest, outputs, forced, options)


class BlockProbe(Probe):
    """Engines built like the artifact's image engine (its recorded plan and source ONNX), block tensors marked
    as outputs, batch of one. `trt` and `memory` are the real module and device memory unless given."""

    def __init__(self, manifest: Manifest, outputs, forced, options, trt=None, memory=None):
        from .tensorrt_build import build_probe_engine  # tensorrt_build imports this module
        self._trt = trt if trt is not None else import_tensorrt()
        self._memory = memory if memory is not None else open_device_memory(options.device_memory, options.gpu)
        self._scratch = tempfile.TemporaryDirectory(prefix="groupvit-edge-blocks-")
        self._stream = self._memory.stream()
        runtime = self._trt.Runtime(tensorrt_logger(self._trt))
        self._sessions = {}
        for kind, reads in (("free", ()), ("forced", forced)):
            engine, missing = build_probe_engine(self._trt, manifest, outputs, reads, Path(self._scratch.name), kind)
            self.missing = missing if kind == "free" else self.missing
            self._sessions[kind] = EngineSession(self._trt, runtime, engine, self._memory, self._stream)
        compute = manifest.data["precision"].get("compute", "?")
        self.description = f"probe engines in tensorrt {self._trt.__version__} ({compute}, block outputs marked)"

    def run(self, window: np.ndarray, reference: dict | None = None) -> dict[str, np.ndarray]:
        session = self._sessions["free" if reference is None else "forced"]
        feeds = {name: (window[None] if name == IMAGE_INPUT else reference[name.removesuffix(REFERENCE_SUFFIX)])
                 for name in session.inputs}
        return session.run(feeds)

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._stream.close()
        self._scratch.cleanup()
