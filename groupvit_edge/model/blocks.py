"""GroupViT's blocks, as the exported image graph names them: the unit the precision policy, the drift-budget
search, `--keep-float` and the per-block divergence report speak in. Torch-free, so a device can read it.

A block is one of the model's own modules: the patch embedding, each layer's attention and MLP, each stage's
grouping block and group projector, and the projection head. Each kind declares
- its name (`stage1.layer2.mlp`) and the ONNX node paths of its modules (the exporter keeps module paths as node
  names, and every quantizer and converter downstream keeps node names);
- its *output* (a node, meaning its first output, or a tensor) and the node whose first input it *reads*.

The output is the residual stream after the block's residual Add (attention, MLP, and the grouping block's own
MLP), not the branch before the Add: the stream is what every later block reads, so its error is the error the
rest of the network sees, whereas a branch's error looks large merely because the branch is small. Blocks
without a residual path output their last tensor: the patch embedding its tokens plus position embeddings, a
group projector the next stage's group tokens, the projection head the graph's `group_embeds` (after the L2
normalisation, float under every policy), so its row is the figure `drift` reports. Every block tensor is
[batch, tokens, channels].
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

# Positions within a stage; the group projector makes the stage's group tokens before its first layer reads them.
_FIRST, _LAST = -1, 10 ** 6
_STAGE = r"^/vision_model/encoder/stages\.(?P<stage>\d+)"
_STAGE_NODE = "/vision_model/encoder/stages.{stage}"


@dataclass(frozen=True)
class BlockKind:
    name: str                   # template, e.g. "stage{stage}.layer{layer}.mlp"
    nodes: re.Pattern           # ONNX node names of the block's modules; named groups fill the template
    output: str                 # template: a node (its first output is the block's output) or a tensor
    input_node: str             # template: the node whose first input is what the block reads
    position: Callable[[dict], tuple[int, int]]   # (stage, place in the stage): the forward order

    def name_pattern(self) -> re.Pattern:
        escaped = re.escape(self.name).replace(r"\{", "{").replace(r"\}", "}")
        return re.compile("^" + re.sub(r"{(\w+)}", r"(?P<\1>\\d+)", escaped) + "$")


BLOCK_KINDS = (
    BlockKind("patch_embed", re.compile(r"^/vision_model/embeddings/"), "/vision_model/embeddings/Add",
              "/vision_model/embeddings/patch_embeddings/projection/Conv", lambda _: (_FIRST, 0)),
    BlockKind("stage{stage}.layer{layer}.attention", re.compile(_STAGE + r"/layers\.(?P<layer>\d+)/self_attn/"),
              _STAGE_NODE + "/layers.{layer}/Add", _STAGE_NODE + "/layers.{layer}/Add",
              lambda f: (int(f["stage"]), 1 + 2 * int(f["layer"]))),
    BlockKind("stage{stage}.layer{layer}.mlp", re.compile(_STAGE + r"/layers\.(?P<layer>\d+)/mlp/"),
              _STAGE_NODE + "/layers.{layer}/Add_1", _STAGE_NODE + "/layers.{layer}/Add_1",
              lambda f: (int(f["stage"]), 2 + 2 * int(f["layer"]))),
    # The grouping block reads the stage's last stream through two slices (image tokens, group tokens).
    BlockKind("stage{stage}.grouping", re.compile(_STAGE + r"/downsample/"), _STAGE_NODE + "/downsample/Add_1",
              _STAGE_NODE + "/Slice", lambda f: (int(f["stage"]), _LAST)),
    BlockKind("stage{stage}.group_projector", re.compile(_STAGE + r"/group_projector/"), _STAGE_NODE + "/Add",
              _STAGE_NODE + "/group_projector/group_projector.0/LayerNormalization",
              lambda f: (int(f["stage"]), 0)),
    BlockKind("projection", re.compile(r"^/visual_projection/"), "group_embeds",
              "/vision_model/layernorm/LayerNormalization", lambda _: (_LAST, 0)),
)
NAME_FORMS = ("patch_embed, stageS.layerL.attention, stageS.layerL.mlp, stageS.grouping, stageS.group_projector, "
              "projection")
# Attention's activation×activation products (q·kᵀ and attention·v) in self-attention and in the grouping block's
# cross-attention; not the assignment's q·k, nor the product of the stages' assignment maps.
ATTENTION_PRODUCTS = re.compile(r"/(self_attn|pre_assign_attn/attn)/MatMul(_\d+)?$")
# The grouping assignment: its q/k projections and q·k logits, softmax, argmax (ReduceMax + Equal), normalisation.
ASSIGNMENT_NODES = re.compile(
    r"/downsample/assign/((q_proj|k_proj)/|(MatMul|Softmax|ReduceMax|Equal|Cast|ReduceSum|Div|Add|Mul))")


def _match(node_name: str) -> tuple[BlockKind, dict] | None:
    for kind in BLOCK_KINDS:
        found = kind.nodes.match(node_name)
        if found:
            return kind, found.groupdict()
    return None


def block_of(node_name: str) -> str | None:
    """The block an ONNX node of the image graph belongs to, or None (stage plumbing, final norms, outputs)."""
    found = _match(node_name)
    return found[0].name.format(**found[1]) if found else None


def _parse_name(name: str) -> tuple[BlockKind, dict] | None:
    for kind in BLOCK_KINDS:
        found = kind.name_pattern().match(name)
        if found:
            return kind, found.groupdict()
    return None


def is_block_name(name: str) -> bool:
    """Whether `name` has the form of a block name (whether this graph has that block is another question)."""
    return _parse_name(name) is not None


def forward_order(names) -> list[str]:
    """Block names in the order the image graph computes them."""
    def position(name: str) -> tuple[int, int]:
        parsed = _parse_name(name)
        if parsed is None:
            raise ValueError(f"{name!r} is not a block name")
        kind, fields = parsed
        return kind.position(fields)
    return sorted(names, key=position)


@dataclass(frozen=True)
class BlockTensors:
    """Where one block sits in a graph: the tensor it reads and the tensor it outputs."""
    block: str
    input: str
    output: str


def block_tensors(graph) -> list[BlockTensors]:
    """Every block of an image graph (an onnx GraphProto) with its input and output tensors, in forward order.
    A block whose declared input or output node the graph lacks is left out: the graph is not GroupViT's."""
    nodes = {node.name: node for node in graph.node}
    produced = {output for node in graph.node for output in node.output}
    found = {}
    for node in graph.node:
        match = _match(node.name)
        if match is None:
            continue
        kind, fields = match
        name = kind.name.format(**fields)
        if name in found:
            continue
        reads, output = nodes.get(kind.input_node.format(**fields)), kind.output.format(**fields)
        writes = nodes[output].output[0] if output in nodes else output if output in produced else None
        if reads is not None and writes is not None:
            found[name] = BlockTensors(name, reads.input[0], writes)
    return [found[name] for name in forward_order(found)]
