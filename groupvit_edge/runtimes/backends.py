"""The runtime backends, in order of preference, each one module behind `base.RuntimeBackend` (checked by mypy
here). No code outside a backend's module knows anything about that backend."""
from __future__ import annotations

from . import onnxruntime, openvino, pytorch, tensorrt
from .base import RuntimeBackend

# Artifact backends in order of preference: the fastest one the artifact and the machine support wins.
ARTIFACT_BACKENDS = ("tensorrt", "openvino", "onnxruntime")
REFERENCE_BACKEND = "torch"
BACKEND_MODULES: dict[str, RuntimeBackend] = {"torch": pytorch, "onnxruntime": onnxruntime, "openvino": openvino,
                                              "tensorrt": tensorrt}
