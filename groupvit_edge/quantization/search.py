"""The drift-budget search: the most-quantized INT8 image graph whose drift stays within the user's budget.

Calibrate once. Rank GroupViT's blocks (the model's own: patch embedding, each layer's attention and MLP, the
grouping blocks, projections) by the error each adds. Every candidate is the same quantized graph with the
k most harmful blocks computing in float again (`form.return_to_float`): no recalibration, so
candidates differ only in k. A binary search over k (at most all blocks but one: all of them is the fp32 graph),
capped at `--search-steps` measurements, keeps the smallest k that fits; when none fits the export fails with
the table of what each step reached.

The budget gates on model-level figures (confident group agreement, group-embedding cosine), which stay
meaningful with any weights, and on class mIoU only when the user names the vocabulary (`--drift-labels`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ValidationFailed
from ..imports import require
from ..listing import listed
from ..metrics.drift import MODEL_LEVEL_BUDGET, DriftBudget, budget_from_flags
from ..segmentation.preprocess import load_image, prepare
from .calibration_set import PhotoSet
from .form import return_to_float
from .measure import FloatImageAndText, QuantizationJob, graph_drift, image_graph_ms, run_exposing
from .policy import Policy
from .records import BudgetSearch, DriftCheck, SearchStep

if TYPE_CHECKING:
    import onnx

CANDIDATE_FILE = "image.int8.candidate.onnx"
SENSITIVITY_PHOTOS = 2


def budget_from(options) -> DriftBudget | None:
    """The user's drift budget, or None when they gave none (then drift is measured and recorded, not gated)."""
    given = options.budget
    return budget_from_flags(given.max_drop, given.min_confident_agreement, given.min_group_cosine,
                             defaults=MODEL_LEVEL_BUDGET, class_level=given.drift_labels is not None)


def search(job: QuantizationJob, floats: FloatImageAndText, fp32: onnx.ModelProto, quantized: onnx.ModelProto,
           policy: Policy, photos: PhotoSet, budget: DriftBudget, first: DriftCheck, int8_file: str) -> BudgetSearch:
    """Leave the chosen candidate as `int8_file` in the staging directory, or raise ValidationFailed."""
    onnx = require("onnx", extra="export")
    ranking = block_sensitivity(fp32, quantized, policy, photos, job.preprocess)
    blocks = [block for block, _ in ranking]
    job.log(f"drift exceeds the budget ({'; '.join(first.failures)}): searching which of {len(blocks)} blocks to "
            f"return to float, most harmful first ({', '.join(blocks[:4])}, …)")
    measured = {0: SearchStep([], first)}

    def measure(count: int) -> SearchStep:
        nodes = [name for block in blocks[:count] for name in policy.blocks()[block]]
        onnx.save(return_to_float(quantized, fp32, nodes), str(job.staging / CANDIDATE_FILE))
        check = graph_drift(job, floats, CANDIDATE_FILE, photos, budget, precision="int8")
        step = SearchStep(blocks[:count], check)
        job.log(f"  {count} block(s) in float: {check.line()} → {'fits' if step.fits else 'exceeds'}")
        measured[count] = step
        return step

    fits_at = fewest_fitting(len(blocks), job.options.budget.search_steps, lambda count: measure(count).fits)
    steps = [measured[count] for count in sorted(measured)]
    result = BudgetSearch(budget, ranking, steps, measured[fits_at] if fits_at is not None else None)
    if result.chosen is None:
        raise ValidationFailed(f"the drift budget ({budget.describe()}) cannot be met with any block in INT8; the "
                               f"artifact was not written. Loosen the budget, calibrate on more photos "
                               f"(--calib-dir), or export --target onnx for fp32. Each step:\n{result.table()}")
    chosen = return_to_float(quantized, fp32, [n for b in result.chosen.float_blocks for n in policy.blocks()[b]])
    onnx.save(quantized, str(job.staging / CANDIDATE_FILE))
    onnx.save(chosen, str(job.staging / int8_file))
    result.chosen.check.candidate = f"{int8_file} in ONNX Runtime"
    result.image_graph_ms = {"fully_quantized": image_graph_ms(job, floats, CANDIDATE_FILE),
                             "chosen": image_graph_ms(job, floats, int8_file)}
    (job.staging / CANDIDATE_FILE).unlink(missing_ok=True)
    job.log(f"chose {len(result.chosen.float_blocks)} block(s) in float ({listed(result.chosen.float_blocks)}); "
            f"image graph {result.image_graph_ms['fully_quantized']:.0f} → {result.image_graph_ms['chosen']:.0f} ms")
    return result


def fewest_fitting(blocks: int, steps: int, fits) -> int | None:
    """The fewest ranked blocks in float for which `fits(count)` holds, measuring at most `steps` counts, or None.

    Zero blocks (the fully quantized graph) was measured and failed. Every block in float is the fp32 graph, not
    an INT8 one, so the most a candidate returns is all blocks but one; a binary search assumes that returning
    more blocks never hurts.
    """
    most = blocks - 1
    if most < 1 or steps < 1 or not fits(most):
        return None
    fitting, failing, measured = most, 0, 1
    while fitting - failing > 1 and measured < steps:
        middle = (failing + fitting) // 2
        measured += 1
        if fits(middle):
            fitting = middle
        else:
            failing = middle
    return fitting


def block_sensitivity(fp32: onnx.ModelProto, quantized: onnx.ModelProto, policy: Policy, photos: PhotoSet,
                      preprocess) -> list[tuple[str, float]]:
    """Rank blocks by the error each adds: relative error at its quantized nodes' outputs minus at their inputs.

    One run of each graph on a few held-out windows with the tensors exposed; errors compound downstream, so
    the jump across a block, not the error at its output, is what the block itself contributes.
    """
    nodes = {node.name: node for node in fp32.graph.node}
    watched = {block: [(nodes[n].input[0], nodes[n].output[0]) for n in names if n in nodes]
               for block, names in policy.blocks().items()}
    tensors = sorted({tensor for pairs in watched.values() for pair in pairs for tensor in pair})
    pixels = np.concatenate([prepare(load_image(path), preprocess).windows[:1]
                             for path in photos.paths[:SENSITIVITY_PHOTOS]])

    reference, candidate = run_exposing(fp32, tensors, pixels), run_exposing(quantized, tensors, pixels)

    def error(name):
        if name not in candidate:
            return 0.0
        return float(np.linalg.norm(candidate[name] - reference[name]) / (np.linalg.norm(reference[name]) + 1e-12))

    harm = {block: sum(max(error(out) - error(inp), 0.0) for inp, out in pairs) for block, pairs in watched.items()}
    return sorted(harm.items(), key=lambda item: -item[1])
