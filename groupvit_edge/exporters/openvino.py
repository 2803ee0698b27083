"""OpenVINO targets: IR (.xml + .bin) of the image and text graphs, written beside the ONNX graphs they come from.

- `openvino-fp32`: the PyTorch-validated fp32 ONNX graphs converted to IR; the IR must match them in OpenVINO at
  f32 (the fp32 tolerance) or the export fails.
- `openvino-fp16`: the same with FP16-compressed weights (half the file); runs f16 where the device computes in f16.
- `openvino-int8`: two routes over the same calibration photos, LayerNorm/Softmax/grouping kept float:
    "qdq"      quantization.pipeline.to_int8's QDQ ONNX (one calibration for every backend), converted to IR;
    "nncf-ir"  NNCF post-training quantization of the fp32 IR (FakeQuantize, OpenVINO's own form), which also
               quantizes self-attention's q·k; the grouping assignment and the grouping maps stay float. Activation
               outliers that break the default budget get the outlier split (quantization/outliers.py) measured.
  The default is "nncf-ir", the faster with the same drift where INT8 pays (benchmarks/openvino_targets.py;
  figures in docs/benchmarks.md). The drift-budget search works on the QDQ graph, so it needs
  `--openvino-int8-route qdq`.

The text graph stays fp32 in every target: it runs once per vocabulary, not per image. Every IR's drift against
the fp32 ONNX image graph in ONNX Runtime is measured on held-out photos, in OpenVINO at the artifact's precision.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import hardware
from ..artifact import GraphRecord
from ..errors import ValidationFailed
from ..imports import require
from ..metrics.drift import FP32_MAX_ABS_DIFF, FP32_TOLERANCE, validate_candidate
from ..quantization.cache import cached_entry, calibration_key, policy_digest
from ..quantization.measure import drift_labels
from ..quantization.outliers import split_outlier_channels
from ..quantization.pipeline import int8_weight_bits, margin, outlier_readers, outlier_step, outside, to_int8
from ..quantization.policy import image_graph_policy
from ..quantization.records import (
    CalibrationRecord,
    DriftCheck,
    Int8Candidate,
    OutlierRemedy,
    PrecisionRecord,
)
from ..quantization.search import budget_from
from ..quantization.statistics import MethodOptions, nncf_quantize
from ..runtimes.onnxruntime import OnnxRuntime
from ..runtimes.openvino import PRECISION_CAPABILITY, OpenVinoRuntime
from . import precision
from .contract import Step, Target
from .onnx import text_max_abs_diff
from .options import option
from .records import ArtifactParts

TARGETS = (
    Target("openvino-fp32", "openvino", "openvino", "OpenVINO IR, fp32", packages=("openvino",)),
    Target("openvino-fp16", "openvino", "openvino", "OpenVINO IR with FP16 weights", packages=("openvino",)),
    Target("openvino-bf16", "openvino", "openvino", "OpenVINO IR computed in bf16 (CPUs with AVX-512 BF16 or AMX)",
           packages=("openvino",)),
    Target("openvino-int8", "openvino", "openvino", "OpenVINO IR, INT8 (NNCF on the IR, or the QDQ graph)",
           packages=("openvino", "nncf"), calibrated=True),
)
INT8_ROUTES = ("nncf-ir", "qdq")
DEFAULT_INT8_ROUTE = "nncf-ir"
# NNCF's SmoothQuant strength for the IR route; the QDQ route uses the calibration package's own setting.
SMOOTH_QUANT_ALPHA = 0.95


@dataclass(frozen=True)
class OpenVinoOptions:
    openvino_int8_route: str = option(DEFAULT_INT8_ROUTE, "openvino-int8: NNCF on the IR (nncf-ir), or the shared "
                                      "QDQ ONNX converted to IR (qdq; needed for a drift budget).",
                                      targets=("openvino-int8",), choices=INT8_ROUTES)


OPTIONS = OpenVinoOptions


def _route(options) -> str:
    return options.backends["openvino"].openvino_int8_route


def steps(target: Target, options) -> list[Step]:
    found = precision.base_steps()
    if target.name == "openvino-int8" and _route(options) == "qdq":
        found += precision.reduce_steps("onnx-int8", options)
    elif target.name == "openvino-int8":
        found.append(Step("calibrate", "quantize the fp32 IR with NNCF"))
    return found + [Step("ir", "convert to OpenVINO IR"), Step("check", "measure the IR against fp32 in OpenVINO")]


def problems(export_plan) -> list[str]:
    options = export_plan.options
    found = []
    if export_plan.target.name == "openvino-bf16" and openvino_installed() and not computes_bf16():
        found.append("--target openvino-bf16 is measured in bf16 at export, and this CPU has no bf16 arithmetic "
                     "(AVX-512 BF16 or AMX): export it on the deployment CPU, or export openvino-fp32 and run "
                     "`groupvit-edge tune` on that CPU")
    if export_plan.target.name == "openvino-int8":
        if _route(options) == "nncf-ir" and budget_from(options) is not None:
            found.append("a drift budget (--max-drop, --min-confident-agreement, --min-group-cosine) searches the "
                         "QDQ graph: add --openvino-int8-route qdq")
        if _route(options) == "nncf-ir" and options.calibration.keep_float:
            found.append("--keep-float applies to the QDQ graph: add --openvino-int8-route qdq")
        if _route(options) == "qdq":
            found += precision.int8_problems(options)
    return found


def _openvino():
    return require("openvino", "openvino", what="the openvino targets", package="OpenVINO")


def build(job, floats) -> ArtifactParts:
    name = job.plan.target.name
    if name == "openvino-fp32":
        return _fp32(job, floats)
    if name == "openvino-fp16":
        return _fp16(job, floats)
    if name == "openvino-bf16":
        return _bf16(job, floats)
    return _int8_qdq(job, floats) if _route(job.options) == "qdq" else _int8_nncf_ir(job, floats)


def _fp32(job, floats) -> ArtifactParts:
    parts = _float_ir(job, floats, "fp32", "f32", job.validation, FP32_TOLERANCE,
                      PrecisionRecord("fp32", ["*"], inference_precision="f32"))
    failures = parts.checks["drift_vs_fp32"].failures
    if failures:
        raise ValidationFailed(f"the OpenVINO fp32 IR disagrees with the fp32 ONNX graph ({'; '.join(failures)}); "
                               f"the artifact was not written")
    return parts


def _fp16(job, floats) -> ArtifactParts:
    job.log("converting to OpenVINO IR with FP16-compressed weights")
    # OpenVINO keeps its own precision-sensitive subgraphs (normalisations, softmax) in f32 when a device computes
    # in f16; a CPU without FP16 arithmetic computes everything in f32 on the fp16-rounded weights.
    return _float_ir(job, floats, "fp16", "f16", job.drift_photos, None,
                     PrecisionRecord("fp16", ["text graph", "OpenVINO precision-sensitive subgraphs under f16"],
                                     inference_precision="f16", weights="fp16"))


def _bf16(job, floats) -> ArtifactParts:
    """fp32 IR that runs in bf16: the weights stay fp32 (the runtime falls back to f32 on a device without bf16),
    and the drift is what this CPU computes in bf16, measured like the other reduced precisions."""
    return _float_ir(job, floats, "fp32", "bf16", job.drift_photos, None,
                     PrecisionRecord("bf16", ["text graph", "OpenVINO precision-sensitive subgraphs under bf16"],
                                     inference_precision="bf16", weights="fp32"))


def _float_ir(job, floats, weights: str, inference_precision: str, photos, budget,
              record: PrecisionRecord) -> ArtifactParts:
    """Image and text IR from the fp32 ONNX (the image IR's weights in `weights`, run in `inference_precision`),
    measured against the fp32 ONNX on `photos`."""
    ir = {"image_ir": write_ir(job, "image", job.staging / floats.image.file, weights, inference_precision,
                               floats.image, compress_to_fp16=weights == "fp16"),
          "text_ir": _text_ir(job, floats)}
    graphs = {"image": floats.image, "text": floats.text, **ir}
    check, text_difference = _check_ir(job, floats, graphs, photos, budget)
    return ArtifactParts(graphs, record, {"drift_vs_fp32": check}, figures={"text_ir_max_abs_diff": text_difference})


def _text_ir(job, floats) -> GraphRecord:
    """Every OpenVINO target's text IR: fp32 weights, run in f32 (the text graph stays fp32 by the policy)."""
    return write_ir(job, "text", job.staging / floats.text.file, "fp32", "f32", floats.text)


def cpu_computes(precision: str) -> bool:
    """Whether OpenVINO's CPU plugin offers `precision` (f32, bf16, f16) on this machine."""
    capabilities = _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return PRECISION_CAPABILITY[precision] in capabilities


def _int8_qdq(job, floats) -> ArtifactParts:
    """quantization.pipeline.to_int8 builds, caches and measures the QDQ ONNX; OpenVINO folds its Q/DQ pairs into
    INT8 ops."""
    reduced = to_int8(job, floats)
    image_ir = write_ir(job, "image", job.staging / reduced.graph.file, "int8", "f32", reduced.graph)
    ir, check, text_difference = _int8_ir(job, floats, reduced.graph, image_ir, reduced.check.budget)
    graphs = {"image": reduced.graph, "text": floats.text, **ir}
    record = dataclasses.replace(reduced.precision, route="qdq", inference_precision=check.inference_precision)
    return ArtifactParts(graphs, record,
                         {"drift_vs_fp32": check, "drift_vs_fp32_onnxruntime": reduced.check},
                         reduced.calibration, reduced.search, figures={"text_ir_max_abs_diff": text_difference},
                         outliers=reduced.outliers)


def _int8_nncf_ir(job, floats) -> ArtifactParts:
    """NNCF on the fp32 IR: OpenVINO's own FakeQuantize form, free of TensorRT's constraints on the QDQ graph, so
    self-attention's q and k (inputs of OpenVINO's fused ScaledDotProductAttention) go to INT8 as well. When
    activation outliers put it outside the default budget, the IR of the outlier split (quantization.outliers) is
    quantized and measured too, and the better one kept."""
    nncf = require("nncf", extra="export", package="NNCF")
    onnx = require("onnx", extra="export")
    ov = _openvino()
    fp32 = onnx.load(str(job.staging / floats.image.file))
    policy = image_graph_policy(fp32, attention_products=True)
    kept_float = nncf_ir_float_nodes(policy)
    bits = int8_weight_bits(job)
    method = {"method": "nncf-ir", "smooth_quant_alpha": SMOOTH_QUANT_ALPHA, "fast_bias_correction": True,
              "weight_bits": bits, "nncf": nncf.__version__, "openvino": ov.__version__.split("-")[0]}
    kept = _nncf_ir_candidate(job, floats, fp32, kept_float, method)
    readers = outlier_readers(job, fp32, policy)
    remedy = None
    if readers and outside(kept.int8.check, None):
        kept, remedy = _split_outliers_ir(job, floats, kept, readers, kept_float, method)
    graphs = {"image": floats.image, "text": floats.text, **kept.ir}
    record = PrecisionRecord(
        "int8", ["LayerNormalization", "Softmax", "Erf (GELU)", "grouping assignment", "grouping maps product",
                 "projection head after ReLU", "L2 normalisation",
                 "image.onnx (fp32, what ONNX Runtime runs from this artifact)"],
        kept_float, fake_quantized_nodes(kept.int8.graph), method=method, route="nncf-ir",
        attention_products="int8", inference_precision=kept.int8.check.inference_precision,
        outlier_readers=[r.to_dict() for r in readers], split_readers=list(kept.int8.split_readers))
    calibration_record = CalibrationRecord(job.calibration, method, kept.int8.reused_cache,
                                           kept.int8.calibration_seconds)
    return ArtifactParts(graphs, record, {"drift_vs_fp32": kept.int8.check}, calibration_record,
                         figures={"text_ir_max_abs_diff": kept.text_difference}, outliers=remedy)


@dataclass
class _IrInt8:
    int8: Int8Candidate                  # its graph: the quantized ov.Model
    ir: dict                             # its IR records (image_ir with the inference precision, text_ir)
    text_difference: float


def _nncf_ir_candidate(job, floats, source, kept_float: list[str], method: dict, split=None) -> _IrInt8:
    """`source` (the fp32 ONNX image graph or its outlier split) as an NNCF-quantized IR, written and measured."""
    float_nodes = kept_float + list(split.added if split is not None else ())
    key = calibration_key(job.weights_sha256, job.calibration, method, policy=policy_digest(float_nodes),
                          **({"outlier_split": split.digest()} if split is not None else {}))
    started = time.perf_counter()
    quantized, reused = cached_ir(key, lambda: _quantize_ir(job, source, float_nodes, method["weight_bits"]),
                                  job.options.common.cache_dir, job.log)
    seconds = time.perf_counter() - started
    image_ir = write_ir(job, "image", quantized, "int8", "f32", floats.image)
    ir, check, text_difference = _int8_ir(job, floats, floats.image, image_ir)
    options = MethodOptions("nncf", smooth_quant_alpha=SMOOTH_QUANT_ALPHA, weight_bits=method["weight_bits"])
    int8 = Int8Candidate(options, quantized, check, source, reused, seconds,
                         split.readers if split is not None else ())
    return _IrInt8(int8, ir, text_difference)


def _split_outliers_ir(job, floats, plain: _IrInt8, readers, kept_float: list[str],
                       method: dict) -> tuple[_IrInt8, OutlierRemedy | None]:
    split = split_outlier_channels(plain.int8.source, readers)
    if not split.readers:
        return plain, None
    job.log(f"splitting the outlier channels of {len(split.readers)} reader(s) off in float")
    candidate = _nncf_ir_candidate(job, floats, split.model, kept_float, method, split)
    steps = [outlier_step(None, c.int8) for c in (plain, candidate)]
    kept = max((plain, candidate), key=lambda c: margin(None, c.int8.check))
    if kept is plain:       # the split's IR overwrote the plain one's files
        write_ir(job, "image", plain.int8.graph, "int8", "f32", floats.image)
    return kept, OutlierRemedy(steps, kept.int8, [])


def int8_float_rest() -> list[str]:
    """The precisions an INT8 IR's float remainder may run in on this CPU, preferred first: bf16 where the CPU
    computes it, then f32."""
    return ["bf16", "f32"] if computes_bf16() else ["f32"]


def computes_bf16() -> bool:
    """Whether this CPU computes bf16 (hardware.has_bf16) and OpenVINO's CPU plugin offers it."""
    return hardware.has_bf16() and cpu_computes("bf16")


def _int8_ir(job, floats, onnx_image: GraphRecord, image_ir: GraphRecord, budget=None):
    """The INT8 IR's float remainder in the first of `int8_float_rest()` whose drift holds `budget` (the last one
    when none does), measured as it will run: (IR records, its check, the text IR's difference)."""
    text_ir = _text_ir(job, floats)
    candidates = int8_float_rest()
    for inference_precision in candidates:
        ir = {"image_ir": dataclasses.replace(image_ir, extra={**image_ir.extra,
                                                               "inference_precision": inference_precision}),
              "text_ir": text_ir}
        check, text_difference = _check_ir(job, floats, {"image": onnx_image, "text": floats.text, **ir},
                                           job.drift_photos, budget)
        if not check.failures:
            break
        if inference_precision != candidates[-1]:
            job.log(f"  the float remainder in {inference_precision} exceeds the budget; measuring "
                    f"{candidates[candidates.index(inference_precision) + 1]}")
    return ir, check, text_difference


def _quantize_ir(job, source, kept_float: list[str], weight_bits: int):
    """NNCF on the IR of `source`, an ONNX image graph (converted from a scratch file: the staging directory
    holds only what the artifact keeps)."""
    nncf = require("nncf", extra="export", package="NNCF")
    with tempfile.TemporaryDirectory() as scratch:
        onnx_file = Path(scratch) / "image.onnx"
        require("onnx", extra="export").save(source, str(onnx_file))
        model = _openvino().convert_model(str(onnx_file))
    windows = job.calibration.windows()
    job.log(f"quantizing the fp32 IR with NNCF (symmetric INT8, SmoothQuant α={SMOOTH_QUANT_ALPHA}, bias "
            f"correction; grouping assignment, grouping maps, LayerNorm and Softmax in float) on "
            f"{len(windows)} windows")
    ignored = nncf.IgnoredScope(names=sorted(ir_names(model, kept_float)), types=list(NNCF_IR_FLOAT_TYPES),
                                validate=False)
    options = MethodOptions("nncf", smooth_quant_alpha=SMOOTH_QUANT_ALPHA, fast_bias_correction=True,
                            weight_bits=weight_bits)
    return nncf_quantize(model, windows, ignored, options)


def cached_ir(key: dict, build_ir, root=None, log=print):
    """The IR counterpart of quantization.cache.cached_quantization: (quantized ov.Model, reused?) for `key`."""
    ov = _openvino()
    return cached_entry(key, build_ir, "image.xml", load=lambda path: ov.Core().read_model(str(path)),
                        save=lambda model, path: ov.save_model(model, str(path), compress_to_fp16=False),
                        root=root, log=log)


# NNCF never quantizes these op types' inputs under model_type=TRANSFORMER; listing them states the policy.
NNCF_IR_FLOAT_TYPES = ("MVN", "SoftMax")


def nncf_ir_float_nodes(policy) -> list[str]:
    """ONNX names kept float on the IR route, from a policy with attention's products in INT8: the assignment,
    and every other weight-free or post-ReLU product — notably the product of the stages' soft assignment maps,
    which *is* the grouping output."""
    return sorted(set(policy.assignment) | set(policy.keep_float))


def ir_names(model, onnx_names) -> set[str]:
    """IR operation names of ONNX nodes: the ONNX frontend keeps node names, splitting a Conv's bias off."""
    wanted = set(onnx_names)
    return {op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_friendly_name() in wanted or op.get_friendly_name().removesuffix("/WithoutBiases") in wanted}


# Ops a quantized tensor passes through unchanged on its way to the product that consumes it.
_LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert")


def fake_quantized_nodes(model) -> list[str]:
    """Products (MatMul, Convolution, …) fed by a FakeQuantize, through layout ops: what runs in INT8."""
    quantized = set()
    pending = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    seen = set()
    while pending:
        op = pending.pop()
        for output in op.outputs():
            for target in output.get_target_inputs():
                consumer = target.get_node()
                if consumer.get_friendly_name() in seen:
                    continue
                seen.add(consumer.get_friendly_name())
                if consumer.get_type_name() in _LAYOUT_OPS:
                    pending.append(consumer)
                else:
                    quantized.add(consumer.get_friendly_name())
    return sorted(quantized)


# -------------------------------------------------------------------------------------------------- IR files

def write_ir(job, graph: str, source, precision_name: str, inference_precision: str, onnx_graph: GraphRecord,
             compress_to_fp16: bool = False) -> GraphRecord:
    """Convert `source` (an ONNX path or an ov.Model) to <graph>.xml/.bin; its manifest record."""
    ov = _openvino()
    model = ov.convert_model(str(source)) if isinstance(source, Path) else source
    xml = job.staging / f"{graph}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    return GraphRecord(xml.name, "openvino-ir", precision_name, onnx_graph.inputs, onnx_graph.outputs,
                       {"weights": xml.with_suffix(".bin").name, "openvino": ov.__version__.split("-")[0],
                        "inference_precision": inference_precision})


def _check_ir(job, floats, graphs: dict, photos, budget=None) -> tuple[DriftCheck, float]:
    """The image IR in OpenVINO (on CPU, at the artifact's precision) against the fp32 ONNX image graph in ONNX
    Runtime on `photos`; and the text IR's largest difference from text.onnx, held to the fp32 tolerance."""
    reference = OnnxRuntime(job.working_manifest({"image": floats.image, "text": floats.text}))
    candidate = OpenVinoRuntime(job.working_manifest(graphs), cache_dir=False)
    text_difference = text_max_abs_diff(reference, candidate)
    if text_difference > FP32_MAX_ABS_DIFF:
        raise ValidationFailed(f"the OpenVINO text IR disagrees with text.onnx (max abs diff {text_difference:.2e}, "
                               f"tolerance {FP32_MAX_ABS_DIFF:.0e}); the artifact was not written")
    labels = drift_labels(job.options)
    drift = validate_candidate(reference, candidate, list(photos.paths), labels=labels)
    check = DriftCheck(f"{floats.image.file} in {reference.description}", candidate.description, photos, labels,
                       drift, budget, inference_precision=candidate.inference_precision)
    candidate.close()
    job.log(f"  {check.line()}")
    return check, text_difference


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None
