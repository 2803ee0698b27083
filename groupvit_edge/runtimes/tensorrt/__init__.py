"""TensorRT backend: runs the serialized engines of a trt-fp16 / trt-int8 artifact on an NVIDIA GPU.

One module per concern, each importing only those listed before it:
- `install`: the `tensorrt` module, how to install it, the process's one logger;
- `version`: the versions this toolkit builds for, and whether recorded engines load here;
- `cuda`: the GPU engines are tied to, and device memory from cuda-python (no torch needed on a Jetson) or torch;
- `runner`: `EngineSession` per engine and `TensorRTRuntime` over an artifact's engines;
- `build`: the build plan per TensorRT version and the engine build (exporters.tensorrt uses it);
- `probe`: the block probe, the image engine rebuilt with block outputs marked.
This package's namespace is the backend `runtimes.backends` registers (`base.RuntimeBackend`).

Written against the TensorRT ≥ 10 Python API and checked against the real bindings of 10.3, the newest 10.x and
the newest 11.x: every member used is listed in runner.RUNTIME_API and build.BUILD_API, and tests run these
modules against recording fakes generated from each version's bindings. Running engines on a GPU is what
`benchmarks/tensorrt_device_check.py` checks; it has not yet been run on one.
"""
from __future__ import annotations

from ...artifact import Manifest
from ...errors import UserError
from ...imports import require
from ..base import Configuration, importable
from . import cuda
from .cuda import CudaDevice, CudaError, device_properties, open_device_memory
from .install import EXTRA, NAME, import_tensorrt, install_hint, not_installed_message, tensorrt_logger
from .probe import BlockProbe, block_probe
from .runner import (
    INSPECTOR_API,
    RUNTIME_API,
    EngineSession,
    LayerPrecision,
    Options,
    TensorRTRuntime,
    batch_chunks,
    manifest_reason,
    numpy_dtype,
    open_runtime,
    parse_layer_information,
    precision_counts,
)
from .version import engine_incompatibility, version_parts, versions_match

__all__ = [
    "BlockProbe", "CudaDevice", "CudaError", "EXTRA", "EngineSession", "INSPECTOR_API", "LayerPrecision", "NAME",
    "Options", "RUNTIME_API", "TensorRTRuntime", "batch_chunks", "block_probe", "configurations", "device_properties",
    "devices", "engine_incompatibility", "import_tensorrt", "install_hint", "is_installed", "manifest_reason",
    "not_installed_message", "numpy_dtype", "open_device_memory", "open_runtime", "parse_layer_information",
    "precision_counts", "tensorrt_logger", "unsupported_reason", "version_parts", "versions_match",
]


def is_installed() -> bool:
    return importable("tensorrt") and cuda.memory_available()


def devices() -> list[str]:
    """The CUDA device engines are built for and run on (device 0, as export and --gpu default to)."""
    return [str(cuda.device_properties())]


def unsupported_reason(manifest: Manifest) -> str | None:
    reason = manifest_reason(manifest)
    if reason is None and is_installed():
        tensorrt = require("tensorrt")
        try:
            device = cuda.device_properties()
        except UserError as error:
            return str(error)
        reason = engine_incompatibility(manifest.tensorrt, tensorrt.__version__, device)
    return reason


def configurations(manifest: Manifest) -> list[Configuration]:
    """The engines run in the precision they were built with; there is one way to run them."""
    if not is_installed() or unsupported_reason(manifest) is not None:
        return []
    return [Configuration(NAME, {}, f"tensorrt, {manifest.precision.compute} engines")]
