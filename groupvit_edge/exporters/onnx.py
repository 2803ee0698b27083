"""The base of every target: GroupViT traced into image.onnx + text.onnx, simplified, and held to the fp32
tolerance against PyTorch in ONNX Runtime on real photos."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..artifact import GraphRecord
from ..errors import ValidationFailed
from ..imports import require
from ..metrics.drift import FP32_MAX_ABS_DIFF, FP32_TOLERANCE, validate_candidate
from ..quantization.records import DriftCheck
from ..runtimes.onnxruntime import OnnxRuntime
from .records import FloatGraphs

OPSET = 17   # ≥ 17 so LayerNorm is one LayerNormalization op (quantization.policy keeps it float)
TEXT_CONTEXT = 77
IMAGE_FILE, TEXT_FILE = "image.onnx", "text.onnx"
FP32_CHECK_PHOTOS = 4          # the fp32 check is exact to ~1e-7: a few photos' windows show any broken graph
FP32_CHECK_LABELS = "prototypes:8"
# Prompts the text graphs of every backend are compared on: "<start> a <end>", "<start> cat <end>".
TEXT_PROBE = ((49406, 320, 49407), (49406, 1125, 49407))


def build_float_graphs(job) -> FloatGraphs:
    """Trace, simplify and validate the fp32 graphs in `job.staging`; ValidationFailed when they disagree."""
    torch = require("torch", extra="export")
    from ..model.graphs import IMAGE_INPUT, IMAGE_OUTPUTS, TEXT_INPUT, TEXT_OUTPUTS
    height, width = job.options.common.image_size
    job.log(f"tracing the image graph at {height}x{width} (opset {OPSET}) and the text graph")
    with torch.inference_mode(False), torch.no_grad():
        _export_graph(job.reference.image_graph, torch.zeros(1, 3, height, width), job.staging / IMAGE_FILE,
                      IMAGE_INPUT, IMAGE_OUTPUTS, "batch")
        _export_graph(job.reference.text_graph, torch.zeros(2, TEXT_CONTEXT, dtype=torch.int32),
                      job.staging / TEXT_FILE, TEXT_INPUT, TEXT_OUTPUTS, "classes")
    image, text = onnx_record(job.staging, IMAGE_FILE), onnx_record(job.staging, TEXT_FILE)
    return _validated(job, image, text)


def _validated(job, image: GraphRecord, text: GraphRecord) -> FloatGraphs:
    photos = job.validation.first(FP32_CHECK_PHOTOS)
    job.log(f"validating the ONNX graphs in ONNX Runtime against PyTorch on {len(photos.paths)} photos "
            f"({photos.source})")
    candidate = OnnxRuntime(job.working_manifest({"image": image, "text": text}))
    drift = validate_candidate(job.reference, candidate, list(photos.paths), labels=FP32_CHECK_LABELS)
    text_difference = text_max_abs_diff(job.reference, candidate)
    check = DriftCheck("PyTorch (eager fp32)", "ONNX Runtime fp32", photos, FP32_CHECK_LABELS, drift, FP32_TOLERANCE)
    job.log(f"  {check.line()}; text embeddings max abs diff {text_difference:.1e}")
    failures = check.failures
    if text_difference > FP32_MAX_ABS_DIFF:
        failures.append(f"text embeddings max abs difference {text_difference:.2e} exceeds "
                        f"{FP32_MAX_ABS_DIFF:.0e}")
    if failures:
        raise ValidationFailed(f"the ONNX graphs disagree with PyTorch ({'; '.join(failures)}); the artifact was "
                               f"not written")
    return FloatGraphs(image, text, check, text_difference)


def text_max_abs_diff(reference, candidate) -> float:
    """Largest difference of the two runtimes' text embeddings on the probe prompts."""
    tokens = np.zeros((len(TEXT_PROBE), TEXT_CONTEXT), dtype=np.int32)
    for row, ids in enumerate(TEXT_PROBE):
        tokens[row, :len(ids)] = ids
    return float(np.abs(candidate.encode_text(tokens) - reference.encode_text(tokens)).max())


def _export_graph(module, example, path: Path, input_name: str, output_names, batch_axis: str):
    onnx = require("onnx", extra="export")
    onnxsim = require("onnxsim", extra="export")
    torch = require("torch", extra="export")
    dynamic = {name: {0: batch_axis} for name in (input_name, *output_names)}
    raw = path.with_suffix(".raw.onnx")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript; it remains the
        # one that gives clean static graphs with named dynamic batch axes on every torch ≥ 2.1.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(raw), dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=list(output_names), dynamic_axes=dynamic,
                          do_constant_folding=True)
    graph = onnx.load(str(raw))
    # Constant folding and shape inference only: onnxsim's fusion passes rename nodes (Gemm_12) and merge
    # identical initializers, which loses the module paths the precision policy and the manifest's list of
    # quantized nodes are written in. Every runtime fuses MatMul+Add itself.
    graph, ok = onnxsim.simplify(graph, perform_optimization=False)
    if not ok:
        raise RuntimeError(f"onnxsim could not verify the simplified {path.name}")
    _drop_unused_initializers(graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    raw.unlink()


def _drop_unused_initializers(model) -> None:
    """Constant folding leaves dead constants behind (without onnxsim's optimizer passes); runtimes warn on them."""
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    dead = [init for init in model.graph.initializer if init.name not in used]
    for init in dead:
        model.graph.initializer.remove(init)


def onnx_record(directory: Path, file: str, precision: str = "fp32") -> GraphRecord:
    return GraphRecord.from_onnx(directory, file, precision, {"opset": OPSET})
