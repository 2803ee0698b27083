"""Will TensorRT 10.3 (JetPack 6) take these ONNX graphs? Checked from the graphs alone, without TensorRT.

    report = check_artifact("artifacts/int8", "trt-int8")
    report.ok, report.errors, print(report.format())

The sources are data, not memory:
- [OPS] onnx-tensorrt `docs/operators.md` at tag release/10.3-GA (branch 10.3-GA, commit 62bdde2a), kept
  verbatim with its provenance in `groupvit_edge/exporters/data/onnx_tensorrt_10_3_operators.json`: the operator
  table, per-op type lists (DequantizeLinear: INT8, FP8, INT4) and restrictions, the opset range of its header,
  the notes on DOUBLE/UINT8/INT8 and the INT64 changelog.
- [QDQ] onnx-tensorrt `onnxOpImporters.cpp` at the same commit, `QuantDequantLinearHelper`: UINT8 data and UINT8
  Quantize zero points rejected, "TensorRT only supports symmetric quantization", "Scale coefficients must all be
  positive", scale/zero-point volumes equal, the axis normalised (absent: 0 for per-channel) and checked against
  the channel count, and "We assume this is weight-quantization ... Activations-quantization does not support
  per-axis quantization". [MODEL] `ModelImporter.cpp` there only warns about opsets (below 7), it never refuses one.
- [OP-DOC] TensorRT's Dequantize operator page (8.6): "The scale tensor must be a build-time constant"; the 10.0
  release notes: block quantization is INT4 weight-only quantization.

Rules (each finding names its rule; `error` means the 10.3 parser or builder rejects it, `warning` means it
builds but is a trap):
- operator: every node's op is in the 10.3 table and marked supported; other domains would need plugins.
- opset: a default-domain opset outside the header's range (9..20; the 10.3 header still says "TensorRT 10.0") is
  a warning: [MODEL] parses it, and ops whose semantics changed after 20 may then fail.
- constant-input: an input that a restriction requires constant ("`axes` must be an initializer", "... a constant
  tensor", "... a build-time constant") is an initializer or a Constant output.
- extra-output: LayerNormalization uses only `Y`, MaxPool no `Indices` (their restrictions).
- dtype: the tensors bound to an op's main type variable have a type its 10.3 type list names. INT64 is the case
  that matters, decided like this:
    * error: INT64 at an op whose 10.3 type list lacks INT64 (MatMul, Gemm, Conv, Softmax, LayerNormalization,
      Erf, Sqrt, Pow, Clip, Resize, …): the parser rejects it. Since 9.0 "the ONNX parser no longer
      automatically casts INT64 to INT32" (Changelog), so nothing rescues it.
    * warning: INT64 graph inputs/outputs. 10.3 accepts them but "ONNX models with INT64 I/O require INT64
      bindings" (Changelog, 9.0 breaking change) where TensorRT 8.x bound INT32, and the artifact contract of this
      toolkit is int32 token ids; the runtime binds whatever the engine reports, so this is a portability note.
    * not flagged: INT64 in shape arithmetic (Shape, Gather, Concat, Reshape, Unsqueeze, Slice, Equal, Where,
      Expand, Range: all list INT64 in 10.3) and INT64 auxiliary inputs (axes, shape, indices, pads: their own
      ONNX type, not the op's main type). The toolkit's graphs hold hundreds of these.
  DOUBLE is a warning ("TensorRT will attempt to cast DOUBLE down to FLOAT"); UINT8 only at graph I/O.
- io-dtype: INT8/FP8/INT4 graph I/O is an error ("support is available only through quantization from a
  floating-point type with higher precision").
- shape: graph inputs/outputs are static except axis 0 named as the manifest's dynamic axis ("batch" for the
  image graph, "classes" for the text graph), the one dimension the engine's optimization profile covers.
- qdq-dtype, qdq-zero-point, qdq-scale, qdq-axis, qdq-pair: the explicit-quantization form of [QDQ] and [OP-DOC].
  Errors: DequantizeLinear of INT32 (or any type but INT8/FP8/INT4) data, a scale computed at run time, a
  per-channel Q/DQ of an activation, a per-channel Q/DQ without an `axis` attribute (ONNX defaults the axis to 1,
  the parser to 0), blocked scales on anything but INT4, a UINT8 QuantizeLinear zero point. Warnings: a UINT8
  DequantizeLinear zero point (the parser uses INT8 and warns), a zero point computed at run time, a Q whose DQ
  has another scale.
- fp16-precision: LayerNormalization/Softmax computed in FP16 (warning; TensorRT warns that LayerNorm after
  self-attention may overflow in FP16).

Not checked: the remaining restriction texts (Resize modes, pooling dilations, TopK's K, …; none of these ops is
in the toolkit's graphs), plugin availability, and anything the builder decides per GPU.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..imports import require

DYNAMIC_AXES = ("batch", "classes")       # the manifest's profiled axis names (image, text)
OPERATOR_TABLE = Path(__file__).resolve().parents[1] / "exporters" / "data" / "onnx_tensorrt_10_3_operators.json"
OPSET_RANGE = (9, 20)                     # [OPS] header: "... inclusive range of opset 9 to opset 20"
TENSORRT_VERSION = "10.3"
_TYPE_ALIASES = {"INF64": "INT64"}        # [OPS] ConstantOfShape lists 'INF64', a typo kept verbatim in the data
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_PASS_THROUGH = ("Identity", "Cast")
_DEQUANTIZABLE = ("INT8", "FP8", "INT4")    # [OPS] DequantizeLinear's types
_CONSTANT_RESTRICTION = re.compile(r"`(\w+)`(?: input)? must be (?:an initializer|a constant tensor|"
                                   r"a build-time constant)")
_ONLY_FIRST_OUTPUT = ("Only the first output", "`Indices` output tensor unsupported")


@dataclass(frozen=True)
class Finding:
    severity: str          # "error" | "warning"
    rule: str
    node: str | None       # node or tensor the finding is about
    message: str
    graph: str | None = None

    def __str__(self) -> str:
        where = ":".join(part for part in (self.graph, self.node) if part)
        return f"{self.severity}: [{self.rule}] {where + ': ' if where else ''}{self.message}"


@dataclass
class Report:
    target: str
    graphs: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def rules(self, severity: str = "error") -> set[str]:
        return {f.rule for f in self.findings if f.severity == severity}

    def merge(self, other: Report) -> Report:
        self.graphs += other.graphs
        self.findings += other.findings
        return self

    def summary(self) -> str:
        verdict = "ready" if self.ok else "NOT ready"
        return (f"TensorRT {TENSORRT_VERSION} readiness for {self.target} of {', '.join(self.graphs)}: {verdict} "
                f"({len(self.errors)} errors, {len(self.warnings)} warnings)")

    def format(self, limit: int = 20) -> str:
        ordered = self.errors + self.warnings
        lines = [self.summary()] + [f"  {finding}" for finding in ordered[:limit]]
        if len(ordered) > limit:
            lines.append(f"  … and {len(ordered) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"target": self.target, "tensorrt": TENSORRT_VERSION, "graphs": self.graphs, "ok": self.ok,
                "findings": [vars(f) for f in self.findings]}


@functools.lru_cache(maxsize=1)
def operator_table() -> dict:
    """The onnx-tensorrt 10.3 operator table with its source (see the JSON's `source` for provenance)."""
    return json.loads(OPERATOR_TABLE.read_text())


def _supported_types(entry: dict) -> set[str]:
    return {_TYPE_ALIASES.get(name, name) for name in entry.get("types", [])}


def _import_onnx():
    return require("onnx", "export", what="checking graphs for TensorRT")


class _Graph:
    """One ONNX graph with what the rules ask of it: dtypes and shapes of every tensor, constants, producers."""

    def __init__(self, model):
        onnx = _import_onnx()
        from onnx import numpy_helper
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
        self._to_array = numpy_helper.to_array
        self.producers = {out: node for node in self.graph.node for out in node.output if out}
        self.consumers: dict[str, list] = {}
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
    from onnx import TensorProto
    names = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
             TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.INT8: "INT8",
             TensorProto.UINT8: "UINT8", TensorProto.BOOL: "BOOL", TensorProto.DOUBLE: "DOUBLE"}
    for fp8 in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"):
        if hasattr(TensorProto, fp8):
            names[getattr(TensorProto, fp8)] = "FP8"
    if hasattr(TensorProto, "INT4"):
        names[TensorProto.INT4] = "INT4"
    return names.get(elem_type, TensorProto.DataType.Name(elem_type))


def _node_name(node, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def check_graph(model, target: str = "trt-fp16", *, graph: str | None = None,
                dynamic_axes=DYNAMIC_AXES) -> Report:
    """Check one ONNX graph (a path or a ModelProto) against TensorRT 10.3; see the module docstring."""
    from ..exporters.tensorrt import TRT_TARGETS
    if target not in TRT_TARGETS:
        raise UserError(f"--target {target!r} is not a TensorRT target: use one of {', '.join(TRT_TARGETS)}")
    onnx = _import_onnx()
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise UserError(f"{path} does not exist: pass an ONNX file or an artifact directory")
        graph = graph or path.name
        model = onnx.load(str(path))
    report = Report(target, [graph or model.graph.name or "graph"])
    name = report.graphs[0]

    def add(severity, rule, node, message):
        report.findings.append(Finding(severity, rule, node, message, name))

    g = _Graph(model)
    table = operator_table()["operators"]
    _check_opset(g, add)
    _check_operators(g, table, add)
    _check_dtypes(g, table, add)
    _check_io(g, tuple(dynamic_axes), add)
    _check_qdq(g, target, add)
    _check_fp16_precision(g, add)
    return report


def check_manifest(manifest, target: str) -> Report:
    """Every ONNX graph a manifest names, each with the dynamic axis names its manifest record declares."""
    report = Report(target)
    precision = manifest.data.get("precision", {})
    backends = precision.get("backends")
    if backends and "tensorrt" not in backends:
        # Said first, so the user reads the cause before the per-node findings it explains.
        report.findings.append(Finding(
            "error", "artifact", None,
            f"this {precision.get('target', '?')} artifact is made for {', '.join(backends)} only; TensorRT builds "
            f"from the fp32 (`--target onnx`), fp16 or QDQ INT8 (`--target onnx-int8`) graphs", graph=None))
    for graph_name, record in manifest.graphs.items():
        if record.get("format") != "onnx":
            continue
        declared = {spec["shape"][0] for spec in record.get("inputs", []) + record.get("outputs", [])
                    if spec.get("shape") and isinstance(spec["shape"][0], str)}
        report.merge(check_graph(manifest.graph_path(graph_name), target, graph=record["file"],
                                 dynamic_axes=tuple(declared) or DYNAMIC_AXES))
    if not report.graphs:
        raise UserError(f"{manifest.directory} holds no ONNX graphs to check: re-run `groupvit-edge export`")
    return report


def check_artifact(artifact_dir, target: str) -> Report:
    """Both graphs of an artifact directory (`groupvit-edge doctor --artifact DIR --target trt-fp16`)."""
    from ..artifact import read_manifest
    return check_manifest(read_manifest(artifact_dir), target)


# ------------------------------------------------------------------------------------------------------- rules

def _check_opset(g: _Graph, add) -> None:
    low, high = OPSET_RANGE
    if g.opset is not None and not low <= g.opset <= high:
        add("warning", "opset", None, f"opset {g.opset} is outside opset {low}..{high}, the range the TensorRT 10.3 "
                                      f"operator table documents: the parser takes it, but an op whose meaning "
                                      f"changed outside that range may fail to parse; the toolkit exports 17 (19 "
                                      f"for FP16 Q/DQ scales)")


def _check_operators(g: _Graph, table: dict, add) -> None:
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
    import onnx
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


def _check_dtypes(g: _Graph, table: dict, add) -> None:
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


def _check_io(g: _Graph, dynamic_axes: tuple[str, ...], add) -> None:
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


def _check_qdq(g: _Graph, target: str, add) -> None:
    nodes = [(index, node) for index, node in enumerate(g.graph.node) if node.op_type in _QDQ]
    if nodes and target == "trt-fp16":
        add("warning", "qdq-dtype", None, f"{len(nodes)} Q/DQ nodes in a graph for trt-fp16: TensorRT would run "
                                          f"them in INT8; build trt-int8 from this graph or fp16 from the float one")
    for index, node in nodes:
        name = _node_name(node, index)
        _check_qdq_node(g, node, name, add)
        if node.op_type == "QuantizeLinear":
            _check_qdq_pair(g, node, name, add)


def _check_qdq_node(g: _Graph, node, name: str, add) -> None:
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


def _check_axis(g: _Graph, node, name: str, data: str, scale: np.ndarray, add) -> None:
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


def _quantized_type(g: _Graph, node, data: str) -> str | None:
    """The integer/FP8 type a Q/DQ works in: a DQ's input, or a Q's zero point (its output type)."""
    if node.op_type == "DequantizeLinear":
        return _type_name(g.types[data]) if data in g.types else None
    zero_point = node.input[2] if len(node.input) > 2 else ""
    output_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
    if zero_point and zero_point in g.types:
        return _type_name(g.types[zero_point])
    return _type_name(output_dtype) if output_dtype else "INT8"    # ONNX's default is UINT8, the parser's INT8


def _check_qdq_pair(g: _Graph, node, name: str, add) -> None:
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


def _check_fp16_precision(g: _Graph, add) -> None:
    from onnx import TensorProto
    for index, node in enumerate(g.graph.node):
        if node.op_type in ("LayerNormalization", "Softmax") and g.types.get(node.input[0]) == TensorProto.FLOAT16:
            add("warning", "fp16-precision", _node_name(node, index),
                f"{node.op_type} computes in FP16: TensorRT warns that LayerNorm after self-attention may overflow "
                f"in FP16; the precision policy keeps it in float32")
