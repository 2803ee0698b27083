"""Block probes: a backend runs the image graph with GroupViT's block tensors exposed (per-block divergence,
`groupvit-edge diagnose`). Each backend module implements `block_probe(manifest, outputs, forced, options)`;
this module holds what they share: the probe interface and the ONNX surgery that exposes tensors.

`run(window)` runs the graph as it is; `run(window, reference)` teacher-forced, every forced tensor read from
`reference` (the reference run's outputs). Both return {tensor: array} for the exposed outputs; `missing` lists
the tensors the graph does not have.
"""
from __future__ import annotations

from ..artifact import Manifest
from ..imports import require

IMAGE_INPUT = "pixels"
REFERENCE_SUFFIX = "::reference"   # a teacher-forced graph reads tensor T from the graph input T::reference


class Probe:
    missing: list[str]
    description: str

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Release sessions and buffers."""


def onnx_module():
    return require("onnx", what="reading the image graph for per-block divergence")


def image_graph(manifest: Manifest, with_weights: bool = False):
    """The artifact's ONNX image graph (every artifact holds one: its IR and engines are made from it)."""
    return onnx_module().load(str(manifest.graph_path("image")), load_external_data=with_weights)


def probe_graph(model, outputs, forced=()) -> list[str]:
    """Change the image graph `model` (an onnx ModelProto) in place: `outputs` become graph outputs, and every
    node reading a tensor of `forced` reads the new graph input `<tensor>::reference` instead. Both are typed and
    shaped as shape inference finds them, batch axis named (TensorRT's parser and profiles want that). Returns
    the tensors of either list the graph does not produce."""
    onnx = onnx_module()
    produced = {output for node in model.graph.node for output in node.output}
    missing = [tensor for tensor in dict.fromkeys([*outputs, *forced]) if tensor not in produced]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    inferred = {value.name: value for value in inferred.value_info}
    existing = {output.name for output in model.graph.output}
    model.graph.output.extend(_declared(onnx, inferred, tensor, tensor) for tensor in outputs
                              if tensor in produced and tensor not in existing)
    for tensor in forced:
        if tensor not in produced:
            continue
        model.graph.input.append(_declared(onnx, inferred, tensor, tensor + REFERENCE_SUFFIX))
        for node in model.graph.node:
            for position, name in enumerate(node.input):
                if name == tensor:
                    node.input[position] = tensor + REFERENCE_SUFFIX
    return missing


def _declared(onnx, inferred: dict, tensor: str, name: str):
    value = inferred.get(tensor)
    if value is None:
        return onnx.ValueInfoProto(name=name)
    declared = onnx.ValueInfoProto()
    declared.CopyFrom(value)
    declared.name = name
    dims = declared.type.tensor_type.shape.dim
    if len(dims):
        dims[0].dim_param = "batch"
    return declared
