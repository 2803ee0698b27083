"""TensorRT backend: runs the serialized engines of a trt-fp16 / trt-int8 artifact on an NVIDIA GPU.

Device memory comes from cuda-python (no torch needed on a Jetson) or, as an alternative, torch CUDA tensors.
Each runtime owns one CUDA stream and allocates its buffers once, for the largest shapes of the engines'
optimization profiles; calls with more windows than the profile allows run in chunks.

Written against the documented TensorRT ≥ 10 Python API (name-based I/O: `set_input_shape`,
`set_tensor_address`, `execute_async_v3`; NVIDIA/TensorRT samples/python/common_runtime.py) — TensorRT cannot be
installed where this toolkit is developed, so only the pure functions below are tested there.
"""
from __future__ import annotations

import ctypes
import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..artifact import Manifest
from ..errors import UserError
from ..options import option
from .base import ImageEncoding, Runtime, importable

NAME = "tensorrt"
EXTRA = "tensorrt"
ENGINE_FORMAT = "tensorrt-engine"
NOT_INSTALLED = ("TensorRT is not installed: engines are built and run on the machine that uses them, so pip "
                 "install groupvit-edge[tensorrt] on a machine with an NVIDIA GPU; `groupvit-edge doctor` shows "
                 "what is here")


# ----------------------------------------------------------------------------------------- imports and device

def import_tensorrt():
    """The `tensorrt` module, or a UserError with the one sentence that says how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise UserError(NOT_INSTALLED) from None
    except Exception as error:   # a wheel whose CUDA libraries are missing fails with OSError and friends
        raise UserError(f"TensorRT is installed but cannot be loaded ({error}): reinstall it for this machine's "
                        f"CUDA; `groupvit-edge doctor` shows what is here") from None
    return tensorrt


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


def device_properties(device: int = 0) -> dict:
    """Name and compute capability of a CUDA device, from cuda-python or torch; a UserError when there is none."""
    cudart = cuda_runtime_module()
    if cudart is not None:
        error, properties = cudart.cudaGetDeviceProperties(device)
        if error == cudart.cudaError_t.cudaSuccess:
            name = properties.name
            name = name.decode(errors="replace").rstrip("\0") if isinstance(name, bytes) else str(name)
            return {"gpu": name, "compute_capability": f"{properties.major}.{properties.minor}"}
    torch = _torch_cuda()
    if torch is not None:
        properties = torch.cuda.get_device_properties(device)
        return {"gpu": properties.name, "compute_capability": f"{properties.major}.{properties.minor}"}
    raise UserError(f"no CUDA device {device} is visible (cuda-python "
                    f"{'found' if cudart else 'missing'}, torch CUDA missing): TensorRT needs an NVIDIA GPU; "
                    f"pip install groupvit-edge[tensorrt] on that machine")


# --------------------------------------------------------------------------------------------- pure checks

def _version_parts(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def versions_match(built: str, installed: str) -> bool:
    """Same TensorRT release. The standard runtime needs major, minor, patch (and build where both have one) to
    match (DRIVE OS TensorRT release notes; "By default, TensorRT engines are compatible only with the version of
    TensorRT used to build them", 10.16 version-compatibility page); `tensorrt.__version__` has 3 or 4 parts."""
    a, b = _version_parts(built), _version_parts(installed)
    common = min(len(a), len(b))
    return common >= 3 and a[:common] == b[:common]


def engine_incompatibility(recorded: dict | None, installed_version: str, device: dict | None) -> str | None:
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
    if device is not None and recorded.get("compute_capability") != device["compute_capability"]:
        return (f"its engines were built for compute capability {recorded.get('compute_capability')} "
                f"({recorded.get('gpu')}) and this GPU ({device['gpu']}) is {device['compute_capability']}: "
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


# ------------------------------------------------------------------------------------------ device memory

class _CudaPythonMemory:
    """Device buffers and a stream from cuda-python; pinned host staging so copies can be asynchronous."""
    kind = "cuda-python"

    def __init__(self, cudart, device: int = 0):
        self.cudart = cudart
        self.call(cudart.cudaSetDevice(device))

    def call(self, result):
        # cuda-python returns (error, *values) from every call (NVIDIA/cuda-python discussion #1035).
        error, values = result[0], result[1:]
        if error != self.cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA runtime error {error}")
        return values[0] if len(values) == 1 else (values or None)

    def stream(self):
        return _CudaPythonStream(self)

    def buffer(self, nbytes: int):
        return _CudaPythonBuffer(self, nbytes)


class _CudaPythonStream:
    def __init__(self, memory: _CudaPythonMemory):
        self.memory = memory
        self.handle = memory.call(memory.cudart.cudaStreamCreate())

    def synchronize(self) -> None:
        self.memory.call(self.memory.cudart.cudaStreamSynchronize(self.handle))

    def close(self) -> None:
        if self.handle is not None:
            self.memory.call(self.memory.cudart.cudaStreamDestroy(self.handle))
            self.handle = None


class _CudaPythonBuffer:
    def __init__(self, memory: _CudaPythonMemory, nbytes: int):
        cudart = memory.cudart
        self.memory, self.nbytes = memory, max(int(nbytes), 1)
        self.ptr = int(memory.call(cudart.cudaMalloc(self.nbytes)))
        host = memory.call(cudart.cudaMallocHost(self.nbytes))
        self._host_ptr = int(host)
        self.host = np.ctypeslib.as_array(ctypes.cast(self._host_ptr, ctypes.POINTER(ctypes.c_uint8)), (self.nbytes,))

    def upload(self, array: np.ndarray, stream: _CudaPythonStream) -> None:
        raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        self.host[:raw.size] = raw
        cudart = self.memory.cudart
        self.memory.call(cudart.cudaMemcpyAsync(self.ptr, self.host[:raw.size], raw.size,
                                                cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle))

    def download(self, nbytes: int, stream: _CudaPythonStream) -> np.ndarray:
        """Enqueue a device→host copy; the returned bytes are valid after `stream.synchronize()`."""
        cudart = self.memory.cudart
        self.memory.call(cudart.cudaMemcpyAsync(self.host[:nbytes], self.ptr, nbytes,
                                                cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle))
        return self.host[:nbytes]

    def free(self) -> None:
        if self.ptr:
            self.memory.call(self.memory.cudart.cudaFree(self.ptr))
            self.memory.call(self.memory.cudart.cudaFreeHost(self._host_ptr))
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
    """Buffers and streams from cuda-python ("cuda-python"), torch ("torch"), or whichever is here ("auto")."""
    if kind not in ("auto", "cuda-python", "torch"):
        raise UserError(f"device_memory={kind!r} is unknown: use auto, cuda-python or torch")
    cudart = cuda_runtime_module() if kind in ("auto", "cuda-python") else None
    if cudart is not None:
        return _CudaPythonMemory(cudart, device)
    torch = _torch_cuda() if kind in ("auto", "torch") else None
    if torch is not None:
        return _TorchMemory(torch, device)
    wanted = "cuda-python" if kind == "auto" else kind
    raise UserError(f"TensorRT needs device memory from {wanted}, which is not available here: pip install "
                    f"groupvit-edge[tensorrt] (brings cuda-python) on a machine with an NVIDIA GPU")


# ------------------------------------------------------------------------------------------------ engines

class EngineSession:
    """One deserialized engine with its execution context and I/O buffers sized for the profile's maxima."""

    def __init__(self, trt, runtime, path, memory, stream):
        self.trt, self.memory, self.stream = trt, memory, stream
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
            numpy_type = trt.nptype(self.engine.get_tensor_dtype(name))   # None for BF16/FP8/INT4 (common_runtime)
            if numpy_type is None:
                raise UserError(f"{path} has I/O tensor {name} of type {self.engine.get_tensor_dtype(name)}, which "
                                f"numpy cannot hold: re-export; the toolkit's graphs keep float32/int32 I/O")
            self.dtypes[name] = np.dtype(numpy_type)
        # Profile 0: (min, opt, max) per input; buffers are sized once for max and reused by every call.
        self.max_shapes = {n: tuple(self.engine.get_tensor_profile_shape(n, 0)[2]) for n in self.inputs}
        self.max_batch = min(shape[0] for shape in self.max_shapes.values())
        for name, shape in self.max_shapes.items():
            self.context.set_input_shape(name, shape)
        shapes = {**self.max_shapes, **{n: tuple(self.context.get_tensor_shape(n)) for n in self.outputs}}
        self.buffers = {}
        for name in names:
            self.buffers[name] = memory.buffer(math.prod(shapes[name]) * self.dtypes[name].itemsize)
            self.context.set_tensor_address(name, self.buffers[name].ptr)

    def _check(self, name: str, array: np.ndarray) -> None:
        expected = self.max_shapes[name][1:]
        if tuple(array.shape[1:]) != tuple(expected):
            raise UserError(f"{name} has shape {list(array.shape)} but this engine takes [N, "
                            f"{', '.join(map(str, expected))}]: prepare inputs at the artifact's export size")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(next(iter(feeds.values())))
        if count == 0:
            raise UserError(f"no {', '.join(self.inputs)} to encode: pass at least one")
        parts = []
        for piece in batch_chunks(count, self.max_batch):
            for name in self.inputs:
                array = np.ascontiguousarray(feeds[name][piece], dtype=self.dtypes[name])
                self._check(name, array)
                self.context.set_input_shape(name, array.shape)
                self.buffers[name].upload(array, self.stream)
            if not self.context.execute_async_v3(self.stream.handle):
                raise RuntimeError(f"TensorRT execution failed for inputs {[feeds[n].shape for n in self.inputs]}")
            pending = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                nbytes = math.prod(shape) * self.dtypes[name].itemsize
                pending[name] = (shape, self.buffers[name].download(nbytes, self.stream))
            self.stream.synchronize()
            # Copy out of the reused pinned buffers; float outputs as float32 whatever the engine's I/O type.
            parts.append({name: raw.view(self.dtypes[name]).reshape(shape).astype(
                np.float32 if self.dtypes[name].kind == "f" else self.dtypes[name]) for name, (shape, raw) in
                pending.items()})
        return {name: np.concatenate([part[name] for part in parts]) for name in self.outputs}

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


def open_runtime(manifest: Manifest, options: Options) -> "TensorRTRuntime":
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
        if recorded.get("gpu") != self.device["gpu"]:
            warnings.warn(f"engines built on {recorded.get('gpu')} run on {self.device['gpu']} (same compute "
                          f"capability); rebuild on this GPU if the timings matter", stacklevel=2)
        self._memory = open_device_memory(device_memory, device)
        self._stream = self._memory.stream()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._image = self._session("image")
        self._text = None    # built on first use: a precomputed vocabulary never needs it

    def _session(self, graph: str) -> EngineSession:
        path = self.manifest.engine_path(graph)
        return EngineSession(self._trt, self._runtime, path, self._memory, self._stream)

    def encode_image(self, pixels: np.ndarray) -> ImageEncoding:
        outputs = self._image.run({"pixels": pixels})
        return ImageEncoding(outputs["group_embeds"], outputs["image_embed"], outputs["grouping"])

    def encode_text(self, token_ids: np.ndarray) -> np.ndarray:
        if self._text is None:
            self._text = self._session("text")
        return self._text.run({"token_ids": token_ids})["text_embeds"]

    @property
    def description(self) -> str:
        compute = self.manifest.data["precision"].get("compute", "?")
        return f"tensorrt {self._trt.__version__} ({self.device['gpu']}, {compute}, {self._memory.kind} buffers)"

    def close(self) -> None:
        for session in (self._image, self._text):
            if session is not None:
                session.close()
        self._image = self._text = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

