"""FP16 and INT8 steps: one reduced-precision image graph that every backend reads, with its drift measured.

- `to_fp16`: onnxconverter-common's float16 converter with the keep-float32 list of the precision policy.
- `to_int8`: COCO calibration → symmetric per-channel QDQ (NNCF or ONNX Runtime calibrators) under the policy,
  cached; with `max_drop`, the drift-budget search returns the most harmful blocks to float until it fits.
The text graph stays fp32: it runs once per vocabulary, not per image.
"""
from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

from ..artifact import Manifest
from ..errors import UserError
from .onnx import ExportContext, onnx_record

FP32_FILE = "image.onnx"
# What the INT8 targets keep in float (calibration.policy), as the manifest states it.
INT8_KEPT_FLOAT = ["LayerNormalization", "Softmax", "Erf (GELU)", "activation×activation MatMul",
                   "grouping assignment", "L2 normalisation"]


def drift_images(context: ExportContext, held_out: list[Path] | None = None) -> list[Path]:
    from ..segmentation.preprocess import list_images
    options = context.options
    if options.validation_images is not None:
        return list_images(options.validation_images)
    if held_out:
        return held_out
    if options.validation_image is not None:
        return [Path(options.validation_image)]
    raise UserError("measuring drift needs real images that were not used for calibration: pass "
                    "--validation-images DIR (or --calib-dir, whose held-out images are used)")


def _with_image_graph(context: ExportContext, file: str) -> Manifest:
    data = copy.deepcopy(context.data)
    data["graphs"]["image"]["file"] = file
    return Manifest(data, context.staging)


def measure_graph_drift(context: ExportContext, candidate_file: str, images: list[Path]) -> dict:
    """Drift of `candidate_file` against the fp32 image graph, both in ONNX Runtime, on held-out images."""
    from ..metrics.drift import measure_drift
    from ..runtimes.onnxruntime import OnnxRuntime
    reference = OnnxRuntime(_with_image_graph(context, FP32_FILE))
    candidate = OnnxRuntime(_with_image_graph(context, candidate_file))
    report = measure_drift(reference, [candidate], images, labels=context.options.drift_labels,
                           confident_margin=0.01, progress=False)
    result = report.data["candidates"][0]
    return {"images": [p.name for p in images], "vocabulary": context.options.drift_labels,
            "class_level": {k: result["class_level"][k] for k in
                            ("miou_vs_reference", "pixel_agreement", "miou_vs_reference_confident")},
            "model_level": result["model_level"]}


def _log_drift(drift: dict, log) -> None:
    model, cls = drift["model_level"], drift["class_level"]
    log(f"  drift on {len(drift['images'])} held-out images: group agreement {model['group_agreement']:.2f}% "
        f"(confident {model['group_agreement_confident']:.3f}%), group cosine mean "
        f"{model['group_embed_cosine']['mean']:.5f} min {model['group_embed_cosine']['min']:.5f}, "
        f"mIoU vs fp32 {cls['miou_vs_reference']:.2f} (confident pixels {cls['miou_vs_reference_confident']:.2f})")


def _finish(context: ExportContext, file: str, precision: str) -> None:
    context.data["graphs"]["image"] = onnx_record(context.staging, file, precision)
    (context.staging / FP32_FILE).unlink()


# -------------------------------------------------------------------------------------------------- FP16

def to_fp16(context: ExportContext) -> None:
    from onnxconverter_common import float16
    from ..calibration.policy import FP16_KEEP_FLOAT_OPS, image_graph_policy
    log = context.log
    model = onnx.load(str(context.staging / FP32_FILE))
    policy = image_graph_policy(model)
    log(f"converting the image graph to FP16 (float32 kept for {', '.join(FP16_KEEP_FLOAT_OPS)} and the "
        f"{len(policy.assignment)} nodes of the grouping assignment)")
    with warnings.catch_warnings():
        # It warns for every weight below fp16's range, which it flushes as intended.
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FLOAT_OPS,
                                                node_block_list=policy.assignment, disable_shape_infer=True)
    onnx.save(half, str(context.staging / "image.fp16.onnx"))
    drift = measure_graph_drift(context, "image.fp16.onnx", drift_images(context))
    _log_drift(drift, log)
    context.data["precision"].update(compute="fp16", kept_float=FP16_KEEP_FLOAT_OPS + ["grouping assignment"],
                                     kept_float_nodes=policy.assignment, quantized_nodes=[])
    context.data["validation"]["drift_vs_fp32"] = drift
    _finish(context, "image.fp16.onnx", "fp16")


# -------------------------------------------------------------------------------------------------- INT8

def to_int8(context: ExportContext) -> None:
    from ..calibration import CalibrationSet
    from ..calibration.cache import cached_quantization, calibration_key, policy_digest
    from ..calibration.policy import image_graph_policy
    from ..calibration.quantizers import MethodOptions, qdq_form, quantize, quantized_nodes
    options, log = context.options, context.log
    if options.calib_dir is None:
        raise UserError("--target onnx-int8 needs calibration images: pass --calib-dir DIR "
                        "(e.g. ../shared/data/coco/calib2017)")
    calibration = CalibrationSet.from_dir(options.calib_dir, options.calib_count, context.manifest.preprocess,
                                          options.seed, log=log)
    method = MethodOptions(options.calib_method, weight_bits=options.int8_weight_bits)
    model = onnx.load(str(context.staging / FP32_FILE))
    policy = image_graph_policy(model)
    key = calibration_key(context.data["model"]["weights_sha256"], calibration, method.to_dict(),
                          policy=policy_digest(policy.quantizable))
    started = time.perf_counter()
    windows = []

    def calibrate(current_policy):
        if not windows:
            windows.append(calibration.windows())
        return quantize(model, windows[0], current_policy, method, log=log)

    quantized, reused = cached_quantization(key, lambda: calibrate(policy), options.cache_dir, log=log)
    calibration_seconds = time.perf_counter() - started
    onnx.save(quantized, str(context.staging / "image.int8.onnx"))
    images = drift_images(context, calibration.held_out)
    drift = measure_graph_drift(context, "image.int8.onnx", images)
    _log_drift(drift, log)
    search = None
    if options.max_drop is not None and _exceeds(drift, options.max_drop):
        search, quantized, drift = drift_budget_search(context, model, policy, calibrate, drift, images)
    form = qdq_form(quantized)
    if not form["symmetric_int8"]:
        raise RuntimeError(f"the quantizer produced a non-symmetric QDQ graph: {form}")
    context.data["precision"].update(
        compute="int8", method=method.to_dict(), quantized_nodes=quantized_nodes(quantized),
        kept_float=INT8_KEPT_FLOAT + (search["kept_float_blocks"] if search else []),
        kept_float_nodes=policy.assignment, qdq=form)
    context.data["calibration"] = {**calibration.summary(), **method.to_dict(), "reused_cache": reused,
                                   "seconds": calibration_seconds}
    context.data["validation"]["drift_vs_fp32"] = drift
    if search:
        context.data["validation"]["drift_budget_search"] = search
    _finish(context, "image.int8.onnx", "int8")


def to_int8_dynamic(context: ExportContext) -> None:
    """ONNX Runtime CPU only: dynamic INT8 needs no calibration images, and is its own target because neither
    TensorRT nor OpenVINO run its integer ops fast; the shared QDQ graph is `onnx-int8`."""
    from ..calibration.policy import image_graph_policy
    from ..calibration.quantizers import dynamic_quantized_nodes, quantize_dynamic_int8
    model = onnx.load(str(context.staging / FP32_FILE))
    policy = image_graph_policy(model)
    quantized = quantize_dynamic_int8(model, policy, reduce_range=context.options.int8_weight_bits == 7,
                                      log=context.log)
    onnx.save(quantized, str(context.staging / "image.int8-dynamic.onnx"))
    drift = measure_graph_drift(context, "image.int8-dynamic.onnx", drift_images(context))
    _log_drift(drift, context.log)
    context.data["precision"].update(
        compute="int8-dynamic", backends=["onnxruntime"], weight_bits=context.options.int8_weight_bits,
        quantized_nodes=dynamic_quantized_nodes(quantized),
        kept_float=INT8_KEPT_FLOAT, kept_float_nodes=policy.assignment)
    context.data["validation"]["drift_vs_fp32"] = drift
    _finish(context, "image.int8-dynamic.onnx", "int8-dynamic")


def _exceeds(drift: dict, max_drop: float) -> bool:
    return 100.0 - drift["class_level"]["miou_vs_reference"] > max_drop


def drift_budget_search(context, model, policy, calibrate, drift, images):
    """Return blocks to float, most harmful first, re-quantizing and re-measuring until the drift fits."""
    options, log = context.options, context.log
    fully_quantized_ms = _median_latency(context, "image.int8.onnx")
    ranking = block_sensitivity(model, onnx.load(str(context.staging / "image.int8.onnx")), policy, context)
    log(f"drift {100 - drift['class_level']['miou_vs_reference']:.2f} > budget {options.max_drop}: returning "
        f"blocks to float, most harmful first ({', '.join(b for b, _ in ranking[:5])}, …)")
    kept, trials = [], []
    quantized = None
    for block, harm in ranking:
        kept.append(block)
        quantized = calibrate(policy.without_blocks(kept))
        onnx.save(quantized, str(context.staging / "image.int8.onnx"))
        drift = measure_graph_drift(context, "image.int8.onnx", images)
        trials.append({"kept_float": list(kept), "harm": harm,
                       "miou_vs_reference": drift["class_level"]["miou_vs_reference"]})
        log(f"  + {block} in float: mIoU vs fp32 {drift['class_level']['miou_vs_reference']:.2f}")
        if not _exceeds(drift, options.max_drop):
            break
    final_ms = _median_latency(context, "image.int8.onnx")
    fits = not _exceeds(drift, options.max_drop)
    if not fits:
        log(f"  even with every block in float the drift exceeds {options.max_drop}")
    return ({"max_drop": options.max_drop, "fits": fits, "kept_float_blocks": kept, "trials": trials,
             "ranking": [{"block": b, "harm": h} for b, h in ranking],
             "image_graph_ms": {"fully_quantized": fully_quantized_ms, "final": final_ms}},
            quantized, drift)


def _median_latency(context, file: str, runs: int = 5) -> float:
    from ..metrics.bench import median_ms
    from ..runtimes.onnxruntime import OnnxRuntime
    runtime = OnnxRuntime(_with_image_graph(context, file))
    pixels = np.zeros((1, 3, *context.options.image_size), dtype=np.float32)
    return median_ms(lambda: runtime.encode_image(pixels), runs)


def block_sensitivity(fp32: onnx.ModelProto, quantized: onnx.ModelProto, policy, context) -> list[tuple[str, float]]:
    """Rank blocks by the error each adds: relative error at its quantized nodes' outputs minus at their inputs.

    One run of each graph on a few held-out windows with the tensors exposed; errors compound downstream, so
    the jump across a block, not the error at its output, is what the block itself contributes.
    """
    import onnxruntime as ort
    from ..segmentation.preprocess import load_image, prepare
    nodes = {node.name: node for node in fp32.graph.node}
    watched = {}
    for block, names in policy.blocks().items():
        watched[block] = [(nodes[n].input[0], nodes[n].output[0]) for n in names if n in nodes]
    tensors = sorted({t for pairs in watched.values() for pair in pairs for t in pair})
    images = drift_images(context)[:2]
    pixels = np.concatenate([prepare(load_image(p), context.manifest.preprocess).windows[:1] for p in images])

    def run(model):
        exposed = copy.deepcopy(model)
        existing = {o.name for o in exposed.graph.output}
        for name in tensors:
            if name not in existing:
                exposed.graph.output.append(onnx.ValueInfoProto(name=name))
        session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"pixels": pixels})))

    reference, candidate = run(fp32), run(quantized)

    def error(name):
        if name not in candidate:
            return 0.0
        return float(np.linalg.norm(candidate[name] - reference[name]) / (np.linalg.norm(reference[name]) + 1e-12))

    harm = {block: sum(max(error(out) - error(inp), 0.0) for inp, out in pairs) for block, pairs in watched.items()}
    return sorted(harm.items(), key=lambda item: -item[1])
