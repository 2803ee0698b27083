"""ONNX targets: the fp32 graphs as they are, or one reduced-precision image graph that every backend reads.

- `onnx-fp16`: onnxconverter-common's float16 converter with the keep-float32 list of the precision policy.
- `onnx-int8`: calibration → symmetric per-channel QDQ (NNCF or ONNX Runtime calibrators) under the policy,
  cached; with a drift budget, `drift_budget.search` returns the most harmful blocks to float until it fits.
- `onnx-int8-dynamic`: ONNX Runtime's dynamic INT8 (no calibration), for ONNX Runtime on CPUs only.
The text graph stays fp32: it runs once per vocabulary, not per image. Every reduced graph's drift against the
fp32 image graph (both in ONNX Runtime) is measured on held-out photos and recorded.
"""
from __future__ import annotations

import time
import warnings

from .. import hardware
from .plan import Step, Target
from .records import ArtifactParts, CalibrationRecord, DriftCheck, PrecisionRecord, ReducedImageGraph

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
FP16_FILE, INT8_FILE, DYNAMIC_FILE = "image.fp16.onnx", "image.int8.onnx", "image.int8-dynamic.onnx"
# What the INT8 targets keep in float (calibration.policy), as the manifest states it.
INT8_KEPT_FLOAT = ["LayerNormalization", "Softmax", "Erf (GELU)", "activation×activation MatMul",
                   "grouping assignment", "L2 normalisation"]


def int8_kept_float(attention_products: bool) -> list[str]:
    """INT8_KEPT_FLOAT, for a graph whose attention products are INT8 when `attention_products`."""
    if not attention_products:
        return list(INT8_KEPT_FLOAT)
    return [kind.replace("activation×activation MatMul", "grouping maps product") for kind in INT8_KEPT_FLOAT]


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
        if _budget(options) is not None:
            found.append(Step("search", "return blocks to float until the drift budget holds"))
        return found
    return []


def problems(export_plan) -> list[str]:
    return int8_problems(export_plan.options) if export_plan.target.name == "onnx-int8" else []


def int8_problems(options) -> list[str]:
    import importlib.util
    if options.calibration.calib_method == "nncf" and importlib.util.find_spec("nncf") is None:
        return ["--calib-method nncf needs NNCF, which is not installed: pip install nncf (or choose "
                "--calib-method minmax)"]
    return []


def build(job, floats) -> ArtifactParts:
    graphs = {"image": floats.image, "text": floats.text}
    name = job.plan.target.name
    if name == "onnx":
        return ArtifactParts(graphs, PrecisionRecord("fp32", ["*"]))
    reduced = {"onnx-fp16": to_fp16, "onnx-int8": to_int8, "onnx-int8-dynamic": to_int8_dynamic}[name](job, floats)
    return parts_from(reduced, {**graphs, "image": reduced.graph})


def parts_from(reduced: ReducedImageGraph, graphs: dict) -> ArtifactParts:
    return ArtifactParts(graphs, reduced.precision, {"drift_vs_fp32": reduced.check}, reduced.calibration,
                         reduced.search)


# ------------------------------------------------------------------------------------------------ drift

def drift_labels(options) -> str:
    from ..metrics.drift import DEFAULT_PROBE
    return options.budget.drift_labels or DEFAULT_PROBE


def measure_graph_drift(job, floats, candidate_file: str, photos, budget=None, precision: str = "fp32") -> DriftCheck:
    """Drift of the image graph `candidate_file` against the fp32 image graph, both in ONNX Runtime, the candidate
    run as ONNX Runtime runs a graph of `precision` on this machine."""
    from ..metrics.drift import validate_candidate
    from ..runtimes.onnxruntime import OnnxRuntime, activation_label
    from .onnx import onnx_record
    reference = OnnxRuntime(job.working_manifest({"image": floats.image, "text": floats.text}))
    candidate = OnnxRuntime(job.working_manifest({"image": onnx_record(job.staging, candidate_file, precision),
                                                  "text": floats.text}))
    labels = drift_labels(job.options)
    drift = validate_candidate(reference, candidate, list(photos.paths), labels=labels)
    form = activation_label(candidate.int8_activations)
    return DriftCheck(f"{floats.image.file} in ONNX Runtime", f"{candidate_file} in ONNX Runtime{form}", photos,
                      labels, drift, budget)


# -------------------------------------------------------------------------------------------------- FP16

def to_fp16(job, floats) -> ReducedImageGraph:
    import onnx
    from onnxconverter_common import float16

    from ..calibration.policy import FP16_KEEP_FLOAT_OPS, image_graph_policy
    from .onnx import onnx_record
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
    check = measure_graph_drift(job, floats, FP16_FILE, job.drift_photos())
    job.log(f"  {check.line()}")
    record = PrecisionRecord("fp16", FP16_KEEP_FLOAT_OPS + ["grouping assignment"], policy.assignment)
    return ReducedImageGraph(onnx_record(job.staging, FP16_FILE, "fp16"), record, check)


# -------------------------------------------------------------------------------------------------- INT8

def int8_weight_bits(job) -> int:
    """The weight range of this export's INT8 graph: as asked, else the target's own, else 8 — 7 where this
    x86 CPU's INT8 products saturate an int16 intermediate with full-range weights (hardware.int8_saturates)."""
    for bits in (job.options.calibration.int8_weight_bits, job.plan.target.int8_weight_bits):
        if bits is not None:
            return bits
    return hardware.int8_weight_bits()


def _budget(options):
    from .drift_budget import budget_from
    return budget_from(options)


def to_int8(job, floats) -> ReducedImageGraph:
    """Calibrate once (cached), measure, and with a drift budget search the blocks to return to float."""
    import onnx

    from ..calibration.cache import cached_quantization, calibration_key, policy_digest
    from ..calibration.policy import image_graph_policy
    from ..calibration.quantizers import MethodOptions, qdq_form, quantize, quantized_nodes
    from . import drift_budget
    from .onnx import onnx_record
    options, calibration = job.options.calibration, job.calibration
    method = MethodOptions(options.calib_method, weight_bits=int8_weight_bits(job))
    fp32 = onnx.load(str(job.staging / floats.image.file))
    policy = image_graph_policy(fp32, attention_products=options.int8_attention)
    asked_float = kept_float_blocks(policy, options.keep_float)
    if asked_float:
        # Before calibration, so the quantizer never sees these blocks; the drift-budget search below ranks only
        # the blocks still in INT8, so it starts from them.
        policy = policy.without_blocks(asked_float)
        job.log(f"keeping {len(asked_float)} block(s) in float as asked: {', '.join(asked_float)}")
    key = calibration_key(job.loaded.weights_sha256, calibration, method.to_dict(),
                          policy=policy_digest(policy.quantizable))
    started = time.perf_counter()
    quantized, reused = cached_quantization(
        key, lambda: quantize(fp32, calibration.windows(), policy, method, log=job.log),
        job.options.common.cache_dir, log=job.log)
    calibration_seconds = time.perf_counter() - started
    onnx.save(quantized, str(job.staging / INT8_FILE))
    photos = job.drift_photos()
    budget = _budget(job.options)
    check = measure_graph_drift(job, floats, INT8_FILE, photos, budget, precision="int8")
    job.log(f"  {check.line()}")
    search, kept_blocks = None, []
    if budget is not None and check.failures:
        search = drift_budget.search(job, floats, fp32, quantized, policy, photos, budget, check)
        kept_blocks = search.chosen.float_blocks
        quantized = onnx.load(str(job.staging / INT8_FILE))
        check = search.chosen.check
    form = qdq_form(quantized)
    if not form["symmetric_int8"]:
        raise RuntimeError(f"the quantizer produced a non-symmetric QDQ graph: {form}")
    record = PrecisionRecord("int8", int8_kept_float(options.int8_attention) + asked_float + kept_blocks,
                             policy.assignment, quantized_nodes(quantized), method=method.to_dict(), qdq=form,
                             attention_products="int8" if options.int8_attention else "float",
                             keep_float=asked_float)
    calibration_record = CalibrationRecord(calibration, method.to_dict(), reused, calibration_seconds)
    return ReducedImageGraph(onnx_record(job.staging, INT8_FILE, "int8"), record, check, calibration_record, search)


def kept_float_blocks(policy, asked) -> list[str]:
    """The `--keep-float` blocks in forward order, each one this graph quantizes; a UserError names any other."""
    from ..errors import UserError
    from ..model.blocks import forward_order
    if not asked:
        return []
    known = policy.block_names()
    unknown = [name for name in asked if name not in known]
    if unknown:
        raise UserError(f"--keep-float {unknown[0]!r} is not a block of this model's image graph: use names from "
                        f"{', '.join(known)}")
    if set(known) <= set(asked):
        raise UserError("--keep-float lists every block, which leaves nothing in INT8: drop some blocks, or export "
                        "--target onnx for the fp32 graph")
    return forward_order(asked)


def to_int8_dynamic(job, floats) -> ReducedImageGraph:
    """ONNX Runtime CPU only: dynamic INT8 needs no calibration images, and is its own target because neither
    TensorRT nor OpenVINO run its integer ops fast; the shared QDQ graph is `onnx-int8`."""
    import onnx

    from ..calibration.policy import image_graph_policy
    from ..calibration.quantizers import dynamic_quantized_nodes, quantize_dynamic_int8
    from .onnx import onnx_record
    model = onnx.load(str(job.staging / floats.image.file))
    policy = image_graph_policy(model)
    bits = int8_weight_bits(job)
    quantized = quantize_dynamic_int8(model, policy, reduce_range=bits == 7, log=job.log)
    onnx.save(quantized, str(job.staging / DYNAMIC_FILE))
    check = measure_graph_drift(job, floats, DYNAMIC_FILE, job.drift_photos())
    job.log(f"  {check.line()}")
    record = PrecisionRecord("int8-dynamic", INT8_KEPT_FLOAT, policy.assignment, dynamic_quantized_nodes(quantized),
                             weight_bits=bits, backends=["onnxruntime"])
    return ReducedImageGraph(onnx_record(job.staging, DYNAMIC_FILE, "int8-dynamic"), record, check)
