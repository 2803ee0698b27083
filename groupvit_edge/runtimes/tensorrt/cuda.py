"""CUDA for TensorRT without torch: the device engines are tied to, and I/O buffers and streams from cuda-python
(no torch needed on a Jetson) or, as an alternative, torch CUDA tensors."""
from __future__ import annotations

import ctypes
import platform
import warnings
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from ...errors import UserError
from ...imports import require
from .install import CUDA_PYTHON_PIN, JETSON_CUDA_PYTHON_PIN, install_hint


def cuda_runtime_module():
    """cuda-python's runtime API, or None.

    cuda-python 12.6.1 moved `cuda.cudart` to `cuda.bindings.runtime` and 13.0 removed the old name
    (https://nvidia.github.io/cuda-python/cuda-bindings/latest/release/13.0.0-notes.html), so try both.
    """
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return require(module)
        except UserError:
            continue
    return None


def _torch_cuda():
    try:
        torch = require("torch")
    except UserError:
        return None
    return torch if torch.cuda.is_available() else None


def memory_available() -> bool:
    """Whether device memory can come from cuda-python or torch CUDA here."""
    return cuda_runtime_module() is not None or _torch_cuda() is not None


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
