"""The precision policy, as node lists of the exported image graph.

INT8 goes to the big matrix products with weights: the patch embedding, attention projections, MLPs and the
projection head. Everything else stays float — LayerNorm, Softmax, GELU, the activation×activation products of
attention, the whole grouping assignment (q·k logits, softmax, argmax) and the final L2 normalisations. Attention's
q·k and attention·v products can go to INT8 as well (`--int8-attention`, as NNCF's TRANSFORMER preset does); the
grouping assignment and the product of the stages' soft assignment maps never do.
Blocks (one attention, one MLP, one grouping block, …, as the model names them in model/blocks.py) are the unit
`--keep-float` and the drift-budget search return to float.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError
from ..model.blocks import ASSIGNMENT_NODES as ASSIGNMENT
from ..model.blocks import ATTENTION_PRODUCTS, block_of, forward_order

if TYPE_CHECKING:
    import onnx

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
# Ops the FP16 path keeps in float32 (their ranges or reductions overflow or lose precision in fp16).
FP16_KEEP_FLOAT_OPS = ["LayerNormalization", "Softmax", "ReduceMax", "Equal", "ReduceL2", "LpNormalization",
                       "ReduceSum", "ReduceMean", "Erf"]
# What the INT8 targets keep in float, as the manifest states it.
INT8_KEPT_FLOAT = ["LayerNormalization", "Softmax", "Erf (GELU)", "activation×activation MatMul",
                   "grouping assignment", "L2 normalisation"]


@dataclass
class Policy:
    quantizable: list[str]        # Conv/Gemm/MatMul nodes the policy allows in INT8
    keep_float: list[str]         # every other Conv/Gemm/MatMul
    assignment: list[str]         # the grouping assignment's nodes, always float

    def blocks(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for name in self.quantizable:
            grouped.setdefault(block_of(name) or "other", []).append(name)
        return grouped

    def block_names(self) -> list[str]:
        """The blocks with a node in INT8, in forward order: what can be returned to float."""
        return forward_order(name for name in self.blocks() if name != "other")

    def without_blocks(self, blocks) -> Policy:
        """This policy with the given blocks returned to float."""
        dropped = {name for block in blocks for name in self.blocks().get(block, [])}
        return Policy([n for n in self.quantizable if n not in dropped],
                      sorted(set(self.keep_float) | dropped), self.assignment)


def image_graph_policy(model: onnx.ModelProto, attention_products: bool = False) -> Policy:
    """The policy for this graph; `attention_products` puts attention's q·k and attention·v products in INT8."""
    weights = {init.name for init in model.graph.initializer}
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    quantizable: list[str] = []
    keep_float: list[str] = []
    assignment: list[str] = []
    for node in model.graph.node:
        if ASSIGNMENT.search(node.name):
            assignment.append(node.name)
        if node.op_type not in WEIGHT_OPS:
            continue
        has_weight = len(node.input) > 1 and node.input[1] in weights
        # A ReLU output is non-negative, so a calibrator would give it unsigned INT8, which TensorRT's explicit
        # quantization rejects; only the projection head's second layer is affected, a negligible product.
        after_relu = producers.get(node.input[0]) == "Relu"
        attention = attention_products and ATTENTION_PRODUCTS.search(node.name) is not None
        allowed = (has_weight or attention) and not after_relu and not ASSIGNMENT.search(node.name)
        (quantizable if allowed else keep_float).append(node.name)
    return Policy(quantizable, keep_float, assignment)


def fp16_blocked_nodes(model: onnx.ModelProto) -> set[str]:
    """Nodes of an image graph kept float32 where its float part is FP16: the FP16 keep-list ops and the grouping
    assignment, the set the FP16 converter blocks and the weakly typed TensorRT builds pin, so all agree. Q/DQ
    nodes are not compute, and never blocked."""
    op_types = {node.name: node.op_type for node in model.graph.node}
    kept = {name for name, op in op_types.items() if op in FP16_KEEP_FLOAT_OPS}
    qdq = {name for name, op in op_types.items() if op in ("QuantizeLinear", "DequantizeLinear")}
    return (kept | set(image_graph_policy(model).assignment)) - qdq


def int8_kept_float(attention_products: bool) -> list[str]:
    """INT8_KEPT_FLOAT, for a graph whose attention products are INT8 when `attention_products`."""
    if not attention_products:
        return list(INT8_KEPT_FLOAT)
    return [kind.replace("activation×activation MatMul", "grouping maps product") for kind in INT8_KEPT_FLOAT]


def kept_float_blocks(policy: Policy, asked) -> list[str]:
    """The `--keep-float` blocks in forward order, each one this graph quantizes; a UserError names any other."""
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
