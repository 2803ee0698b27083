"""The INT8 image graph of an export, in one pass down the quantization steps:

    policy (what may be INT8) → statistics (calibrated once, cached) → form (weight bits, symmetric S8 check)
    → measure (against fp32 on held-out photos) → search (blocks back to float until the drift budget holds)

Exporters call `to_int8`; every backend reads the graph it leaves (OpenVINO folds its Q/DQ pairs, TensorRT builds
from it, ONNX Runtime runs it in its activation form).
"""
from __future__ import annotations

import time

from ..imports import require
from ..metrics.drift import DriftBudget
from .cache import cached_quantization, calibration_key, policy_digest
from .form import qdq_form, quantized_nodes, weight_bits
from .measure import FloatImageAndText, QuantizationJob, graph_drift, staged_graph
from .policy import Policy, image_graph_policy, int8_kept_float, kept_float_blocks
from .records import BudgetSearch, CalibrationRecord, PrecisionRecord, ReducedImageGraph
from .search import budget_from, search
from .statistics import MethodOptions, quantize

INT8_FILE = "image.int8.onnx"


def int8_weight_bits(job: QuantizationJob) -> int:
    """This export's weight range: as asked, else the target's own, else what this CPU needs (form.weight_bits)."""
    return weight_bits(job.options.calibration.int8_weight_bits, job.plan.target.int8_weight_bits)


def to_int8(job: QuantizationJob, floats: FloatImageAndText) -> ReducedImageGraph:
    """Calibrate once (cached), measure, and with a drift budget search the blocks to return to float."""
    onnx = require("onnx", extra="export")
    options, calibration = job.options.calibration, job.calibration
    if calibration is None:
        raise ValueError("an INT8 export runs with a calibration set (the plan resolves one)")
    method = MethodOptions(options.calib_method, weight_bits=int8_weight_bits(job))
    fp32 = onnx.load(str(job.staging / floats.image.file))
    policy, asked_float = _policy(job, fp32)
    key = calibration_key(job.weights_sha256, calibration, method.to_dict(),
                          policy=policy_digest(policy.quantizable))
    started = time.perf_counter()
    quantized, reused = cached_quantization(
        key, lambda: quantize(fp32, calibration.windows(), policy, method, log=job.log),
        job.options.common.cache_dir, log=job.log)
    calibration_seconds = time.perf_counter() - started
    onnx.save(quantized, str(job.staging / INT8_FILE))
    photos = job.drift_photos
    budget = budget_from(job.options)
    check = graph_drift(job, floats, INT8_FILE, photos, budget, precision="int8")
    job.log(f"  {check.line()}")
    found = _within_budget(job, floats, fp32, quantized, policy, budget, check) if check.failures else None
    chosen = found.chosen if found is not None else None     # the search raises when no step fits
    if chosen is not None:
        quantized, check = onnx.load(str(job.staging / INT8_FILE)), chosen.check
    form = qdq_form(quantized)
    if not form["symmetric_int8"]:
        raise RuntimeError(f"the quantizer produced a non-symmetric QDQ graph: {form}")
    searched_float = chosen.float_blocks if chosen is not None else []
    record = PrecisionRecord("int8", int8_kept_float(options.int8_attention) + asked_float + searched_float,
                             policy.assignment, quantized_nodes(quantized), method=method.to_dict(), qdq=form,
                             attention_products="int8" if options.int8_attention else "float",
                             keep_float=asked_float)
    calibration_record = CalibrationRecord(calibration, method.to_dict(), reused, calibration_seconds)
    return ReducedImageGraph(staged_graph(job, floats, INT8_FILE, "int8"), record, check, calibration_record, found)


def _policy(job: QuantizationJob, fp32) -> tuple[Policy, list[str]]:
    """The precision policy of this graph with the blocks the user keeps in float (returned too) already out of
    it: the quantizer never sees them, and the search ranks only the blocks still in INT8."""
    options = job.options.calibration
    policy = image_graph_policy(fp32, attention_products=options.int8_attention)
    asked_float = kept_float_blocks(policy, options.keep_float)
    if asked_float:
        job.log(f"keeping {len(asked_float)} block(s) in float as asked: {', '.join(asked_float)}")
    return policy.without_blocks(asked_float), asked_float


def _within_budget(job: QuantizationJob, floats: FloatImageAndText, fp32, quantized, policy: Policy,
                   budget: DriftBudget | None, check) -> BudgetSearch | None:
    if budget is None:
        return None
    return search(job, floats, fp32, quantized, policy, job.drift_photos, budget, check, INT8_FILE)
