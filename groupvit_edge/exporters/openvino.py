"""OpenVINO targets: IR (.xml + .bin) of the image and text graphs, written beside the ONNX graphs they come from.

- `to_ir_fp32`: the PyTorch-validated fp32 ONNX graphs converted to IR; the IR must match them in OpenVINO at f32.
- `to_ir_fp16`: the same with FP16-compressed weights (half the file); runs f16 where the device computes in f16.
- `to_ir_int8`: two routes over the same COCO calibration images, LayerNorm/Softmax/grouping kept float:
    "qdq"      precision.to_int8's QDQ ONNX (one calibration for every backend), converted to IR;
    "nncf-ir"  NNCF post-training quantization of the fp32 IR (FakeQuantize, OpenVINO's own form), which also
               quantizes self-attention's q·k; the grouping assignment and the grouping maps stay float.
  The default is "nncf-ir", the better by measurement where INT8 pays (benchmarks/openvino_targets.py, 448²,
  2 threads, 128 calibration images, 50 held-out images, on an AVX-512 CPU): 60.9 vs 70.6 ms median, 16.5 vs
  13.9 windows/s, with the same drift (confident group agreement 100.000 vs 99.997 %, group cosine mean 0.99774
  vs 0.99775). On an AVX2-only CPU (no VNNI) INT8 is no faster than fp32 and the routes are within noise
  (243 vs 232 ms; cosine 0.99601 vs 0.99608, 7-bit weights).
  `openvino_int8_route` (an export option, when ExportOptions has it) or DEFAULT_INT8_ROUTE selects a route.

The text graph stays fp32 in every target: it runs once per vocabulary, not per image. Every IR's drift against
the fp32 ONNX image graph in ONNX Runtime is measured on held-out images and recorded like precision.py does.
"""
from __future__ import annotations

import contextlib
import copy
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from ..artifact import Manifest, sha256_file
from ..errors import UserError, ValidationFailed
from . import precision
from .onnx import FP32_MAX_ABS_DIFF, FP32_MIN_GROUP_AGREEMENT, TEXT_CONTEXT, ExportContext, _test_card

INT8_ROUTES = ("qdq", "nncf-ir")
DEFAULT_INT8_ROUTE = "nncf-ir"
# NNCF's SmoothQuant strength for the IR route; the QDQ route uses the calibration package's own setting.
SMOOTH_QUANT_ALPHA = 0.95
# The text IR is held to the fp32 bar (onnx.FP32_MAX_ABS_DIFF) against text.onnx on these prompts.
TEXT_TOKENS = [[49406, 320, 49407], [49406, 1125, 49407]]      # "<start> a <end>", "<start> cat <end>"


def _openvino():
    try:
        import openvino
    except ImportError:
        raise UserError("the openvino targets need OpenVINO: pip install groupvit-edge[openvino]") from None
    return openvino


# -------------------------------------------------------------------------------------------------- targets

def to_ir_fp32(context: ExportContext) -> None:
    reference = _fp32_reference(context)
    _write_ir(context, "image", context.staging / precision.FP32_FILE, "fp32", "f32")
    _write_ir(context, "text", context.staging / "text.onnx", "fp32", "f32")
    with _images_for_fp32(context) as images:
        drift = _validate(context, reference, images)
    model_level = drift["model_level"]
    worst = max(model_level["max_abs_diff"].items(), key=lambda item: item[1])
    if worst[1] > FP32_MAX_ABS_DIFF or model_level["group_agreement"] < 100 * FP32_MIN_GROUP_AGREEMENT:
        raise ValidationFailed(
            f"the OpenVINO fp32 IR disagrees with the fp32 ONNX graph (max abs diff {worst[1]:.2e} in {worst[0]}, "
            f"tolerance {FP32_MAX_ABS_DIFF:.0e}; group agreement {model_level['group_agreement']:.2f}%); "
            f"the artifact was not written")
    context.data["precision"].update(inference_precision="f32")


def to_ir_fp16(context: ExportContext) -> None:
    reference = _fp32_reference(context)
    context.log("converting to OpenVINO IR with FP16-compressed weights")
    _write_ir(context, "image", context.staging / precision.FP32_FILE, "fp16", "f16", compress_to_fp16=True)
    _write_ir(context, "text", context.staging / "text.onnx", "fp32", "f32")
    _validate(context, reference, precision.drift_images(context))
    # OpenVINO keeps its own precision-sensitive subgraphs (normalisations, softmax) in f32 when a device computes
    # in f16; a CPU without FP16 arithmetic computes everything in f32 on the fp16-rounded weights.
    context.data["precision"].update(compute="fp16", inference_precision="f16", weights="fp16",
                                     kept_float=["text graph", "OpenVINO precision-sensitive subgraphs under f16"])


def to_ir_int8(context: ExportContext) -> None:
    route = getattr(context.options, "openvino_int8_route", None) or DEFAULT_INT8_ROUTE
    if route not in INT8_ROUTES:
        raise UserError(f"openvino_int8_route {route!r} is unknown: use one of {', '.join(INT8_ROUTES)}")
    if context.options.calib_dir is None:
        raise UserError("--target openvino-int8 needs calibration images: pass --calib-dir DIR "
                        "(e.g. ../shared/data/coco/calib2017)")
    reference = _fp32_reference(context)     # loaded now: the QDQ step removes image.onnx from the staging dir
    held_out = _qdq_route(context) if route == "qdq" else _nncf_ir_route(context)
    _write_ir(context, "text", context.staging / "text.onnx", "fp32", "f32")
    _validate(context, reference, precision.drift_images(context, held_out))
    context.data["precision"].update(route=route, inference_precision="f32")


# -------------------------------------------------------------------------------------------------- INT8 routes

def _qdq_route(context: ExportContext) -> list[Path]:
    """precision.to_int8 builds, caches and measures the QDQ ONNX; OpenVINO folds its Q/DQ pairs into INT8 ops."""
    precision.to_int8(context)
    context.data["validation"]["drift_vs_fp32_onnxruntime"] = context.data["validation"].pop("drift_vs_fp32")
    _write_ir(context, "image", context.manifest.graph_path("image"), "int8", "f32")
    return _calibration_set(context, log=lambda message: None).held_out


def _calibration_set(context: ExportContext, log):
    """The same seeded sample precision.to_int8 draws, so both routes calibrate on the same images."""
    from ..calibration import CalibrationSet
    options = context.options
    return CalibrationSet.from_dir(options.calib_dir, options.calib_count, context.manifest.preprocess,
                                   options.seed, log=log)


def _nncf_ir_route(context: ExportContext) -> list[Path]:
    """NNCF on the fp32 IR: OpenVINO's own FakeQuantize form, free of TensorRT's constraints on the QDQ graph, so
    self-attention's q and k (inputs of OpenVINO's fused ScaledDotProductAttention) go to INT8 as well."""
    import nncf
    import onnx
    from ..calibration.cache import calibration_key, policy_digest
    from ..calibration.policy import image_graph_policy
    ov = _openvino()
    calibration = _calibration_set(context, context.log)
    policy = image_graph_policy(onnx.load(str(context.staging / precision.FP32_FILE), load_external_data=False))
    kept_float = nncf_ir_float_nodes(policy)
    method = {"method": "nncf-ir", "smooth_quant_alpha": SMOOTH_QUANT_ALPHA, "fast_bias_correction": True,
              "weight_bits": context.options.int8_weight_bits, "nncf": nncf.__version__,
              "openvino": ov.__version__.split("-")[0]}
    key = calibration_key(context.data["model"]["weights_sha256"], calibration, method,
                          policy=policy_digest(kept_float))
    started = time.perf_counter()
    quantized, reused = cached_ir(key, lambda: _quantize_ir(context, calibration, kept_float),
                                  context.options.cache_dir, context.log)
    seconds = time.perf_counter() - started
    _write_ir(context, "image", quantized, "int8", "f32")
    context.data["precision"].update(
        compute="int8", method=method, quantized_nodes=fake_quantized_nodes(quantized),
        kept_float=["LayerNormalization", "Softmax", "Erf (GELU)", "grouping assignment", "grouping maps product",
                    "projection head after ReLU", "L2 normalisation",
                    "image.onnx (fp32, what ONNX Runtime runs from this artifact)"],
        kept_float_nodes=kept_float)
    context.data["calibration"] = {**calibration.summary(), **method, "reused_cache": reused, "seconds": seconds}
    return calibration.held_out


def _quantize_ir(context: ExportContext, calibration, kept_float: list[str]):
    import nncf
    from ..calibration.quantizers import MethodOptions, nncf_quantize
    model = _openvino().convert_model(str(context.staging / precision.FP32_FILE))
    windows = calibration.windows()
    context.log(f"quantizing the fp32 IR with NNCF (symmetric INT8, SmoothQuant α={SMOOTH_QUANT_ALPHA}, bias "
                f"correction; grouping assignment, grouping maps, LayerNorm and Softmax in float) on "
                f"{len(windows)} windows")
    ignored = nncf.IgnoredScope(names=sorted(ir_names(model, kept_float)), types=list(NNCF_IR_FLOAT_TYPES),
                                validate=False)
    options = MethodOptions("nncf", smooth_quant_alpha=SMOOTH_QUANT_ALPHA, fast_bias_correction=True,
                            weight_bits=context.options.int8_weight_bits)
    return nncf_quantize(model, windows, ignored, options)


def cached_ir(key: dict, build, root=None, log=print):
    """The IR counterpart of calibration.cache.cached_quantization: (quantized ov.Model, reused?) for `key`."""
    from ..calibration.cache import cached_entry
    ov = _openvino()
    return cached_entry(key, build, "image.xml", load=lambda path: ov.Core().read_model(str(path)),
                        save=lambda model, path: ov.save_model(model, str(path), compress_to_fp16=False),
                        root=root, log=log)


# NNCF never quantizes these op types' inputs under model_type=TRANSFORMER; listing them states the policy.
NNCF_IR_FLOAT_TYPES = ("MVN", "SoftMax")
# Self-attention's activation×activation products: INT8 on the IR route (the QDQ graph keeps them float).
ATTENTION_PRODUCT = re.compile(r"/(self_attn|pre_assign_attn/attn)/MatMul(_\d+)?$")


def nncf_ir_float_nodes(policy) -> list[str]:
    """ONNX names kept float on the IR route: the assignment, and every weight-free or post-ReLU product that is
    not self-attention — notably the product of the stages' soft assignment maps, which *is* the grouping output."""
    return sorted(set(policy.assignment) | {name for name in policy.keep_float if not ATTENTION_PRODUCT.search(name)})


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

def _write_ir(context: ExportContext, graph: str, source, precision_name: str, inference_precision: str,
              compress_to_fp16: bool = False) -> None:
    """Convert `source` (an ONNX path or an ov.Model) to <graph>.xml/.bin and record it as graphs[<graph>_ir]."""
    ov = _openvino()
    model = ov.convert_model(str(source)) if isinstance(source, Path) else source
    xml = context.staging / f"{graph}.xml"
    weights = xml.with_suffix(".bin")
    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    onnx_record = context.data["graphs"][graph]
    context.data["graphs"][f"{graph}_ir"] = {
        "file": xml.name, "weights": weights.name, "format": "openvino-ir", "precision": precision_name,
        "sha256": sha256_file(xml), "weights_sha256": sha256_file(weights),
        "inputs": onnx_record["inputs"], "outputs": onnx_record["outputs"],
        "openvino": ov.__version__.split("-")[0], "inference_precision": inference_precision}


# -------------------------------------------------------------------------------------------------- drift

def _fp32_reference(context: ExportContext):
    """The fp32 ONNX graphs in ONNX Runtime: the export already held them to PyTorch within 1e-3."""
    from ..runtimes.onnxruntime import OnnxRuntime
    data = copy.deepcopy(context.data)
    data["graphs"]["image"]["file"] = precision.FP32_FILE
    return OnnxRuntime(Manifest(data, context.staging))


def _validate(context: ExportContext, reference, images: list[Path]) -> dict:
    """Hold the text IR to the fp32 bar against text.onnx, and record the image IR's drift, in OpenVINO at the
    artifact's precision on CPU, against the fp32 ONNX image graph (both in the manifest's validation)."""
    from ..metrics.drift import CONFIDENT_MARGIN, measure_drift
    from ..runtimes.openvino import OpenVinoRuntime
    candidate = OpenVinoRuntime(context.manifest, cache_dir=False)
    tokens = np.zeros((len(TEXT_TOKENS), TEXT_CONTEXT), dtype=np.int32)
    for row, ids in enumerate(TEXT_TOKENS):
        tokens[row, :len(ids)] = ids
    text_difference = float(np.abs(candidate.encode_text(tokens) - reference.encode_text(tokens)).max())
    if text_difference > FP32_MAX_ABS_DIFF:
        raise ValidationFailed(f"the OpenVINO text IR disagrees with text.onnx (max abs diff {text_difference:.2e}, "
                               f"tolerance {FP32_MAX_ABS_DIFF:.0e}); the artifact was not written")
    report = measure_drift(reference, [candidate], images, labels=context.options.drift_labels,
                           confident_margin=CONFIDENT_MARGIN, progress=False)
    result = report.data["candidates"][0]
    drift = {"images": [p.name for p in images], "vocabulary": context.options.drift_labels,
             "reference": f"{precision.FP32_FILE} in {reference.description}", "candidate": candidate.description,
             "inference_precision": candidate.inference_precision,
             "class_level": {k: result["class_level"][k] for k in
                             ("miou_vs_reference", "pixel_agreement", "miou_vs_reference_confident")},
             "model_level": result["model_level"]}
    candidate.close()
    precision._log_drift(drift, context.log)
    context.data["validation"].update(drift_vs_fp32=drift, text_ir_max_abs_diff=text_difference)
    return drift


@contextlib.contextmanager
def _images_for_fp32(context: ExportContext):
    """The validation image(s) the user gave, else the export's deterministic test card, as files."""
    try:
        images = precision.drift_images(context)
    except UserError:
        images = None
    if images is not None:
        yield images
        return
    with tempfile.TemporaryDirectory() as scratch:
        card = Path(scratch) / "test-card.png"
        _test_card().save(card)
        yield [card]
