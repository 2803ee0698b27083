"""The precision policy (DESIGN.md), as node lists of the exported image graph.

INT8 goes to the big matrix products with weights: the patch embedding, attention projections, MLPs and the
projection head. Everything else stays float — LayerNorm, Softmax, GELU, the activation×activation products of
attention, the whole grouping assignment (q·k logits, softmax, argmax) and the final L2 normalisations.
Blocks (one attention, one MLP, one grouping block, …) are the unit the drift-budget search returns to float.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
# Ops the FP16 path keeps in float32 (their ranges or reductions overflow or lose precision in fp16).
FP16_KEEP_FLOAT_OPS = ["LayerNormalization", "Softmax", "ReduceMax", "Equal", "ReduceL2", "LpNormalization",
                       "ReduceSum", "ReduceMean", "Erf"]
_BLOCK_PATTERNS = (
    (re.compile(r"^/vision_model/embeddings/"), "patch_embed"),
    (re.compile(r"^/vision_model/encoder/stages\.(\d+)/layers\.(\d+)/self_attn/"), "stage{0}.layer{1}.attention"),
    (re.compile(r"^/vision_model/encoder/stages\.(\d+)/layers\.(\d+)/mlp/"), "stage{0}.layer{1}.mlp"),
    (re.compile(r"^/vision_model/encoder/stages\.(\d+)/downsample/"), "stage{0}.grouping"),
    (re.compile(r"^/vision_model/encoder/stages\.(\d+)/group_projector/"), "stage{0}.group_projector"),
    (re.compile(r"^/visual_projection/"), "projection"),
)
# The assignment: its q/k projections and q·k logits, softmax, argmax (ReduceMax + Equal) and normalisation.
ASSIGNMENT = re.compile(r"/downsample/assign/((q_proj|k_proj)/|(MatMul|Softmax|ReduceMax|Equal|Cast|ReduceSum|Div|Add|Mul))")


def block_of(node_name: str) -> str | None:
    for pattern, template in _BLOCK_PATTERNS:
        match = pattern.match(node_name)
        if match:
            return template.format(*match.groups())
    return None


@dataclass
class Policy:
    quantizable: list[str]        # weight-bearing Conv/Gemm/MatMul nodes the policy allows in INT8
    keep_float: list[str]         # every other Conv/Gemm/MatMul (activation × activation products)
    assignment: list[str]         # the grouping assignment's nodes, always float

    def blocks(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for name in self.quantizable:
            grouped.setdefault(block_of(name) or "other", []).append(name)
        return grouped

    def without_blocks(self, blocks) -> "Policy":
        """This policy with the given blocks returned to float."""
        dropped = {name for block in blocks for name in self.blocks().get(block, [])}
        return Policy([n for n in self.quantizable if n not in dropped],
                      sorted(set(self.keep_float) | dropped), self.assignment)


def image_graph_policy(model: onnx.ModelProto) -> Policy:
    weights = {init.name for init in model.graph.initializer}
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    quantizable, keep_float, assignment = [], [], []
    for node in model.graph.node:
        if ASSIGNMENT.search(node.name):
            assignment.append(node.name)
        if node.op_type not in WEIGHT_OPS:
            continue
        has_weight = len(node.input) > 1 and node.input[1] in weights
        # A ReLU output is non-negative, so a calibrator would give it unsigned INT8, which TensorRT's explicit
        # quantization rejects; only the projection head's second layer is affected, a negligible product.
        after_relu = producers.get(node.input[0]) == "Relu"
        allowed = has_weight and not after_relu and not ASSIGNMENT.search(node.name)
        (quantizable if allowed else keep_float).append(node.name)
    return Policy(quantizable, keep_float, assignment)
