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
from dataclasses import dataclass, field
from pathlib import Path

from ..artifact import read_manifest
from ..errors import UserError
from ..runtimes.tensorrt.build import TRT_TARGETS
from .tensorrt_rules import Graph, apply_rules, import_onnx

DYNAMIC_AXES = ("batch", "classes")       # the manifest's profiled axis names (image, text)
OPERATOR_TABLE = Path(__file__).resolve().parents[1] / "exporters" / "data" / "onnx_tensorrt_10_3_operators.json"
TENSORRT_VERSION = "10.3"


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


def check_graph(model, target: str = "trt-fp16", *, graph: str | None = None,
                dynamic_axes=DYNAMIC_AXES) -> Report:
    """Check one ONNX graph (a path or a ModelProto) against TensorRT 10.3; see the module docstring."""
    if target not in TRT_TARGETS:
        raise UserError(f"--target {target!r} is not a TensorRT target: use one of {', '.join(TRT_TARGETS)}")
    onnx = import_onnx()
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

    apply_rules(Graph(model), operator_table()["operators"], target, tuple(dynamic_axes), add)
    return report


def check_manifest(manifest, target: str) -> Report:
    """Every ONNX graph a manifest names, each with the dynamic axis names its manifest record declares."""
    report = Report(target)
    precision = manifest.precision
    backends = precision.backends
    if backends and "tensorrt" not in backends:
        # Said first, so the user reads the cause before the per-node findings it explains.
        report.findings.append(Finding(
            "error", "artifact", None,
            f"this {precision.target} artifact is made for {', '.join(backends)} only; TensorRT builds "
            f"from the fp32 (`--target onnx`), fp16 or QDQ INT8 (`--target onnx-int8`) graphs", graph=None))
    for graph_name, record in manifest.graphs.items():
        if record.format != "onnx":
            continue
        declared = {spec["shape"][0] for spec in record.inputs + record.outputs
                    if spec.get("shape") and isinstance(spec["shape"][0], str)}
        report.merge(check_graph(manifest.graph_path(graph_name), target, graph=record.file,
                                 dynamic_axes=tuple(declared) or DYNAMIC_AXES))
    if not report.graphs:
        raise UserError(f"{manifest.directory} holds no ONNX graphs to check: re-run `groupvit-edge export`")
    return report


def check_artifact(artifact_dir, target: str) -> Report:
    """Both graphs of an artifact directory (`groupvit-edge doctor --artifact DIR --target trt-fp16`)."""
    return check_manifest(read_manifest(artifact_dir), target)
