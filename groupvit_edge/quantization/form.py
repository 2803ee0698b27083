"""The QDQ form of an INT8 image graph, and the rewrites between forms — the only place that edits Q/DQ pairs.

- Weights: 8-bit, or 7-bit (values in [-64, 63]) where this CPU's INT8 products saturate (hardware.py).
- Activations: symmetric S8 as calibrated (what TensorRT and OpenVINO read); ONNX Runtime on x86 runs the same
  levels as U8 (zero point + 128), its fast u8×s8 kernels.
- Float again: blocks returned to float from the same calibration, and nodes the policy keeps float that a
  calibrator quantized anyway.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

from .. import hardware
from ..imports import require

if TYPE_CHECKING:
    import onnx


def _onnx():
    return require("onnx", extra="onnxruntime", what="an INT8 graph's Q/DQ form")


def weight_bits(asked: int | None, target_bits: int | None) -> int:
    """The weight range of an INT8 graph: as asked, else the target's own, else what this CPU needs."""
    for bits in (asked, target_bits):
        if bits is not None:
            return bits
    return hardware.int8_weight_bits()


def default_activation_form() -> str:
    return "u8" if hardware.is_x86() else "s8"


def activation_label(form: str | None) -> str:
    """", U8 activations" for a static INT8 graph's form; nothing for other graphs."""
    return f", {form.upper()} activations" if form else ""


def unsigned_activations(model):
    """`model` with every activation Q/DQ pair moved from int8 (zero point z) to uint8 (zero point z + 128): the
    same scale, the same levels. Weights (constant inputs of DequantizeLinear) stay int8."""
    constants = {init.name: init for init in model.graph.initializer}
    shifted: dict[str, str] = {}

    def unsigned_zero(name: str) -> str:
        if name not in shifted:
            zero = _onnx().numpy_helper.to_array(constants[name]).astype(np.int16) + 128
            model.graph.initializer.append(_onnx().numpy_helper.from_array(zero.astype(np.uint8), f"{name}_u8"))
            shifted[name] = f"{name}_u8"
        return shifted[name]

    quantized = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants and len(node.input) == 3 \
                and constants[node.input[2]].data_type == _onnx().TensorProto.INT8:
            node.input[2] = unsigned_zero(node.input[2])
            quantized.add(node.output[0])
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in quantized:
            node.input[2] = unsigned_zero(node.input[2])
    for value in list(model.graph.value_info) + list(model.graph.output):
        if value.name in quantized:
            value.type.tensor_type.elem_type = _onnx().TensorProto.UINT8
    used = {name for node in model.graph.node for name in node.input}
    unused = [init for init in model.graph.initializer if init.name not in used]
    for init in unused:
        model.graph.initializer.remove(init)
    return model


def dynamic_quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Integer matrix products of a dynamically quantized graph: what runs in INT8."""
    return sorted(node.name for node in model.graph.node if node.op_type in ("MatMulInteger", "ConvInteger"))


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes (not Q/DQ themselves) that consume a dequantized tensor: what runs in INT8 on a QDQ backend."""
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return sorted({node.name for node in model.graph.node
                   if node.op_type not in ("QuantizeLinear", "DequantizeLinear")
                   and any(name in dequantized for name in node.input)})


def qdq_form(model: onnx.ModelProto) -> dict:
    """Zero points, dtypes and axes of every Q/DQ pair: what TensorRT's explicit quantization accepts."""
    initializers = {init.name: init for init in model.graph.initializer}
    zero_points, dtypes, per_channel = 0, set(), 0
    nonzero = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) > 2 and node.input[2] in initializers:
            value = _onnx().numpy_helper.to_array(initializers[node.input[2]])
            zero_points += 1
            dtypes.add(str(value.dtype))
            if np.any(value != 0):
                nonzero.append(node.name)
        scale = initializers.get(node.input[1])
        if scale is not None and _onnx().numpy_helper.to_array(scale).size > 1:
            per_channel += 1
    return {"qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node),
            "zero_point_dtypes": sorted(dtypes), "nonzero_zero_points": nonzero, "per_channel_qdq": per_channel,
            "symmetric_int8": not nonzero and dtypes <= {"int8"}}


def return_to_float(quantized: onnx.ModelProto, fp32: onnx.ModelProto, nodes) -> onnx.ModelProto:
    """`quantized` with the named nodes computing in float again, from the same calibration.

    Their activation inputs (and outputs, where the quantizer quantized those too) bypass QuantizeLinear →
    DequantizeLinear; their weights and biases come back exactly from `fp32` (a quantizer's bias correction is
    undone), divided by the SmoothQuant scale where the quantizer multiplied their activation by one, which keeps
    the product equal to fp32's. Q/DQ nodes left unused go.
    """
    model = copy.deepcopy(quantized)
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    initializers = {init.name: init for init in graph.initializer}
    original = {node.name: node for node in fp32.graph.node}
    fp32_values = {init.name: init for init in fp32.graph.initializer}
    wanted = set(nodes)
    for node in graph.node:
        if node.name not in wanted:
            continue
        source = original[node.name]
        scale = None
        for position in _read_float_activations(node, producers):
            scale = _smooth_quant_scale(node.input[position], source.input[position], producers, initializers)
        for position, name in enumerate(node.input):
            dequantize = producers.get(name)
            if dequantize is not None and dequantize.op_type == "DequantizeLinear":
                weight = _onnx().numpy_helper.to_array(fp32_values[source.input[position]])
                if scale is not None:
                    weight = _unscale_weight(node.op_type, weight, scale)
                node.input[position] = _add_initializer(graph, f"{node.name}/float/{position}", weight)
        _restore_bias(graph, node, original, fp32_values, initializers)
        _bypass_output_quantization(graph, node)
    _drop_unused(graph)
    return model


def float_outside_policy(model: onnx.ModelProto, quantizable) -> onnx.ModelProto:
    """ONNX Runtime quantizes a tensor once for all its consumers: a LayerNorm output feeding both a quantized
    projection and the grouping assignment's k_proj reaches the assignment through Q/DQ too. Nodes the policy
    keeps float read the float tensor again."""
    allowed = set(quantizable)
    producers = {output: node for node in model.graph.node for output in node.output}
    for node in model.graph.node:
        if node.name not in allowed and node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            _read_float_activations(node, producers)
    _drop_unused(model.graph)
    return model


def _read_float_activations(node, producers) -> list[int]:
    """Point each input `node` reads through QuantizeLinear → DequantizeLinear at the float tensor the pair
    quantizes; the positions it changed. (Weights, whose DequantizeLinear reads an initializer, stay.)"""
    changed = []
    for position, name in enumerate(node.input):
        dequantize = producers.get(name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        quantize_node = producers.get(dequantize.input[0])
        if quantize_node is not None and quantize_node.op_type == "QuantizeLinear":
            node.input[position] = quantize_node.input[0]
            changed.append(position)
    return changed


def _bypass_output_quantization(graph, node) -> None:
    """ONNX Runtime's QDQ form also quantizes a product's output: consumers read it unquantized again."""
    for output in node.output:
        quantizers = [q.output[0] for q in graph.node if q.op_type == "QuantizeLinear" and q.input[0] == output]
        dequantized = {dq.output[0] for dq in graph.node
                       if dq.op_type == "DequantizeLinear" and dq.input[0] in quantizers}
        for consumer in graph.node:
            for position, name in enumerate(consumer.input):
                if name in dequantized:
                    consumer.input[position] = output


def _smooth_quant_scale(tensor: str, original_tensor: str, producers, initializers) -> np.ndarray | None:
    """The per-channel factor a quantizer multiplied `original_tensor` by to make `tensor` (SmoothQuant), or None
    when the node reads the original activation."""
    if tensor == original_tensor:
        return None
    multiply = producers.get(tensor)
    if multiply is None or multiply.op_type != "Mul" or original_tensor not in multiply.input:
        raise RuntimeError(f"cannot undo the quantizer's change of {original_tensor} into {tensor}")
    other = next(name for name in multiply.input if name != original_tensor)
    return _onnx().numpy_helper.to_array(initializers[other]).reshape(-1)


def _unscale_weight(op_type: str, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if op_type == "MatMul":                  # x·a @ (W / a) = x @ W, W: [in, out]
        return (weight / scale[:, None]).astype(weight.dtype)
    if op_type == "Conv":                    # input channels are axis 1
        return (weight / scale.reshape(1, -1, *([1] * (weight.ndim - 2)))).astype(weight.dtype)
    raise RuntimeError(f"cannot undo SmoothQuant on a {op_type} node")


def _restore_bias(graph, node, original, fp32_values, initializers) -> None:
    """Bias correction changes the constant added after a quantized product; float gets fp32's back."""
    for consumer in graph.node:
        if consumer.op_type != "Add" or node.output[0] not in consumer.input or consumer.name not in original:
            continue
        for position, name in enumerate(consumer.input):
            reference = original[consumer.name].input[position]
            if name in initializers and reference in fp32_values:
                value = _onnx().numpy_helper.to_array(fp32_values[reference])
                consumer.input[position] = _add_initializer(graph, f"{consumer.name}/float/{position}", value)


def _add_initializer(graph, name: str, value: np.ndarray) -> str:
    graph.initializer.append(_onnx().numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def _drop_unused(graph) -> None:
    """Remove nodes none of whose outputs are used (repeatedly), then initializers nothing reads."""
    outputs = {output.name for output in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(output in used for output in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | outputs
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
