"""Export: plan → check → run. One module per family of targets (precision, openvino, tensorrt), each declaring
its targets, its options and its steps; `run.export` resolves the inputs once and assembles the manifest once.

    export("random:0", "artifacts/int8", "onnx-int8")             # calibrates on the shipped sample photos
    export("random:0", "artifacts/int8", "onnx-int8", calib_dir="coco/calib2017", max_drop=1.0)
"""
from __future__ import annotations

from .options import ExportOptions
from .plan import ExportPlan, check, make_plan, targets
from .run import ExportResult, export

TARGETS = tuple(targets())

__all__ = ["TARGETS", "ExportOptions", "ExportPlan", "ExportResult", "check", "export", "make_plan"]
