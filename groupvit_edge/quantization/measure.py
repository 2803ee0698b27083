"""Measure: a reduced image graph against the fp32 image graph, both in ONNX Runtime, on held-out photos.

The candidate runs as ONNX Runtime runs a graph of its precision on this machine (an INT8 graph in its activation
form), so the figure recorded is the figure of what will run. Speed is measured the same way.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from ..artifact import GraphRecord, Preprocess, working_manifest
from ..imports import require
from ..metrics.bench import median_ms
from ..metrics.drift import DEFAULT_PROBE, DriftBudget, validate_candidate
from ..runtimes.base import Runtime
from ..runtimes.onnxruntime import OnnxRuntime
from .calibration_set import CalibrationSet, PhotoSet
from .form import activation_label
from .records import DriftCheck

if TYPE_CHECKING:
    import onnx

LATENCY_RUNS = 5


class FloatImageAndText(Protocol):
    image: GraphRecord
    text: GraphRecord


class QuantizationJob(Protocol):
    """What the quantization steps read from the export job that runs them."""
    staging: Path
    calibration: CalibrationSet | None
    log: Callable[[str], None]
    plan: Any                                     # exporters.plan.ExportPlan (the layer above)
    options: Any                                  # exporters.options.ExportOptions (the layer above)
    preprocess: Preprocess
    weights_sha256: str
    drift_photos: PhotoSet
    reference: Runtime                            # the PyTorch reference: its manifest describes the model



def drift_labels(options) -> str:
    return options.budget.drift_labels or DEFAULT_PROBE


def staged_graph(job: QuantizationJob, floats: FloatImageAndText, file: str, precision: str) -> GraphRecord:
    """The record of an image graph this job wrote, described like the fp32 one (same opset record)."""
    return GraphRecord.from_onnx(job.staging, file, precision, floats.image.extra)


def _runtime(job: QuantizationJob, floats: FloatImageAndText, image: GraphRecord) -> OnnxRuntime:
    graphs = {"image": image, "text": floats.text}
    return OnnxRuntime(working_manifest(job.reference.manifest, job.staging, job.plan.target.name, graphs))


def graph_drift(job: QuantizationJob, floats: FloatImageAndText, candidate_file: str, photos: PhotoSet,
                budget: DriftBudget | None = None, precision: str = "fp32") -> DriftCheck:
    """Drift of the image graph `candidate_file` against the fp32 image graph."""
    reference = _runtime(job, floats, floats.image)
    candidate = _runtime(job, floats, staged_graph(job, floats, candidate_file, precision))
    labels = drift_labels(job.options)
    drift = validate_candidate(reference, candidate, list(photos.paths), labels=labels)
    form = activation_label(candidate.int8_activations)
    return DriftCheck(f"{floats.image.file} in ONNX Runtime", f"{candidate_file} in ONNX Runtime{form}", photos,
                      labels, drift, budget)


def image_graph_ms(job: QuantizationJob, floats: FloatImageAndText, file: str, precision: str = "int8") -> float:
    """The median latency of one window through the image graph `file`, as ONNX Runtime runs it here."""
    runtime = _runtime(job, floats, staged_graph(job, floats, file, precision))
    pixels = np.zeros((1, 3, job.preprocess.height, job.preprocess.width), dtype=np.float32)
    try:
        return median_ms(lambda: runtime.encode_image(pixels), LATENCY_RUNS)
    finally:
        runtime.close()


def run_exposing(model: onnx.ModelProto, tensors, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of `model` and the named inner tensors, on `pixels`, in ONNX Runtime."""
    onnx_ = require("onnx", extra="export")
    ort = require("onnxruntime", extra="export")
    exposed = copy.deepcopy(model)
    existing = {output.name for output in exposed.graph.output}
    exposed.graph.output.extend(onnx_.ValueInfoProto(name=name) for name in tensors if name not in existing)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([output.name for output in session.get_outputs()], session.run(None, {"pixels": pixels})))
