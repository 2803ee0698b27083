"""The rules of `checks.tensorrt`, one function per rule, over one ONNX graph's facts (`Graph`); each finding goes
to `add(severity, rule, node, message)`. The module docstring of `checks.tensorrt` gives every rule's source."""
from __future__ import annotations

import functools
import re

import numpy as np

from ..imports import require

OPSET_RANGE = (9, 20)                     # [OPS] header: "... inclusive range of opset 9 to opset 20"
_TYPE_ALIASES = {"INF64": "INT64"}        # [OPS] ConstantOfShape lists 'INF64', a typo kept verbatim in the data
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_PASS_THROUGH = ("Identity", "Cast")
_DEQUANTIZABLE = ("INT8", "FP8", "INT4")    # [OPS] DequantizeLinear's types
_CONSTANT_RESTRICTION = re.compile(r"`(\w+)`(?: input)? must be (?:an initializer|a constant tensor|"
                                   r"a build-time constant)")
_ONLY_FIRST_OUTPUT = ("Only the first output", "`Indices` output tensor unsupported")


def _supported_types(entry: dict) -> set[str]:
    return {_TYPE_ALIASES.get(name, name) for name in entry.get("types", [])}


def import_onnx():
    return require("onnx", "export", what="checking graphs for TensorRT")


class Graph:
    """One ONNX graph with what the rules ask of it: dtypes and shapes of every tensor, constants, producers."""

    def __init__(self, model):
        onnx = import_onnx()
        self.model = model
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
        except Exception:   # a graph shape inference cannot handle still gets every check that needs no types
            inferred = model.graph
        self.types, self.shapes = {}, {}
        for value in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type:
                self.types[value.name] = tensor_type.elem_type
            if tensor_type.HasField("shape"):
                self.shapes[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                           for d in tensor_type.shape.dim]
        self.constants = {}
        for init in self.graph.initializer:
            self.types[init.name] = init.data_type
            self.shapes[init.name] = list(init.dims)
            self.constants[init.name] = init
        for node in self.graph.node:
            if node.op_type == "Constant" and node.output:
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.constants[node.output[0]] = value
                    self.types[node.output[0]] = value.data_type
                    self.shapes[node.output[0]] = list(value.dims)
        self._to_array = onnx.numpy_helper.to_array
        self.producers = {out: node for node in self.graph.node for out in node.output if out}
        self.consumers = {}
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    def value(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else self._to_array(tensor)

    def is_constant(self, name: str) -> bool:
        """An initializer, a Constant output, or a Q/DQ, Identity or Cast of one (quantized weights; the parser
        looks through Identity and Cast to find constants)."""
        if name in self.constants:
            return True
        producer = self.producers.get(name)
        return producer is not None and producer.op_type in _QDQ + _PASS_THROUGH and \
            self.is_constant(producer.input[0])


def _type_name(elem_type: int) -> str:
    tensor_proto = import_onnx().TensorProto
    names = {tensor_proto.FLOAT: "FP32", tensor_proto.FLOAT16: "FP16", tensor_proto.BFLOAT16: "BF16",
             tensor_proto.INT32: "INT32", tensor_proto.INT64: "INT64", tensor_proto.INT8: "INT8",
             tensor_proto.UINT8: "UINT8", tensor_proto.BOOL: "BOOL", tensor_proto.DOUBLE: "DOUBLE"}
    for fp8 in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"):
        if hasattr(tensor_proto, fp8):
            names[getattr(tensor_proto, fp8)] = "FP8"
    if hasattr(tensor_proto, "INT4"):
        names[tensor_proto.INT4] = "INT4"
    return names.get(elem_type, tensor_proto.DataType.Name(elem_type))


def _node_name(node, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"



def apply_rules(g: Graph, table: dict, target: str, dynamic_axes: tuple[str, ...], add) -> None:
    """Every rule, in the order the module docstring of checks.tensorrt lists them."""
    _check_opset(g, add)
    _check_operators(g, table, add)
    _check_dtypes(g, table, add)
    _check_io(g, dynamic_axes, add)
    _check_qdq(g, target, add)
    _check_fp16_precision(g, add)


def _check_opset(g: Graph, add) -> None:
    low, high = OPSET_RANGE
    if g.opset is not None and not low <= g.opset <= high:
        add("warning", "opset", None, f"opset {g.opset} is outside opset {low}..{high}, the range the TensorRT 10.3 "
                                      f"operator table documents: the parser takes it, but an op whose meaning "
                                      f"changed outside that range may fail to parse; the toolkit exports 17 (19 "
                                      f"for FP16 Q/DQ scales)")


def _check_operators(g: Graph, table: dict, add) -> None:
    for index, node in enumerate(g.graph.node):
        name = _node_name(node, index)
        if node.domain not in ("", "ai.onnx"):
            add("error", "operator", name, f"{node.domain}::{node.op_type} is not an ONNX operator: the TensorRT "
                                           f"10.3 parser would need a plugin for it")
            continue
        entry = table.get(node.op_type)
        if entry is None or not entry["supported"]:
            status = "not in" if entry is None else "marked unsupported in"
            add("error", "operator", name, f"{node.op_type} is {status} the TensorRT 10.3 ONNX parser's operator "
                                           f"table (onnx-tensorrt docs/operators.md, release/10.3-GA)")
            continue
        restriction = entry.get("restrictions", "")
        for input_name in _CONSTANT_RESTRICTION.findall(restriction):
            position = _input_position(node, input_name, g.opset)
            if position is not None and position < len(node.input) and node.input[position] \
                    and not g.is_constant(node.input[position]):
                add("error", "constant-input", name, f"{node.op_type}'s `{input_name}` input is computed at run "
                                                     f"time; TensorRT 10.3 requires: {restriction}")
        if any(text in restriction for text in _ONLY_FIRST_OUTPUT) and any(node.output[1:]):
            add("error", "extra-output", name, f"{node.op_type} uses more than its first output; TensorRT 10.3: "
                                               f"{restriction}")


@functools.cache
def _schema(op_type: str, opset: int | None):
    onnx = import_onnx()
    try:
        return onnx.defs.get_schema(op_type, opset or onnx.defs.onnx_opset_version(), "")
    except Exception:   # SchemaError: an op the installed onnx does not know; the operator rule speaks for it
        return None


def _input_position(node, input_name: str, opset: int | None) -> int | None:
    schema = _schema(node.op_type, opset)
    if schema is None:
        return None
    names = [formal.name for formal in schema.inputs]
    return names.index(input_name) if input_name in names else None


def _main_type_tensors(node, opset: int | None) -> list[str]:
    """The node's tensors bound to its main type variable: what the table's "Supported Types" column is about.

    The main variable is the output's when it also types an input (Where's T, not its condition B); otherwise the
    first input's (Equal's T, Cast's T1). Auxiliary inputs of fixed or other types (axes, shape, indices) are not.
    """
    schema = _schema(node.op_type, opset)
    if schema is None:
        return []
    formal_inputs = [formal.type_str for formal in schema.inputs]
    formal_outputs = [formal.type_str for formal in schema.outputs]
    if formal_outputs and not formal_outputs[0].startswith("tensor(") and formal_outputs[0] in formal_inputs:
        main = formal_outputs[0]
    elif formal_inputs:
        main = formal_inputs[0]
    elif formal_outputs:
        main = formal_outputs[0]
    else:
        return []

    def bound(names, formals):
        if not formals:
            return []
        return [name for i, name in enumerate(names) if name and formals[min(i, len(formals) - 1)] == main]

    return bound(node.input, formal_inputs) + bound(node.output, formal_outputs)


def _check_dtypes(g: Graph, table: dict, add) -> None:
    for index, node in enumerate(g.graph.node):
        entry = table.get(node.op_type)
        if node.op_type in _QDQ or entry is None or not entry["supported"] or node.domain not in ("", "ai.onnx"):
            continue
        allowed = _supported_types(entry)
        reported = set()
        for tensor in _main_type_tensors(node, g.opset):
            if tensor not in g.types:
                continue
            type_name = _type_name(g.types[tensor])
            if type_name in allowed or type_name in reported:
                continue
            reported.add(type_name)
            name = _node_name(node, index)
            listed = ", ".join(entry["types"])
            if type_name == "DOUBLE":
                add("warning", "dtype", name, f"{node.op_type} on DOUBLE tensor {tensor}: TensorRT 10.3 casts "
                                              f"DOUBLE down to FLOAT, clamping to ±FLT_MAX")
            elif type_name == "INT64":
                add("error", "dtype", name, f"{node.op_type} on INT64 tensor {tensor}: the TensorRT 10.3 parser "
                                            f"supports {node.op_type} only for {listed} and no longer casts INT64 "
                                            f"to INT32; cast to a supported type before it")
            else:
                add("error", "dtype", name, f"{node.op_type} on {type_name} tensor {tensor}: TensorRT 10.3 "
                                            f"supports {node.op_type} only for {listed}")


def _check_io(g: Graph, dynamic_axes: tuple[str, ...], add) -> None:
    initializers = {init.name for init in g.graph.initializer}
    for kind, values in (("input", g.graph.input), ("output", g.graph.output)):
        for value in values:
            if value.name in initializers:
                continue   # IR < 4 lists initializers as inputs; they are weights, not bindings
            tensor_type = value.type.tensor_type
            type_name = _type_name(tensor_type.elem_type) if tensor_type.elem_type else None
            if type_name == "INT64":
                add("warning", "io-dtype", value.name,
                    f"graph {kind} {value.name} is INT64: TensorRT ≥ 9 binds it as INT64 (8.x bound INT32); "
                    f"this toolkit's graphs take int32 token ids")
            elif type_name in ("INT8", "FP8", "INT4"):
                add("error", "io-dtype", value.name,
                    f"graph {kind} {value.name} is {type_name}: TensorRT 10.3 takes quantized types only through "
                    f"quantization from a higher-precision float inside the graph")
            elif type_name == "DOUBLE":
                add("warning", "io-dtype", value.name, f"graph {kind} {value.name} is DOUBLE: TensorRT casts it "
                                                       f"down to FLOAT")
            elif type_name not in (None, "FP32", "FP16", "BF16", "INT32", "UINT8", "BOOL"):
                add("error", "io-dtype", value.name, f"graph {kind} {value.name} is {type_name}, a type TensorRT "
                                                     f"10.3 does not bind")
            if not tensor_type.HasField("shape"):
                add("error", "shape", value.name, f"graph {kind} {value.name} has no shape: TensorRT needs its "
                                                  f"rank; re-export with shapes")
                continue
            for axis, dim in enumerate(tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    continue
                if axis == 0 and dim.dim_param in dynamic_axes:
                    continue
                what = f"dynamic dimension '{dim.dim_param}'" if dim.dim_param else "an unknown dimension"
                add("error", "shape", value.name,
                    f"graph {kind} {value.name} has {what} at axis {axis}: only axis 0, the profiled "
                    f"{'/'.join(dynamic_axes)} axis, may vary; re-export with a fixed --image-size")


def _check_qdq(g: Graph, target: str, add) -> None:
    nodes = [(index, node) for index, node in enumerate(g.graph.node) if node.op_type in _QDQ]
    if nodes and target == "trt-fp16":
        add("warning", "qdq-dtype", None, f"{len(nodes)} Q/DQ nodes in a graph for trt-fp16: TensorRT would run "
                                          f"them in INT8; build trt-int8 from this graph or fp16 from the float one")
    for index, node in nodes:
        name = _node_name(node, index)
        _check_qdq_node(g, node, name, add)
        if node.op_type == "QuantizeLinear":
            _check_qdq_pair(g, node, name, add)


def _check_qdq_node(g: Graph, node, name: str, add) -> None:
    data, scale_name = node.input[0], node.input[1] if len(node.input) > 1 else ""
    zero_point_name = node.input[2] if len(node.input) > 2 else ""
    data_type = _type_name(g.types[data]) if data in g.types else None
    producer = g.producers.get(data)
    if node.op_type == "DequantizeLinear" and producer is not None and producer.op_type == "QuantizeLinear":
        data_type = None   # the parser's Q layer outputs INT8 (or FP8/INT4) whatever ONNX infers; the Q is checked
    if node.op_type == "DequantizeLinear" and data_type == "UINT8":
        add("error", "qdq-dtype", name, "DequantizeLinear of UINT8 data: the TensorRT 10.3 parser rejects UINT8 "
                                        "Q/DQ inputs; quantize to signed INT8")
    elif node.op_type == "DequantizeLinear" and data_type not in (None,) + _DEQUANTIZABLE:
        add("error", "qdq-dtype", name, f"DequantizeLinear of {data_type} data: TensorRT 10.3 dequantizes only "
                                        f"{', '.join(_DEQUANTIZABLE)} (an INT32 bias is quantized for ONNX Runtime, "
                                        f"not TensorRT); keep that tensor float")
    if node.op_type == "QuantizeLinear" and data_type not in (None, "FP32", "FP16", "BF16"):
        add("error", "qdq-dtype", name, f"QuantizeLinear of {data_type} data: TensorRT 10.3 quantizes only FP32, "
                                        f"FP16 or BF16")
    if not scale_name:
        add("error", "qdq-scale", name, f"{node.op_type} has no scale: the TensorRT 10.3 parser needs at least 2 "
                                        f"inputs")
        return
    zero_point = None
    if zero_point_name:
        zero_type = _type_name(g.types[zero_point_name]) if zero_point_name in g.types else None
        if zero_type == "UINT8" and node.op_type == "QuantizeLinear":
            add("error", "qdq-dtype", name, "QuantizeLinear zero point is UINT8: TensorRT's explicit quantization "
                                            "is signed INT8 (the parser rejects a UINT8 QuantizeLinear zero "
                                            "point); quantize with signed INT8 (QInt8)")
        elif zero_type == "UINT8":
            add("warning", "qdq-dtype", name, "DequantizeLinear zero point is UINT8: the parser uses INT8 instead "
                                              "(it warns); quantize with signed INT8 (QInt8)")
        elif zero_type not in (None, "INT8"):
            add("warning", "qdq-dtype", name, f"{node.op_type} zero point is {zero_type}, not INT8: this is not "
                                              f"the INT8 explicit quantization trt-int8 builds")
        zero_point = g.value(zero_point_name)
        if zero_point is None:
            add("warning", "qdq-zero-point", name, f"{node.op_type} zero point {zero_point_name} is computed at run "
                                                   f"time: nothing can verify it is 0 before the build")
        elif np.any(zero_point != 0):
            add("error", "qdq-zero-point", name, f"{node.op_type} zero point is not 0 (asymmetric quantization): "
                                                 f"TensorRT supports only symmetric quantization, zero point 0")
    scale = g.value(scale_name)
    if scale is None:
        add("error", "qdq-scale", name, f"{node.op_type} scale {scale_name} is computed at run time: TensorRT "
                                        f"needs Q/DQ scales that are build-time constants; make it an initializer")
        return
    if scale.size == 0 or not np.all(scale > 0):
        add("error", "qdq-scale", name, f"{node.op_type} scale has non-positive values: TensorRT requires every "
                                        f"scale coefficient to be positive")
    if zero_point is not None and zero_point.size != scale.size:
        add("error", "qdq-zero-point", name, f"{node.op_type} zero point has {zero_point.size} values and scale "
                                             f"{scale.size}: TensorRT requires the same volume")
    if scale.size > 1:
        _check_axis(g, node, name, data, scale, add)


def _check_axis(g: Graph, node, name: str, data: str, scale: np.ndarray, add) -> None:
    """Per-channel Q/DQ: an explicit axis, in range for the data's rank, with one scale per channel there."""
    shape = g.shapes.get(data)
    rank = len(shape) if shape is not None else None
    axis = next((a.i for a in node.attribute if a.name == "axis"), None)
    if scale.ndim > 1 and scale.ndim != rank:
        add("error", "qdq-axis", name, f"{node.op_type} scale has rank {scale.ndim}; TensorRT takes a 1-D "
                                       f"(per-channel) or input-rank (blocked) scale")
        return
    if scale.ndim > 1:
        quantized = _quantized_type(g, node, data)
        if quantized != "INT4":
            add("error", "qdq-axis", name, f"{node.op_type} has blocked scales (rank {scale.ndim}) on "
                                           f"{quantized or 'an unknown type'}: TensorRT 10.3 block-quantizes INT4 "
                                           f"weights only; use per-channel (1-D) scales for INT8")
        return   # blocked INT4 weights: the parser infers the block size itself
    if axis is None:
        add("error", "qdq-axis", name, f"per-channel {node.op_type} without an axis attribute: ONNX then means "
                                       f"axis 1 but the TensorRT parser uses axis 0; set axis explicitly")
        return
    if rank is not None:
        if not -rank <= axis < rank:
            add("error", "qdq-axis", name, f"{node.op_type} axis {axis} is out of range for rank-{rank} tensor "
                                           f"{data}")
            return
        channels = shape[axis % rank]
        if isinstance(channels, int) and channels > 0 and channels != scale.size:
            add("error", "qdq-axis", name, f"{node.op_type} axis {axis} of {data} {shape} has {channels} channels "
                                           f"but {scale.size} scales: TensorRT requires one scale per channel")
    if not g.is_constant(data):
        add("error", "qdq-axis", name, f"per-channel {node.op_type} of activation {data}: TensorRT quantizes "
                                       f"activations per tensor only (the parser assumes per-channel scales "
                                       f"belong to weights); give it one scale")


def _quantized_type(g: Graph, node, data: str) -> str | None:
    """The integer/FP8 type a Q/DQ works in: a DQ's input, or a Q's zero point (its output type)."""
    if node.op_type == "DequantizeLinear":
        return _type_name(g.types[data]) if data in g.types else None
    zero_point = node.input[2] if len(node.input) > 2 else ""
    output_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
    if zero_point and zero_point in g.types:
        return _type_name(g.types[zero_point])
    return _type_name(output_dtype) if output_dtype else "INT8"    # ONNX's default is UINT8, the parser's INT8


def _check_qdq_pair(g: Graph, node, name: str, add) -> None:
    scale = g.value(node.input[1])
    for consumer in g.consumers.get(node.output[0], []):
        if consumer.op_type != "DequantizeLinear":
            add("warning", "qdq-pair", name, f"QuantizeLinear output feeds {consumer.op_type} "
                                             f"{consumer.name or ''}, not a DequantizeLinear: TensorRT expects Q/DQ "
                                             f"pairs around the quantized op")
            continue
        their_scale = g.value(consumer.input[1])
        if scale is not None and their_scale is not None and (
                scale.shape != their_scale.shape or not np.allclose(scale, their_scale)):
            add("warning", "qdq-pair", name, f"QuantizeLinear and its DequantizeLinear {consumer.name} use "
                                             f"different scales: the pair is not a plain fake-quantization")


def _check_fp16_precision(g: Graph, add) -> None:
    float16 = import_onnx().TensorProto.FLOAT16
    for index, node in enumerate(g.graph.node):
        if node.op_type in ("LayerNormalization", "Softmax") and g.types.get(node.input[0]) == float16:
            add("warning", "fp16-precision", _node_name(node, index),
                f"{node.op_type} computes in FP16: TensorRT warns that LayerNorm after self-attention may overflow "
                f"in FP16; the precision policy keeps it in float32")
