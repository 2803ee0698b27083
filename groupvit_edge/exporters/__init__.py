"""Export targets: the fp32 ONNX base plus a short chain of steps, one module per kind of step.

    export("random:0", "artifacts/int8", "onnx-int8", calib_dir="coco/calib2017")
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import UserError


# target → (module, step functions in order). Each module knows one family of targets.
_CHAINS = {
    "onnx": ("precision", ()),
    "onnx-fp16": ("precision", ("to_fp16",)),
    "onnx-int8": ("precision", ("to_int8",)),
    "onnx-int8-dynamic": ("precision", ("to_int8_dynamic",)),
    "openvino-fp32": ("openvino", ("to_ir_fp32",)),
    "openvino-fp16": ("openvino", ("to_ir_fp16",)),
    "openvino-int8": ("openvino", ("to_ir_int8",)),
    "trt-fp16": ("tensorrt", ("build_fp16",)),
    "trt-int8": ("tensorrt", ("build_int8",)),
}
TARGETS = tuple(_CHAINS)


def _steps(target: str):
    if target not in _CHAINS:
        raise UserError(f"--target {target!r} is unknown: use one of {', '.join(TARGETS)}")
    module_name, step_names = _CHAINS[target]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return [getattr(module, name) for name in step_names]


def export(model, out_dir: str | Path, target: str = "onnx", **options):
    """Export `model` to an artifact directory for `target`; see ExportOptions for the options."""
    from .onnx import build_artifact
    return build_artifact(model, out_dir, _steps(target), target, **options)


__all__ = ["TARGETS", "export"]
