"""The INT8 image graph of an export, in one pass down the quantization steps:

    policy (what may be INT8) → statistics (calibrated once, cached) → form (weight bits, symmetric S8 check)
    → measure (against fp32 on held-out photos) → outliers (when activation outliers break the budget: SmoothQuant
    strengths, then the outlier channels split off in float, then the outlier readers in float)
    → search (blocks back to float until the drift budget holds)

Exporters call `to_int8`; every backend reads the graph it leaves (OpenVINO folds its Q/DQ pairs, TensorRT builds
from it, ONNX Runtime runs it in its activation form).
"""
from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np

from ..imports import require
from ..metrics.drift import DriftBudget
from .cache import cached_quantization, calibration_key, policy_digest
from .calibration_set import CalibrationSet
from .form import qdq_form, quantized_nodes, return_to_float, weight_bits
from .measure import FloatImageAndText, QuantizationJob, graph_drift, staged_graph
from .outliers import DETECTION_WINDOWS, OutlierReader, SplitGraph, find_outlier_readers, split_outlier_channels
from .policy import Policy, image_graph_policy, int8_kept_float, kept_float_blocks
from .records import (
    BudgetSearch,
    CalibrationRecord,
    Int8Candidate,
    OutlierRemedy,
    OutlierStep,
    PrecisionRecord,
    ReducedImageGraph,
)
from .search import CANDIDATE_FILE, budget_from, fewest_fitting, search
from .statistics import MethodOptions, quantize

# SmoothQuant strengths tried when outliers break the budget, the default first. Measured on a stress checkpoint
# (tests/outliers.py, strength 300): a weaker migration (0.75, 0.5) only loses accuracy, so only stronger ones are
# worth a recalibration.
SMOOTH_QUANT_ALPHAS = (0.95, 1.0)

INT8_FILE = "image.int8.onnx"


def int8_weight_bits(job: QuantizationJob) -> int:
    """This export's weight range: as asked, else the target's own, else what this CPU needs (form.weight_bits)."""
    return weight_bits(job.options.calibration.int8_weight_bits, job.plan.target.int8_weight_bits)


def to_int8(job: QuantizationJob, floats: FloatImageAndText) -> ReducedImageGraph:
    """Calibrate once (cached), measure, and with a drift budget search the blocks to return to float."""
    onnx = require("onnx", extra="export")
    options, calibration = job.options.calibration, calibration_set(job)
    method = MethodOptions(options.calib_method, weight_bits=int8_weight_bits(job))
    fp32 = onnx.load(str(job.staging / floats.image.file))
    policy, asked_float = _policy(job, fp32)
    budget = budget_from(job.options)
    kept = _candidate(job, floats, fp32, policy, method, budget)
    job.log(f"  {kept.check.line()}")
    readers = outlier_readers(job, fp32, policy)
    remedy = None
    if readers and outside(kept.check, budget):
        remedy = remedy_outliers(job, floats, kept, policy, readers, budget)
        kept = remedy.kept
    quantized, check = kept.graph, kept.check
    if remedy is not None:
        onnx.save(quantized, str(job.staging / INT8_FILE))
    found = _within_budget(job, floats, kept.source, quantized, policy, budget, check) if check.failures else None
    chosen = found.chosen if found is not None else None     # the search raises when no step fits
    if chosen is not None:
        quantized, check = onnx.load(str(job.staging / INT8_FILE)), chosen.check
    form = qdq_form(quantized)
    if not form["symmetric_int8"]:
        raise RuntimeError(f"the quantizer produced a non-symmetric QDQ graph: {form}")
    searched_float = chosen.float_blocks if chosen is not None else []
    record = PrecisionRecord("int8", int8_kept_float(options.int8_attention) + asked_float + searched_float,
                             policy.assignment, quantized_nodes(quantized), method=kept.method.to_dict(), qdq=form,
                             attention_products="int8" if options.int8_attention else "float",
                             keep_float=asked_float, outlier_readers=[r.to_dict() for r in readers],
                             float_readers=remedy.float_readers if remedy is not None else [],
                             split_readers=list(kept.split_readers))
    calibration_record = CalibrationRecord(calibration, kept.method.to_dict(), kept.reused_cache,
                                           kept.calibration_seconds)
    return ReducedImageGraph(staged_graph(job, floats, INT8_FILE, "int8"), record, check, calibration_record, found,
                             remedy)


def calibration_set(job: QuantizationJob) -> CalibrationSet:
    if job.calibration is None:
        raise ValueError("an INT8 export runs with a calibration set (the plan resolves one)")
    return job.calibration


def _candidate(job: QuantizationJob, floats: FloatImageAndText, source, policy: Policy, method: MethodOptions,
               budget: DriftBudget | None, split: SplitGraph | None = None) -> Int8Candidate:
    """`source` (the fp32 graph, or its outlier split) calibrated with `method` (cached) and measured."""
    onnx = require("onnx", extra="export")
    started = time.perf_counter()
    graph, reused = _calibrated(job, source, policy, method, split)
    seconds = time.perf_counter() - started
    onnx.save(graph, str(job.staging / INT8_FILE))     # after a remedy, to_int8 writes the kept one
    check = graph_drift(job, floats, INT8_FILE, job.drift_photos, budget, precision="int8")
    return Int8Candidate(method, graph, check, source, reused, seconds, split.readers if split is not None else ())


def _calibrated(job: QuantizationJob, source, policy: Policy, method: MethodOptions, split: SplitGraph | None):
    """(quantized graph, reused?): this export's calibration with `method`, from the cache when it holds it."""
    calibration = calibration_set(job)
    extra = {"outlier_split": split.digest()} if split is not None else {}
    key = calibration_key(job.weights_sha256, calibration, method.to_dict(),
                          policy=policy_digest(policy.quantizable), **extra)
    return cached_quantization(key, lambda: quantize(source, calibration.windows(), policy, method, log=job.log),
                               job.options.common.cache_dir, log=job.log)


def outlier_readers(job: QuantizationJob, fp32, policy: Policy) -> list[OutlierReader]:
    """The INT8 readers of `fp32` with activation outliers on this export's first calibration windows (logged)."""
    calibration = calibration_set(job)
    windows = np.stack(list(itertools.islice(calibration.iter_windows(progress=False), DETECTION_WINDOWS)))
    readers = find_outlier_readers(fp32, policy.quantizable, windows)
    if readers:
        job.log(f"activation outliers in {len(readers)} INT8 reader(s) of the calibration photos, most extreme "
                f"{readers[0].describe()}")
    return readers


def outside(check, budget: DriftBudget | None) -> bool:
    """Whether the check fails the user's budget, or — without one — the default budget (figures themselves,
    not only their bounds: too few photos is not what a remedy can fix)."""
    return bool(check.failures) if budget is not None else check.verdict().state == "outside"


def remedy_outliers(job: QuantizationJob, floats: FloatImageAndText, first: Int8Candidate, policy: Policy,
                    readers: list[OutlierReader], budget: DriftBudget | None) -> OutlierRemedy:
    """The best graph against activation outliers, each step measured by drift until one holds the budget: the
    other SmoothQuant strengths (NNCF), then the outlier channels split off in float (the default strength),
    then the outlier readers of the best graph so far back in float. `first` is the default's graph."""
    tried, steps = [first], [outlier_step(budget, first)]
    fp32 = first.source

    def measured(candidate: Int8Candidate) -> bool:
        tried.append(candidate)
        steps.append(outlier_step(budget, candidate))
        job.log(f"  {steps[-1].remedy}: {candidate.check.line()} → {'fits' if steps[-1].fits else 'exceeds'}")
        return steps[-1].fits

    method = first.method
    alphas = [alpha for alpha in SMOOTH_QUANT_ALPHAS if alpha != method.smooth_quant_alpha]
    fitted = any(measured(_candidate(job, floats, fp32, policy, dataclasses.replace(method, smooth_quant_alpha=a),
                                     budget)) for a in (alphas if method.method == "nncf" else []))
    if not fitted:
        split = split_outlier_channels(fp32, readers)
        if split.readers:
            job.log(f"splitting the outlier channels of {len(split.readers)} reader(s) off in float")
            fitted = measured(_candidate(job, floats, split.model, policy, method, budget, split))
    kept = max(tried, key=lambda candidate: margin(budget, candidate.check))
    float_readers: list[str] = []
    if not fitted:
        kept, float_readers = _readers_in_float(job, floats, kept, readers, budget, steps)
    return OutlierRemedy(steps, kept, float_readers)


def outlier_step(budget: DriftBudget | None, candidate: Int8Candidate) -> OutlierStep:
    """The step `candidate` is in an outlier remedy: what it did, its drift, whether it fits."""
    return OutlierStep(candidate.remedy(), candidate.check, not outside(candidate.check, budget))


def _readers_in_float(job: QuantizationJob, floats: FloatImageAndText, best: Int8Candidate,
                      readers: list[OutlierReader], budget: DriftBudget | None,
                      steps: list[OutlierStep]) -> tuple[Int8Candidate, list[str]]:
    """The fewest outlier-reader groups, most extreme first, back in float in `best` for the budget to hold (a
    binary search capped at --search-steps, as the block search); all of them when no count holds it."""
    onnx = require("onnx", extra="export")
    groups = reader_groups(readers)
    measured: dict[int, tuple[Int8Candidate, list[str]]] = {}

    def fits(count: int) -> bool:
        nodes = [reader.node for group in groups[:count] for reader in group]
        graph = return_to_float(best.graph, best.source, nodes)
        onnx.save(graph, str(job.staging / CANDIDATE_FILE))
        check = graph_drift(job, floats, CANDIDATE_FILE, job.drift_photos, budget, precision="int8")
        check.candidate = check.candidate.replace(CANDIDATE_FILE, INT8_FILE)
        step = OutlierStep(f"{len(nodes)} outlier reader(s) in float", check, not outside(check, budget))
        job.log(f"  {step.remedy}: {check.line()} → {'fits' if step.fits else 'exceeds'}")
        steps.append(step)
        measured[count] = (dataclasses.replace(best, graph=graph, check=check), nodes)
        return step.fits

    count = fewest_fitting(len(groups) + 1, job.options.budget.search_steps, fits)
    (job.staging / CANDIDATE_FILE).unlink(missing_ok=True)
    return measured[count if count is not None else len(groups)]


def reader_groups(readers: list[OutlierReader]) -> list[list[OutlierReader]]:
    """The readers by block, in the order of each block's most extreme reader: the readers of one block read one
    tensor (attention's q, k, v read its LayerNorm) through one activation quantizer, so returning only some of
    them to float leaves the others as coarse as before."""
    groups: dict[str, list[OutlierReader]] = {}
    for reader in readers:
        groups.setdefault(reader.block or reader.node, []).append(reader)
    return list(groups.values())


def margin(budget: DriftBudget | None, check) -> tuple[int, float]:
    """Fits first (as `outside` judges), then the larger lower bound of the group cosine (the figure outliers
    move most)."""
    uncertainty = check.drift.uncertainty
    low = uncertainty.group_embed_cosine.low if uncertainty is not None else None
    cosine = low if low is not None else check.drift.model_level.group_embed_cosine.mean
    return (0 if outside(check, budget) else 1, cosine)


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
