"""ONNX targets: the fp32 graphs as they are, or one reduced-precision image graph that every backend reads.

- `onnx-fp16`: onnxconverter-common's float16 converter with the keep-float32 list of the precision policy.
- `onnx-int8`: the quantization package's INT8 image graph (`quantization.pipeline.to_int8`): calibrated,
  symmetric per-channel QDQ under the precision policy, within the drift budget when one is given.
- `onnx-int8-dynamic`: ONNX Runtime's dynamic INT8 (no calibration), for ONNX Runtime on CPUs only.
The text graph stays fp32: it runs once per vocabulary, not per image. Every reduced graph's drift against the
fp32 image graph (both in ONNX Runtime) is measured on held-out photos and recorded.
"""
from __future__ import annotations

import importlib.util
import warnings

from ..imports import require
from ..quantization.form import dynamic_quantized_nodes
from ..quantization.measure import graph_drift
from ..quantization.pipeline import int8_weight_bits, to_int8
from ..quantization.policy import FP16_KEEP_FLOAT_OPS, INT8_KEPT_FLOAT, image_graph_policy
from ..quantization.records import PrecisionRecord, ReducedImageGraph
from ..quantization.search import budget_from
from ..quantization.statistics import quantize_dynamic_int8
from .contract import Step, Target
from .records import ArtifactParts, FloatGraphs

TARGETS = (
    Target("onnx", "precision", "onnxruntime", "fp32 image + text graphs"),
    Target("onnx-fp16", "precision", "onnxruntime", "FP16 image graph (keep-float32 list), fp32 text graph",
           packages=("onnxconverter_common",)),
    Target("onnx-int8", "precision", "onnxruntime", "symmetric INT8 QDQ image graph, calibrated, under the "
           "precision policy (the graph TensorRT and OpenVINO read too)", calibrated=True),
    Target("onnx-int8-dynamic", "precision", "onnxruntime", "ONNX Runtime's dynamic INT8 image graph (ONNX "
           "Runtime CPU only)"),
)
OPTIONS = None
FP16_FILE, DYNAMIC_FILE = "image.fp16.onnx", "image.int8-dynamic.onnx"
def steps(target: Target, options) -> list[Step]:
    return base_steps() + reduce_steps(target.name, options)


def base_steps() -> list[Step]:
    return [Step("trace", "trace fp32 image + text graphs"), Step("validate", "validate against PyTorch")]


def reduce_steps(target_name: str, options) -> list[Step]:
    """The precision step of a target whose image graph is fp16 or int8 ONNX (also used by OpenVINO/TensorRT)."""
    if target_name.endswith("fp16"):
        return [Step("fp16", "convert the image graph to FP16"), Step("drift", "measure drift vs fp32")]
    if target_name.endswith("int8-dynamic"):
        return [Step("int8-dynamic", "quantize weights to INT8 (dynamic)"), Step("drift", "measure drift vs fp32")]
    if target_name.endswith("int8"):
        method = options.calibration.calib_method
        found = [Step("calibrate", f"calibrate INT8 QDQ ({method})"), Step("drift", "measure drift vs fp32")]
        if budget_from(options) is not None:
            found.append(Step("search", "return blocks to float until the drift budget holds"))
        return found
    return []


def problems(export_plan) -> list[str]:
    return int8_problems(export_plan.options) if export_plan.target.name == "onnx-int8" else []


def int8_problems(options) -> list[str]:
    if options.calibration.calib_method == "nncf" and importlib.util.find_spec("nncf") is None:
        return ["--calib-method nncf needs NNCF, which is not installed: pip install nncf (or choose "
                "--calib-method minmax)"]
    return []


def build(job, floats: FloatGraphs) -> ArtifactParts:
    graphs = {"image": floats.image, "text": floats.text}
    name = job.plan.target.name
    if name == "onnx":
        return ArtifactParts(graphs, PrecisionRecord("fp32", ["*"]))
    reduced = {"onnx-fp16": to_fp16, "onnx-int8": to_int8, "onnx-int8-dynamic": to_int8_dynamic}[name](job, floats)
    return parts_from(reduced, {**graphs, "image": reduced.graph})


def parts_from(reduced: ReducedImageGraph, graphs: dict) -> ArtifactParts:
    return ArtifactParts(graphs, reduced.precision, {"drift_vs_fp32": reduced.check}, reduced.calibration,
                         reduced.search, outliers=reduced.outliers)


# -------------------------------------------------------------------------------------------------- FP16

def to_fp16(job, floats: FloatGraphs) -> ReducedImageGraph:
    onnx = require("onnx", extra="export")
    float16 = require("onnxconverter_common.float16", extra="export", package="onnxconverter-common")
    model = onnx.load(str(job.staging / floats.image.file))
    policy = image_graph_policy(model)
    job.log(f"converting the image graph to FP16 (float32 kept for {', '.join(FP16_KEEP_FLOAT_OPS)} and the "
            f"{len(policy.assignment)} nodes of the grouping assignment)")
    with warnings.catch_warnings():
        # It warns for every weight below fp16's range, which it flushes as intended.
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FLOAT_OPS,
                                                node_block_list=policy.assignment, disable_shape_infer=True)
    onnx.save(half, str(job.staging / FP16_FILE))
    check = graph_drift(job, floats, FP16_FILE, job.drift_photos)
    job.log(f"  {check.line()}")
    record = PrecisionRecord("fp16", FP16_KEEP_FLOAT_OPS + ["grouping assignment"], policy.assignment)
    return ReducedImageGraph(job.graph_record(FP16_FILE, "fp16"), record, check)


# -------------------------------------------------------------------------------------------------- INT8

def to_int8_dynamic(job, floats: FloatGraphs) -> ReducedImageGraph:
    """ONNX Runtime CPU only: dynamic INT8 needs no calibration images, and is its own target because neither
    TensorRT nor OpenVINO run its integer ops fast; the shared QDQ graph is `onnx-int8`."""
    onnx = require("onnx", extra="export")
    model = onnx.load(str(job.staging / floats.image.file))
    policy = image_graph_policy(model)
    bits = int8_weight_bits(job)
    quantized = quantize_dynamic_int8(model, policy, reduce_range=bits == 7, log=job.log)
    onnx.save(quantized, str(job.staging / DYNAMIC_FILE))
    check = graph_drift(job, floats, DYNAMIC_FILE, job.drift_photos)
    job.log(f"  {check.line()}")
    record = PrecisionRecord("int8-dynamic", INT8_KEPT_FLOAT, policy.assignment, dynamic_quantized_nodes(quantized),
                             weight_bits=bits, backends=["onnxruntime"])
    return ReducedImageGraph(job.graph_record(DYNAMIC_FILE, "int8-dynamic"), record, check)
