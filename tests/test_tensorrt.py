"""TensorRT: the readiness check of the graphs, the pure logic of engine building and running, and what an
export for a trt-* target does on a machine without TensorRT.

Tests that need TensorRT and a GPU are marked `tensorrt` and skip with the reason where those are absent
(DEVELOPERS.md); everything else runs on the real artifacts the toolkit makes, on graphs made to break each rule, and
(exports through the engine step) on recording fakes generated from the real TensorRT bindings
(tests/tensorrt_harness; tests/test_tensorrt_conformance.py checks the TensorRT calls version by version).
"""
from __future__ import annotations

import enum
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from groupvit_edge.quantization.cache import calibration_key, changed_fields
from groupvit_edge import runtimes
from groupvit_edge.artifact import MANIFEST_NAME, Preprocess, read_manifest
from groupvit_edge.quantization.calibration_set import CalibrationSet
from groupvit_edge.checks.tensorrt import check_artifact, check_graph, operator_table
from groupvit_edge.errors import UserError
from groupvit_edge.exporters import export
from groupvit_edge.exporters import tensorrt as engines
from groupvit_edge.exporters.plan import readiness_report
from groupvit_edge.runtimes import tensorrt as trt_runtime
from groupvit_edge.runtimes.tensorrt import build as trt_build
from groupvit_edge.runtimes.tensorrt import cuda as trt_cuda
from groupvit_edge.runtimes.tensorrt import install as trt_install

from conftest import CALIB_IMAGES, EVAL_IMAGES, record_file
import tensorrt_harness as harness
from tensorrt_harness.fake import TensorRTWorld, fake_tensorrt, install

TENSORRT_HERE = trt_runtime.is_installed()
requires_tensorrt = pytest.mark.skipif(
    not TENSORRT_HERE, reason="needs TensorRT ≥ 10.3 and an NVIDIA GPU")


# ------------------------------------------------------------------------------------- artifacts under test

@pytest.fixture(scope="module")
def trt_fp16_attempt(tmp_path_factory, random_checkpoint, bpe_path, coco_images):
    """`export(..., "trt-fp16")` at 224²: refused before any tracing without TensorRT, built with it."""
    root = tmp_path_factory.mktemp("trt-export")
    logs, error = [], None
    try:
        export(str(random_checkpoint), root / "trt", "trt-fp16", image_size=224, tokenizer=bpe_path,
               validation_images=EVAL_IMAGES / coco_images[0].name, log=logs.append)
    except Exception as raised:   # UserError without TensorRT; on a GPU machine the export succeeds
        error = raised
    return SimpleNamespace(root=root, error=error, logs=logs)


@pytest.fixture(scope="module")
def fp32_artifact(tmp_path_factory, random_checkpoint, bpe_path, coco_images) -> Path:
    """The fp32 artifact the trt-* targets parse their engines from, at 224²."""
    out = tmp_path_factory.mktemp("fp32") / "fp32"
    export(str(random_checkpoint), out, "onnx", image_size=224, tokenizer=bpe_path,
           validation_images=EVAL_IMAGES / coco_images[0].name, log=lambda message: None)
    return out


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, random_checkpoint, bpe_path, coco_images) -> Path:
    """A symmetric QDQ artifact from 4 COCO calibration images (ONNX Runtime's MinMax: the fast calibrator)."""
    out = tmp_path_factory.mktemp("int8") / "int8"
    export(str(random_checkpoint), out, "onnx-int8", image_size=224, tokenizer=bpe_path, calib_dir=CALIB_IMAGES,
           calib_count=4, calib_method="minmax", validation_images=EVAL_IMAGES / coco_images[0].name,
           cache_dir=tmp_path_factory.mktemp("cache"), log=lambda message: None)
    return out


# ----------------------------------------------------------------------------------- export without TensorRT

def test_trt_export_without_tensorrt_is_one_sentence_and_leaves_nothing(trt_fp16_attempt):
    if TENSORRT_HERE:
        pytest.skip("TensorRT is installed here: the export builds engines instead of refusing")
    error = trt_fp16_attempt.error
    assert isinstance(error, UserError), error        # the CLI prints it and exits 2
    message = str(error)
    assert message == trt_runtime.not_installed_message() and "\n" not in message
    assert "pip install groupvit-edge[tensorrt]" in message and "`groupvit-edge doctor`" in message
    assert list(trt_fp16_attempt.root.iterdir()) == []   # neither the artifact nor a staging directory
    assert trt_fp16_attempt.logs == []                   # refused by the plan check, before any tracing


# --------------------------------------------------------------------------- readiness on the toolkit's graphs

def test_fp32_artifact_is_ready_for_both_targets(fp32_artifact):
    for target in ("trt-fp16", "trt-int8"):
        report = check_artifact(fp32_artifact, target)
        print(report.format())
        assert report.graphs == ["image.onnx", "text.onnx"]
        assert report.ok and not report.findings, report.format()


def test_int8_artifact_is_ready_for_trt_int8(int8_artifact):
    report = check_artifact(int8_artifact, "trt-int8")
    print(report.format())
    assert report.graphs == ["image.int8.onnx", "text.onnx"] and report.ok and not report.findings
    # The same QDQ graph for trt-fp16 would run its Q/DQ in INT8: ready, with that said.
    fp16 = check_artifact(int8_artifact, "trt-fp16")
    assert fp16.ok and fp16.rules("warning") == {"qdq-dtype"}


@pytest.mark.slow
def test_nncf_int8_artifact_is_ready_for_trt_int8(tmp_path, random_checkpoint, bpe_path, coco_images):
    """The default calibrator (NNCF: negative per-channel axes, SmoothQuant scales) passes as well."""
    export(str(random_checkpoint), tmp_path / "int8", "onnx-int8", image_size=224, tokenizer=bpe_path,
           calib_dir=CALIB_IMAGES, calib_count=4, validation_images=EVAL_IMAGES / coco_images[0].name,
           cache_dir=tmp_path / "cache", log=lambda message: None)
    report = check_artifact(tmp_path / "int8", "trt-int8")
    assert report.ok and not report.findings, report.format()


@pytest.mark.slow
def test_fp16_artifact_is_ready_for_trt_fp16(tmp_path, random_checkpoint, bpe_path, coco_images):
    """The FP16 graph a strongly typed trt-fp16 build parses: LayerNorm and Softmax stay float32, no warning."""
    export(str(random_checkpoint), tmp_path / "fp16", "onnx-fp16", image_size=224, tokenizer=bpe_path,
           validation_images=EVAL_IMAGES / coco_images[0].name, log=lambda message: None)
    report = check_artifact(tmp_path / "fp16", "trt-fp16")
    assert report.graphs == ["image.fp16.onnx", "text.onnx"] and report.ok and not report.findings, report.format()


def test_dynamic_int8_artifact_is_refused_with_its_cause_first(tmp_path, random_checkpoint, bpe_path, coco_images):
    export(str(random_checkpoint), tmp_path / "dyn", "onnx-int8-dynamic", image_size=224, tokenizer=bpe_path,
           validation_images=EVAL_IMAGES / coco_images[0].name, log=lambda m: None)
    report = check_artifact(tmp_path / "dyn", "trt-int8")
    assert not report.ok and report.errors[0].rule == "artifact"
    assert "onnxruntime only" in report.errors[0].message and "--target onnx-int8" in report.errors[0].message
    assert "operator" in report.rules()      # MatMulInteger / DynamicQuantizeLinear, per node


def test_operator_table_is_data_with_its_source():
    table = operator_table()
    source = table["source"]
    assert source["repo"] == "onnx/onnx-tensorrt" and source["commit"].startswith("62bdde2a")
    assert (source["branch"], source["tag"]) == ("10.3-GA", "release/10.3-GA")   # the refs upstream names
    operators = table["operators"]
    assert operators["OneHot"]["supported"] and not operators["Unique"]["supported"]
    assert "INT64" not in operators["MatMul"]["types"] and "INT64" in operators["Gather"]["types"]


# ------------------------------------------------------------------------------ readiness on broken graphs

def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "probe", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _value(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def _qdq_activation(zero_point: np.ndarray) -> onnx.ModelProto:
    scale = numpy_helper.from_array(np.array(0.02, np.float32), "scale")
    zero = numpy_helper.from_array(zero_point, "zero_point")
    return _model([helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["q"], name="q"),
                   helper.make_node("DequantizeLinear", ["q", "scale", "zero_point"], ["y"], name="dq")],
                  [_value("x", TensorProto.FLOAT, ["batch", 4])], [_value("y", TensorProto.FLOAT, ["batch", 4])],
                  [scale, zero])


def _per_channel_weights(axis: int | None, scales: int = 8) -> onnx.ModelProto:
    """x[batch, 4] @ DQ(W int8 [4, 8]) with `scales` per-channel scales on `axis` (8 output channels: axis 1)."""
    weight = numpy_helper.from_array(np.ones((4, 8), np.int8), "weight")
    scale = numpy_helper.from_array(np.full(scales, 0.01, np.float32), "weight_scale")
    zero = numpy_helper.from_array(np.zeros(scales, np.int8), "weight_zero")
    attributes = {} if axis is None else {"axis": axis}
    return _model([helper.make_node("DequantizeLinear", ["weight", "weight_scale", "weight_zero"], ["w"],
                                    name="dq_weight", **attributes),
                   helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
                  [_value("x", TensorProto.FLOAT, ["batch", 4])], [_value("y", TensorProto.FLOAT, ["batch", 8])],
                  [weight, scale, zero])


def _errors(model, target="trt-int8", **kwargs) -> set[str]:
    report = check_graph(model, target, **kwargs)
    print(report.format())
    assert report.ok == (not report.errors)
    return report.rules("error")


def test_a_valid_probe_graph_passes():
    """The positive control for the probes below: symmetric INT8 and per-channel weights on the right axis."""
    assert _errors(_qdq_activation(np.array(0, np.int8))) == set()
    assert _errors(_per_channel_weights(axis=1)) == set()
    assert _errors(_per_channel_weights(axis=-1)) == set()


def test_unsupported_operator_fails():
    model = _model([helper.make_node("Unique", ["x"], ["y"], name="unique")],
                   [_value("x", TensorProto.FLOAT, ["batch"])], [_value("y", TensorProto.FLOAT, ["batch"])])
    assert _errors(model) == {"operator"}
    custom = _model([helper.make_node("FastGelu", ["x"], ["y"], name="gelu", domain="com.microsoft")],
                    [_value("x", TensorProto.FLOAT, ["batch"])], [_value("y", TensorProto.FLOAT, ["batch"])])
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert _errors(custom) == {"operator"}


def test_nonzero_zero_point_fails():
    assert _errors(_qdq_activation(np.array(3, np.int8))) == {"qdq-zero-point"}


def test_uint8_qdq_fails():
    report = check_graph(_qdq_activation(np.array(0, np.uint8)), "trt-int8")
    assert not report.ok and report.rules("error") == {"qdq-dtype"}
    # The Q's UINT8 zero point is refused; its DQ reads the parser's INT8 Q layer, whatever ONNX infers, and the
    # parser only warns about a DQ's UINT8 zero point.
    assert {f.node for f in report.errors} == {"q"} and {f.node for f in report.warnings} == {"dq"}
    uint8_weights = check_graph(_dequantized_matmul(np.ones((4, 8), np.uint8), np.array(0.01, np.float32)), "trt-int8")
    assert {(f.rule, f.node) for f in uint8_weights.errors} == {("qdq-dtype", "dq_weight")}


def test_bad_per_channel_axis_fails():
    wrong_channels = check_graph(_per_channel_weights(axis=0), "trt-int8")   # axis 0 has 4 channels, 8 scales
    assert wrong_channels.rules("error") == {"qdq-axis"} and "4 channels but 8 scales" in str(wrong_channels.errors[0])
    assert _errors(_per_channel_weights(axis=2)) == {"qdq-axis"}            # out of range for rank 2
    missing = check_graph(_per_channel_weights(axis=None), "trt-int8")      # ONNX means 1, the parser takes 0
    assert missing.rules("error") == {"qdq-axis"} and "axis 1" in str(missing.errors[0])


def test_int64_input_fails_where_the_op_rejects_int64():
    weight = numpy_helper.from_array(np.ones((4, 2), np.int64), "weight")
    model = _model([helper.make_node("MatMul", ["x", "weight"], ["y"], name="matmul")],
                   [_value("x", TensorProto.INT64, ["batch", 4])], [_value("y", TensorProto.FLOAT, ["batch", 2])],
                   [weight])
    report = check_graph(model, "trt-fp16")
    assert report.rules("error") == {"dtype"} and "INT64" in str(report.errors[0])
    assert report.rules("warning") == {"io-dtype"}    # the INT64 input itself is only a portability note
    # INT64 indices into Gather: 10.3 takes them; the input is noted, nothing fails.
    table = numpy_helper.from_array(np.ones((10, 4), np.float32), "table")
    lookup = _model([helper.make_node("Gather", ["table", "ids"], ["y"], name="gather")],
                    [_value("ids", TensorProto.INT64, ["batch", 3])],
                    [_value("y", TensorProto.FLOAT, ["batch", 3, 4])], [table])
    report = check_graph(lookup, "trt-fp16")
    assert report.ok and report.rules("warning") == {"io-dtype"}


def test_dynamic_spatial_dimension_fails():
    def relu(shape):
        return _model([helper.make_node("Relu", ["pixels"], ["y"], name="relu")],
                      [_value("pixels", TensorProto.FLOAT, shape)], [_value("y", TensorProto.FLOAT, shape)])
    assert _errors(relu(["batch", 3, 224, 224]), "trt-fp16") == set()
    assert _errors(relu(["batch", 3, "height", 224]), "trt-fp16") == {"shape"}
    assert _errors(relu(["n", 3, 224, 224]), "trt-fp16") == {"shape"}        # not the profiled axis name
    assert _errors(relu(["n", 3, 224, 224]), "trt-fp16", dynamic_axes=("n",)) == set()


def test_other_rules_fire_on_their_cases():
    # `axes` computed at run time where 10.3 needs an initializer.
    reduce = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum")],
                    [_value("x", TensorProto.FLOAT, ["batch", 4]), _value("axes", TensorProto.INT64, [1])],
                    [_value("y", TensorProto.FLOAT, ["batch", 1])])
    assert _errors(reduce, "trt-fp16") == {"constant-input"}
    # LayerNormalization's Mean output; an opset beyond the parser's range.
    scale = numpy_helper.from_array(np.ones(4, np.float32), "gamma")
    layer_norm = _model([helper.make_node("LayerNormalization", ["x", "gamma"], ["y", "mean"], name="ln")],
                        [_value("x", TensorProto.FLOAT, ["batch", 4])],
                        [_value("y", TensorProto.FLOAT, ["batch", 4]), _value("mean", TensorProto.FLOAT, ["batch", 1])],
                        [scale])
    assert _errors(layer_norm, "trt-fp16") == {"extra-output"}
    # LayerNorm computed in FP16 builds, with the overflow warning.
    half = numpy_helper.from_array(np.ones(4, np.float16), "gamma")
    fp16 = _model([helper.make_node("LayerNormalization", ["x", "gamma"], ["y"], name="ln")],
                  [_value("x", TensorProto.FLOAT16, ["batch", 4])], [_value("y", TensorProto.FLOAT16, ["batch", 4])],
                  [half])
    report = check_graph(fp16, "trt-fp16")
    assert report.ok and report.rules("warning") == {"fp16-precision"}


def _dequantized_matmul(data: np.ndarray, scale: np.ndarray, axis: int | None = None) -> onnx.ModelProto:
    """x[batch, 4] @ DequantizeLinear(weight) for a given weight data type and scale shape."""
    attributes = {} if axis is None else {"axis": axis}
    return _model([helper.make_node("DequantizeLinear", ["weight", "weight_scale"], ["w"], name="dq_weight",
                                    **attributes),
                   helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
                  [_value("x", TensorProto.FLOAT, ["batch", 4])], [_value("y", TensorProto.FLOAT, ["batch", 8])],
                  [numpy_helper.from_array(data, "weight"), numpy_helper.from_array(scale, "weight_scale")],
                  opset=21)


def test_qdq_rules_match_the_10_3_parser():
    """The Q/DQ rules follow TensorRT 10.3 (JetPack 6), the oldest version supported: what its parser and builder
    refuse is an error, what they take is not, so the check neither lets a failing build through nor blocks a
    working one."""
    # Per-channel Q/DQ of an activation: "Activations-quantization does not support per-axis quantization".
    scale = numpy_helper.from_array(np.full(4, 0.02, np.float32), "scale")
    zero = numpy_helper.from_array(np.zeros(4, np.int8), "zero")
    per_channel_activation = _model(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="q", axis=1),
         helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="dq", axis=1)],
        [_value("x", TensorProto.FLOAT, ["batch", 4])], [_value("y", TensorProto.FLOAT, ["batch", 4])], [scale, zero])
    report = check_graph(per_channel_activation, "trt-int8")
    assert report.rules("error") == {"qdq-axis"} and {f.node for f in report.errors} == {"q", "dq"}
    assert "activations per tensor only" in report.errors[0].message
    # DequantizeLinear of INT32 data (ONNX Runtime's quantized biases): 10.3 dequantizes INT8, FP8, INT4.
    int32 = check_graph(_dequantized_matmul(np.ones((4, 8), np.int32), np.array(0.01, np.float32)), "trt-int8")
    assert int32.rules("error") == {"qdq-dtype"} and "DequantizeLinear of INT32" in str(int32.errors[0])
    # Blocked scales are INT4 weight-only quantization; on INT8 they are refused, on INT4 taken.
    blocked_int8 = check_graph(_dequantized_matmul(np.ones((4, 8), np.int8), np.full((2, 8), 0.01, np.float32)),
                               "trt-int8")
    assert blocked_int8.rules("error") == {"qdq-axis"} and "block-quantizes INT4" in str(blocked_int8.errors[0])
    int4 = onnx.helper.make_tensor("weight", TensorProto.INT4, [4, 8], np.ones(32, np.int8).tolist())
    blocked_int4 = _dequantized_matmul(np.ones((4, 8), np.int8), np.full((2, 8), 0.01, np.float32))
    blocked_int4.graph.initializer[0].CopyFrom(int4)
    assert _errors(blocked_int4) == set()
    # A scale computed at run time: TensorRT needs build-time constant scales.
    run_time_scale = _model(
        [helper.make_node("ReduceMax", ["x"], ["amax"], name="amax", keepdims=0),
         helper.make_node("QuantizeLinear", ["x", "amax"], ["q"], name="q"),
         helper.make_node("DequantizeLinear", ["q", "amax"], ["y"], name="dq")],
        [_value("x", TensorProto.FLOAT, ["batch", 4])], [_value("y", TensorProto.FLOAT, ["batch", 4])])
    report = check_graph(run_time_scale, "trt-int8")
    assert report.rules("error") == {"qdq-scale"} and "computed at run time" in str(report.errors[0])
    # Float weights behind an Identity, quantized per channel, are still weights (the parser looks through
    # Identity and Cast for constants), so this Q/DQ pair is not an activation's.
    weights = _model(
        [helper.make_node("Identity", ["weight_raw"], ["weight"], name="identity"),
         helper.make_node("QuantizeLinear", ["weight", "scale8", "zero8"], ["q"], name="q", axis=1),
         helper.make_node("DequantizeLinear", ["q", "scale8", "zero8"], ["w"], name="dq", axis=1),
         helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
        [_value("x", TensorProto.FLOAT, ["batch", 4])], [_value("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(np.ones((4, 8), np.float32), "weight_raw"),
         numpy_helper.from_array(np.full(8, 0.01, np.float32), "scale8"),
         numpy_helper.from_array(np.zeros(8, np.int8), "zero8")])
    assert _errors(weights) == set()


def test_opset_outside_the_table_is_a_warning_because_the_parser_takes_it():
    """ModelImporter only warns about an opset outside its table (9..20), and parses the graph anyway, so the check
    warns too instead of refusing."""
    for opset in (21, 8):
        relu = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                      [_value("x", TensorProto.FLOAT, ["batch"])], [_value("y", TensorProto.FLOAT, ["batch"])],
                      opset=opset)
        report = check_graph(relu, "trt-fp16")
        assert report.ok and report.rules("warning") == {"opset"}, report.format()


def test_doctor_artifact_rejects_what_the_parser_rejects(tmp_path, fp32_artifact):
    """`doctor --artifact` (check_artifact) on an artifact whose image graph has an INT32 DequantizeLinear."""
    artifact = tmp_path / "bad"
    shutil.copytree(fp32_artifact, artifact)
    model = onnx.load(str(artifact / "image.onnx"))
    bias = next(init for init in model.graph.initializer if init.data_type == TensorProto.FLOAT and len(init.dims) == 1)
    values = numpy_helper.to_array(bias)
    quantized_name = bias.name + "_int32"
    model.graph.initializer.append(numpy_helper.from_array(np.round(values / 1e-4).astype(np.int32), quantized_name))
    model.graph.initializer.append(numpy_helper.from_array(np.array(1e-4, np.float32), bias.name + "_scale"))
    model.graph.initializer.remove(bias)
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", [quantized_name, bias.name + "_scale"],
                                                [bias.name], name="bias_dq"))
    onnx.save(model, str(artifact / "image.onnx"))
    record_file(artifact, "image.onnx", ("graphs", "image", "sha256"))
    report = check_artifact(artifact, "trt-int8")
    assert not report.ok and {(f.rule, f.node) for f in report.errors} == {("qdq-dtype", "bias_dq")}
    # What `doctor --artifact` runs: the target's exporter owns the check.
    through_doctor = readiness_report(artifact, "trt-int8")
    assert {(f.rule, f.node) for f in through_doctor.errors} == {("qdq-dtype", "bias_dq")}


def test_check_refuses_a_non_tensorrt_target(tmp_path):
    with pytest.raises(UserError, match="not a TensorRT target"):
        check_graph(_qdq_activation(np.array(0, np.int8)), "onnx-int8")
    with pytest.raises(UserError, match="does not exist"):
        check_graph(tmp_path / "missing.onnx")


# ------------------------------------------------------------------------------- build plans per version

@pytest.mark.parametrize("version, typing, source, builder_flags, pinned", [
    ("10.3.0", "weak", "fp32", ("FP16", "OBEY_PRECISION_CONSTRAINTS"), True),          # JetPack 6.1/6.2
    ("10.3.0.30", "weak", "fp32", ("FP16", "OBEY_PRECISION_CONSTRAINTS"), True),
    ("10.11.0.33", "weak", "fp32", ("FP16", "OBEY_PRECISION_CONSTRAINTS"), True),
    ("10.12.0.36", "strong", "fp16", (), False),                                        # weak typing deprecated
    ("11.0.0.1", "strong", "fp16", (), False),                                          # FP16 flag removed
    ("11.4.1", "strong", "fp16", (), False),
])
def test_fp16_plan_per_version(version, typing, source, builder_flags, pinned):
    plan = trt_build.plan_build("trt-fp16", version)
    assert (plan.typing, plan.source, plan.builder_flags, plan.pin_float32) == (typing, source, builder_flags, pinned)
    assert plan.network_flags == (("STRONGLY_TYPED",) if typing == "strong" else ())
    assert not plan.calibrator


def test_int8_plans_and_refusals():
    """Strongly typed INT8 parses the QDQ graph whose float part is FP16, on every version, so trt-int8 never runs
    slower than trt-fp16; a weakly typed QDQ build (INT8 + FP16 flags) is a choice on 10.x, not a refusal."""
    for version in ("10.3.0", "10.11.0.33", "10.16.1.11", "11.4.0.106"):
        explicit = trt_build.plan_build("trt-int8", version)
        assert (explicit.typing, explicit.source, explicit.builder_flags) == ("strong", "qdq-fp16", ())
        assert explicit.network_flags == ("STRONGLY_TYPED",) and not explicit.pin_float32
    weak = trt_build.plan_build("trt-int8", "10.3.0", "weak")
    assert (weak.typing, weak.source, weak.network_flags) == ("weak", "qdq", ())
    assert weak.builder_flags == ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS") and weak.pin_float32
    implicit = trt_build.plan_build("trt-int8", "10.3.0", int8_route="implicit")
    assert (implicit.typing, implicit.source, implicit.calibrator, implicit.pin_float32) == ("weak", "fp32", True, True)
    assert implicit.builder_flags == ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert trt_build.plan_build("trt-fp16", "10.3.0", "strong").source == "fp16"        # strong also on 10.3
    for kwargs, message in [
        (dict(target="trt-int8", version="11.0.0.1", int8_route="implicit"), "removed implicit INT8 calibration"),
        (dict(target="trt-fp16", version="11.0.0.1", typing="weak"), "removed weak typing"),
        (dict(target="trt-int8", version="11.4.0.106", typing="weak"), "removed weak typing"),
        (dict(target="trt-int8", version="10.3.0", typing="strong", int8_route="implicit"), "weakly typed network"),
        (dict(target="trt-fp16", version="8.6.2"), "older than 10.3"),
        (dict(target="trt-fp16", version="10.2.0"), "older than 10.3"),
        (dict(target="trt-fp16", version="banana"), "cannot read the TensorRT version"),
        (dict(target="trt-fp16", version="10.3.0", typing="loose"), "tensorrt_typing='loose' is unknown"),
        (dict(target="onnx", version="10.3.0"), "not a TensorRT target"),
    ]:
        with pytest.raises(UserError, match=message):
            trt_build.plan_build(**kwargs)
    assert trt_build.text_plan(implicit).builder_flags == () and trt_build.text_plan(implicit).typing == "strong"


def test_required_api_follows_the_plan():
    """What `missing_api` checks before tracing: the members each plan's build touches (the conformance tests
    check these names against the real bindings and record that a build touches nothing else)."""
    strong = trt_build.required_api(trt_build.plan_build("trt-int8", "11.4.0.106"))
    assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in strong
    assert not any(name.startswith(("BuilderFlag.", "ILayer.precision", "IInt8")) for name in strong)
    weak = trt_build.required_api(trt_build.plan_build("trt-fp16", "10.3.0"))
    assert {"BuilderFlag.FP16", "ILayer.metadata", "ILayer.precision=", "ILayer.set_output_type()"} <= set(weak)
    implicit = trt_build.required_api(trt_build.plan_build("trt-int8", "10.3.0", int8_route="implicit"))
    assert {"IInt8EntropyCalibrator2()", "IBuilderConfig.set_calibration_profile()"} <= set(implicit)
    # A read-only property where the code assigns is as missing as an absent one.
    holder = SimpleNamespace(ITensor=type("ITensor", (), {"dtype": property(lambda self: 0)}))
    assert trt_build.missing_api(["ITensor.dtype", "ITensor.dtype=", "ITensor.name"], holder) == [
        "ITensor.dtype", "ITensor.name"]


# ----------------------------------------------------------------------------------------------- profiles

def test_profiles_from_options():
    options = engines.TensorRTOptions()
    defaults = engines.batch_profiles(options)
    assert defaults["image"] == trt_build.BatchProfile(*engines.IMAGE_PROFILE)
    assert defaults["text"] == trt_build.BatchProfile(*engines.TEXT_PROFILE)
    chosen = engines.batch_profiles(engines.TensorRTOptions(batch_min=2, batch_opt=4, batch_max=16, classes_max=512))
    assert chosen["image"].shapes(["batch", 3, 448, 448]) == ((2, 3, 448, 448), (4, 3, 448, 448), (16, 3, 448, 448))
    assert chosen["text"].shapes(["classes", 77]) == ((1, 77), (64, 77), (512, 77))
    with pytest.raises(UserError, match="1 ≤ min ≤ opt ≤ max"):
        trt_build.BatchProfile(4, 2, 8)
    with pytest.raises(UserError, match="1 ≤ min ≤ opt ≤ max"):
        trt_build.BatchProfile(0, 1, 1)
    with pytest.raises(UserError, match="profiled on axis 0 only"):
        chosen["image"].shapes(["batch", 3, "height", 448])


def test_runtime_chunks_calls_beyond_the_profile():
    assert trt_runtime.batch_chunks(3, 8) == [slice(0, 3)]
    assert trt_runtime.batch_chunks(17, 8) == [slice(0, 8), slice(8, 16), slice(16, 17)]
    assert trt_runtime.batch_chunks(0, 8) == []


# -------------------------------------------------------------------------------- FP32 layers (weak typing)

def test_layers_map_back_to_onnx_nodes_through_their_metadata():
    """A layer's ONNX node comes from its metadata: onnx-tensorrt writes "[ONNX Layer: <node>]" into every layer it
    makes for a node, while layer names are not evidence (its `_N` counter is global)."""
    assert trt_build.node_of_layer("[ONNX Layer: /a/MatMul]") == "/a/MatMul"
    assert trt_build.node_of_layer("[ONNX Layer: /a/MatMul_1]") == "/a/MatMul_1"
    assert trt_build.node_of_layer("[ONNX Layer: /f/Add | Local Function: gelu]") == "/f/Add"
    assert trt_build.node_of_layer("") is None and trt_build.node_of_layer("ONNXTRT_Broadcast") is None


def test_float32_pins_follow_the_policy():
    layers = [
        trt_build.LayerInfo(0, "/ln/LayerNormalization", "NORMALIZATION", ("FLOAT", "FLOAT"), ("FLOAT",)),
        trt_build.LayerInfo(1, "/attn/Softmax", "SOFTMAX", ("FLOAT",), ("FLOAT",)),
        trt_build.LayerInfo(2, "/assign/Equal", "ELEMENTWISE", ("FLOAT", "FLOAT"), ("BOOL",)),
        trt_build.LayerInfo(3, "/assign/Equal", "SHAPE", ("INT64",), ("INT64",)),
        trt_build.LayerInfo(4, "/mlp/fc1/MatMul", "MATRIX_MULTIPLY", ("FLOAT", "FLOAT"), ("FLOAT",)),
        trt_build.LayerInfo(5, "/assign/MatMul", "MATRIX_MULTIPLY", ("FLOAT", "FLOAT"), ("FLOAT",)),
        trt_build.LayerInfo(6, "/assign/MatMul", "CONSTANT", (), ("FLOAT",)),
        trt_build.LayerInfo(7, None, "SHUFFLE", ("FLOAT",), ("FLOAT",)),
    ]
    pins = trt_build.float32_pins(layers, kept_nodes={"/assign/Equal", "/assign/MatMul"})
    # LayerNorm and Softmax by type; the assignment's Equal computes in FP32 with its BOOL output left alone; its
    # shape-arithmetic helper touches no float; the MLP is free to run in FP16; the assignment MatMul is pinned, its
    # weight constant is not; the parser's own helper layers (no metadata) are not a node's.
    assert pins == [(0, (0,)), (1, (0,)), (2, ()), (5, (0,))]


def test_kept_float_nodes_of_the_exported_image_graph(fp32_artifact):
    kept = trt_build.kept_float_nodes(fp32_artifact / "image.onnx")
    ops = {node.name: node.op_type for node in onnx.load(str(fp32_artifact / "image.onnx")).graph.node}
    assert kept <= set(ops)
    assert sum(ops[n] == "LayerNormalization" for n in kept) == 39          # every LayerNorm of the image tower
    assert any(n.endswith("/downsample/assign/q_proj/MatMul") for n in kept)  # the grouping assignment
    assert any("/mlp/" in n and ops[n] == "Erf" for n in kept)                # GELU's Erf stays float32…
    assert not any(ops[n] in ("MatMul", "Gemm") and "/assign/" not in n for n in kept)  # …its MatMuls do not


def test_int8_qdq_graph_with_an_fp16_float_part(int8_artifact, fp32_artifact):
    """The graph strongly typed trt-int8 parses. Every Q/DQ scale is FP16 (a strongly typed DQ outputs
    its scale's type), the FP16 keep-list and the grouping assignment still compute in FP32, and in ONNX Runtime it
    stays as close to fp32 as the QDQ graph with an fp32 float part."""
    import onnxruntime
    from onnx import shape_inference
    from groupvit_edge.quantization.policy import FP16_KEEP_FLOAT_OPS
    from groupvit_edge.segmentation.preprocess import load_image, prepare
    qdq = onnx.load(str(int8_artifact / "image.int8.onnx"))
    half = engines.qdq_with_fp16_float(qdq)
    assert {(o.domain, o.version) for o in half.opset_import} == {("", engines.QDQ_FP16_OPSET)}
    inferred = shape_inference.infer_shapes(half)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    types.update({init.name: init.data_type for init in half.graph.initializer})
    qdq_nodes = [node for node in half.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq_nodes) == sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in qdq.graph.node)
    assert {types[node.input[1]] for node in qdq_nodes} == {TensorProto.FLOAT16}
    kept = [node for node in half.graph.node if node.op_type in FP16_KEEP_FLOAT_OPS or
            node.name.endswith(("/downsample/assign/MatMul", "/downsample/assign/Softmax"))]
    assert sum(node.op_type == "LayerNormalization" for node in kept) == 39
    float_inputs = {types[name] for node in kept for name in node.input
                    if types.get(name) in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    assert float_inputs == {TensorProto.FLOAT}
    weight_products = [node for node in half.graph.node if node.op_type == "MatMul" and "/mlp/" in node.name]
    assert {types[node.input[0]] for node in weight_products} == {TensorProto.FLOAT16}
    assert {o.type.tensor_type.elem_type for o in half.graph.output} == {TensorProto.FLOAT}
    assert len(half.graph.output) == len(qdq.graph.output)
    path = int8_artifact.parent / "image.int8-fp16.onnx"
    onnx.save(half, str(path))
    report = check_graph(path, "trt-int8")
    assert report.ok and report.rules("warning") <= {"qdq-pair"}, report.format()
    windows = np.concatenate([prepare(load_image(photo), read_manifest(int8_artifact).preprocess).windows
                              for photo in sorted(EVAL_IMAGES.glob("*.jpg"))[:6]])

    def group_embeds(file):
        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        return session.run(["group_embeds"], {"pixels": windows})[0]

    fp32_float, fp16_float = group_embeds(int8_artifact / "image.int8.onnx"), group_embeds(path)
    reference = group_embeds(fp32_artifact / "image.onnx")     # same checkpoint and size: the fp32 graph
    between = np.sum(fp32_float * fp16_float, axis=-1)
    # FP16 rounding moves activations across INT8 rounding steps, so the two differ by about as much as INT8
    # differs from fp32 (mean cosine ≈ 0.994 on random:0): mean ≥ 0.99 and min ≥ 0.97 separate that from a
    # broken conversion (a wrong scale type or a lost keep-list gives cosines far below 0.9).
    assert between.mean() >= 0.99 and between.min() >= 0.97, (between.mean(), between.min())
    # Against fp32 it is as good as the fp32-float QDQ graph (0.002: about a third of INT8's own 1 − cosine).
    assert np.sum(reference * fp16_float, -1).mean() >= np.sum(reference * fp32_float, -1).mean() - 0.002


# ------------------------------------------------------------------------------------------------- caches

def test_timing_cache_is_keyed_by_version_and_gpu(tmp_path):
    orin = engines.timing_cache_path(tmp_path, "10.3.0", "Orin (nvgpu)", "8.7")
    assert orin == tmp_path / "tensorrt" / "timing-10.3.0-orin-nvgpu-sm87.cache"
    assert len({orin, engines.timing_cache_path(tmp_path, "10.3.0.30", "Orin (nvgpu)", "8.7"),
                engines.timing_cache_path(tmp_path, "10.3.0", "NVIDIA GeForce RTX 4090", "8.9")}) == 3


def test_calibration_cache_is_reused_only_when_its_key_matches(tmp_path):
    preprocess = Preprocess(height=224, width=224, stride=(112, 112))

    def key(count, version="10.3.0"):
        calibration = CalibrationSet.resolve(CALIB_IMAGES, count, preprocess, seed=0, log=lambda m: None)
        return calibration_key("ab" * 32, calibration, {"method": "tensorrt-entropy2", "batch": 8},
                               tensorrt=version, network_sha256="cd" * 32)

    logs = []
    first = engines.CalibrationCacheFile(tmp_path, key(4), log=logs.append)
    assert first.read() is None                       # nothing stored yet: TensorRT calibrates
    first.write(b"TRT-10300-EntropyCalibration2\ninput: 3c010a14\n")
    again = engines.CalibrationCacheFile(tmp_path, key(4), log=logs.append)
    assert again.read().startswith(b"TRT-10300") and again.reused and logs[-1].startswith("reusing")
    more_images = engines.CalibrationCacheFile(tmp_path, key(6), log=logs.append)
    assert more_images.read() is None and not more_images.reused
    assert "different count, images_sha256; recalibrating" in logs[-1]
    other_tensorrt = engines.CalibrationCacheFile(tmp_path, key(4, "10.4.0"), log=logs.append)
    assert other_tensorrt.read() is None and "different tensorrt;" in logs[-1]
    assert json.loads((first.directory / "key.json").read_text()) == key(4)
    assert changed_fields({"a": 1, "b": 2}, {"a": 1, "c": 3}) == ["b", "c"]


def test_calibration_batches_are_full():
    windows = np.zeros((10, 3, 4, 4), np.float32)
    batches = list(engines.calibration_batches(iter(windows), 4))
    assert [b.shape for b in batches] == [(4, 3, 4, 4), (4, 3, 4, 4)]   # the calibration profile has one shape


# ---------------------------------------------------------------------------------- runtime, without a GPU

def test_engine_compatibility_is_checked_from_the_manifest():
    built = {"version": "10.3.0", "gpu": "Orin (nvgpu)", "compute_capability": "8.7", "target": "trt-int8"}
    orin = trt_runtime.CudaDevice("Orin (nvgpu)", "8.7")
    assert trt_runtime.engine_incompatibility(built, "10.3.0", orin) is None
    assert trt_runtime.engine_incompatibility(built, "10.3.0.30", orin) is None      # __version__ has 3 or 4 parts
    wrong_version = trt_runtime.engine_incompatibility(built, "10.4.0", orin)
    assert "built with TensorRT 10.3.0 and this machine has TensorRT 10.4.0" in wrong_version
    assert "--target trt-int8" in wrong_version and "\n" not in wrong_version
    wrong_gpu = trt_runtime.engine_incompatibility(built, "10.3.0", trt_runtime.CudaDevice("RTX 4090", "8.9"))
    assert "compute capability 8.7 (Orin (nvgpu)) and this GPU (RTX 4090) is 8.9" in wrong_gpu
    assert "does not say which TensorRT" in trt_runtime.engine_incompatibility(None, "10.3.0", orin)
    assert not trt_runtime.versions_match("10.3.0.26", "10.3.0.30") and not trt_runtime.versions_match("10", "10")


def test_trt_artifact_needs_engines_and_falls_back_to_onnx_runtime_here(fp32_artifact, tmp_path):
    manifest = read_manifest(fp32_artifact)
    assert "no TensorRT engines" in trt_runtime.unsupported_reason(manifest)
    # An artifact whose manifest names engines (placeholder bytes: nothing here deserializes them).
    artifact = tmp_path / "trt"
    shutil.copytree(fp32_artifact, artifact)
    data = json.loads((artifact / MANIFEST_NAME).read_text())
    data["engines"] = {graph: {**data["graphs"][graph], "file": f"{graph}.engine", "format": "tensorrt-engine"}
                       for graph in ("image", "text")}
    data["tensorrt"] = {"version": "10.3.0", "gpu": "Orin (nvgpu)", "compute_capability": "8.7"}
    (artifact / MANIFEST_NAME).write_text(json.dumps(data))
    assert "missing image.engine" in trt_runtime.unsupported_reason(read_manifest(artifact, verify=False))
    with pytest.raises(UserError, match="missing image.engine"):
        read_manifest(artifact)
    for graph in ("image", "text"):
        (artifact / f"{graph}.engine").write_bytes(b"placeholder")
        record_file(artifact, f"{graph}.engine", ("engines", graph, "sha256"))
    if TENSORRT_HERE:
        pytest.skip("TensorRT is installed here: the fallback below is for machines without it")
    assert trt_runtime.unsupported_reason(read_manifest(artifact)) is None
    assert runtimes.open(artifact).name == "onnxruntime"        # the ONNX stays in the artifact
    with pytest.raises(UserError, match=r"needs tensorrt, which is not installed: pip install groupvit-edge\[tensorrt\]"):
        runtimes.open(artifact, backend="tensorrt")
    with pytest.raises(UserError, match="TensorRT is not installed"):
        trt_runtime.open_runtime(read_manifest(artifact), trt_runtime.Options())


class _CudaError(enum.Enum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35


class _CudaRuntimeOnOldDriver:
    """cuda-python 13's runtime API on a CUDA 12.6 driver (JetPack 6): every call answers "driver version is
    insufficient" (cuda-python returns (error, *values); NVIDIA/cutlass#2866: 13.x needs an R580 driver)."""
    cudaError_t = _CudaError

    def cudaSetDevice(self, device):
        return (_CudaError.cudaErrorInsufficientDriver,)

    def cudaGetDeviceProperties(self, device):
        return (_CudaError.cudaErrorInsufficientDriver, None)


def test_cuda_python_on_an_older_driver_is_one_sentence_or_falls_back_to_torch(monkeypatch):
    """cuda-python newer than the driver (cuda-python 13 on JetPack 6's CUDA 12.6) fails every runtime call: that is
    one sentence naming the error and the pin to install, or, with torch CUDA present, a warning and torch
    buffers."""
    monkeypatch.setattr(trt_cuda, "cuda_runtime_module", lambda: _CudaRuntimeOnOldDriver())
    monkeypatch.setattr(trt_cuda, "_torch_cuda", lambda: None)
    for machine, pin in (("x86_64", "cuda-python>=12.6,<13"), ("aarch64", "cuda-python>=12.6,<12.7")):
        monkeypatch.setattr(trt_cuda.platform, "machine", lambda: machine)
        for call in (trt_runtime.open_device_memory, trt_runtime.device_properties):
            with pytest.raises(UserError) as raised:
                call()
            message = str(raised.value)
            assert "cudaErrorInsufficientDriver" in message and f"pip install '{pin}'" in message
            assert "\n" not in message
    with pytest.raises(UserError, match="cudaErrorInsufficientDriver"):
        trt_runtime.open_device_memory("cuda-python")
    # With torch CUDA present, "auto" uses it and says why.
    fake_torch = SimpleNamespace(device=lambda kind, index: (kind, index))
    monkeypatch.setattr(trt_cuda, "_torch_cuda", lambda: fake_torch)
    with pytest.warns(UserWarning, match="cudaErrorInsufficientDriver.*using torch CUDA buffers"):
        assert trt_runtime.open_device_memory("auto").kind == "torch"


def test_install_hint_names_jetpack_on_a_jetson():
    """TensorRT cannot be pip-installed on a Jetson, so the hint there names JetPack's apt packages; elsewhere it
    names the pip extra."""
    jetson = trt_runtime.not_installed_message("aarch64")
    assert "sudo apt install python3-libnvinfer" in jetson and "--system-site-packages" in jetson
    assert "'cuda-python>=12.6,<12.7'" in jetson and "\n" not in jetson
    desktop = trt_runtime.not_installed_message("x86_64")
    assert "pip install groupvit-edge[tensorrt]" in desktop and "apt" not in desktop


def test_tensorrt_modules_import_without_torch_or_tensorrt():
    import subprocess
    import sys
    script = ("import sys; sys.modules['torch'] = None; sys.modules['tensorrt'] = None\n"
              "import groupvit_edge.runtimes.tensorrt as r, groupvit_edge.runtimes.tensorrt.build as b\n"
              "import groupvit_edge.exporters.tensorrt, groupvit_edge.checks.tensorrt\n"
              "assert not r.is_installed()\nprint(b.plan_build('trt-fp16', '10.3.0').typing)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "weak"


# ------------------------------------------------------------- export through the engine step, fake TensorRT

def _export_on_fake_tensorrt(root: Path, label: str, target: str, checkpoint, bpe_path, **options):
    """`export(..., target)` with the fake `tensorrt` of the real `label` bindings installed: everything but
    TensorRT itself is real (tracing, precision steps, readiness, drift in ONNX Runtime against the engine, whose
    fake runs the ONNX it was built from)."""
    harness.fetch_or_skip(label)
    world = TensorRTWorld(gpu="Orin (nvgpu)")
    trt = fake_tensorrt(harness.api_snapshot(label), world)
    logs = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        install(monkeypatch, trt, world)
        export(str(checkpoint), root / "trt", target, image_size=224, tokenizer=bpe_path, cache_dir=root / "cache",
               log=logs.append, **options)
    return SimpleNamespace(artifact=root / "trt", trt=trt, world=world, logs=logs,
                           manifest=read_manifest(root / "trt"))


@pytest.fixture(scope="module")
def fake_trt_fp16(tmp_path_factory, random_checkpoint, bpe_path):
    return _export_on_fake_tensorrt(tmp_path_factory.mktemp("fake-trt-fp16"), "10.3", "trt-fp16",
                                    random_checkpoint, bpe_path)


@pytest.mark.parametrize("version, target, expected", [
    ("10.3.0", "trt-fp16", ["trace", "validate", "readiness", "engines", "drift"]),
    ("11.4.0.106", "trt-fp16", ["trace", "validate", "fp16", "drift", "readiness", "engines", "drift"]),
    ("11.4.0.106", "trt-int8", ["trace", "validate", "calibrate", "drift", "fp16-float", "drift", "readiness",
                                "engines", "drift"]),
    (None, "trt-int8", ["trace", "validate", "reduce", "readiness", "engines", "drift"]),
])
def test_the_plan_lists_the_steps_the_installed_tensorrt_builds(monkeypatch, version, target, expected):
    """The printed and recorded plan is the work `build` does: which graph the engines parse depends on the
    installed TensorRT's build plan."""
    from groupvit_edge.exporters.options import ExportOptions
    from groupvit_edge.exporters.plan import backend_option_groups, make_plan

    def installed():
        if version is None:
            raise UserError("TensorRT is not installed")
        return SimpleNamespace(__version__=version)
    monkeypatch.setattr(trt_install, "import_tensorrt", installed)
    planned = make_plan("random:0", target, "out", ExportOptions.from_values(backend_option_groups()))
    assert [step.name for step in planned.steps] == expected
    engines_step = next(step for step in planned.steps if step.name == "engines")
    if version is not None:
        assert trt_build.plan_build(target, version).describe() in engines_step.does


def _declared(plan) -> tuple[str, ...]:
    return (trt_build.required_api(plan) + trt_build.required_api(trt_build.text_plan(plan))
            + trt_runtime.RUNTIME_API)


def test_weak_fp16_export_on_tensorrt_10_3(fake_trt_fp16):
    """JetPack 6's path end to end: weakly typed FP16 from the fp32 graph, policy layers pinned by metadata, every
    bool checked, nothing touched beyond the declared API, and no error TensorRT would report."""
    done = fake_trt_fp16
    section = done.manifest.data["tensorrt"]
    assert section["version"] == "10.3.0" and section["plan"]["typing"] == "weak"
    plan = trt_build.plan_build("trt-fp16", "10.3.0")
    assert done.world.violations == [] and done.trt.recorder.unchecked() == []
    assert done.trt.recorder.uncovered(_declared(plan)) == []
    image, text = (json.loads((done.artifact / f"{graph}.engine").read_bytes()) for graph in ("image", "text"))
    assert (image["strongly_typed"], image["flags"]) == (False, ["FP16", "OBEY_PRECISION_CONSTRAINTS"])
    assert (text["strongly_typed"], text["flags"]) == (True, [])
    assert Path(image["onnx"]).name == "image.onnx" and image["verbosity"] == "DETAILED"
    kept = trt_build.kept_float_nodes(done.artifact / "image.onnx")
    pinned = [layer for layer in image["layers"] if layer["precision"]]
    assert len(pinned) == done.manifest.data["engines"]["image"]["float32_pinned_layers"] > 100
    assert all(trt_build.node_of_layer(layer["node"]) in kept or layer["type"] in ("NORMALIZATION", "SOFTMAX")
               for layer in pinned)
    assert image["profile"] == {"pixels": [[1, 3, 224, 224], [1, 3, 224, 224], [8, 3, 224, 224]]}
    assert text["profile"] == {"token_ids": [[1, 77], [64, 77], [256, 77]]}


def test_engine_drift_is_measured_against_fp32_onnx_on_every_plan(fake_trt_fp16):
    """One rule for every plan: the image engine is measured against the fp32 ONNX in ONNX Runtime on the drift photos
    — with no --validation-images, the shipped sample photos — whatever the plan (this one has no reduced graph,
    so nothing else measures it)."""
    validation = fake_trt_fp16.manifest.data["validation"]
    check = validation["drift_vs_fp32"]
    assert check["reference"].startswith("image.onnx in onnxruntime")
    assert check["candidate"].startswith("tensorrt 10.3.0 (Orin (nvgpu), fp16")
    assert "sample photos shipped with groupvit-edge" in check["photos"] and len(check["images"]) == 8
    # The fake runs the fp32 graph the engine was built from: any difference would be the harness's, not FP16's.
    assert check["model_level"]["group_embed_cosine"]["min"] > 0.99999
    assert "drift_vs_fp32_onnxruntime" not in validation


@pytest.mark.slow
def test_strong_int8_export_on_tensorrt_11_parses_the_fp16_float_qdq_graph(tmp_path, random_checkpoint, bpe_path):
    """Strongly typed INT8 end to end on 11.4 (no weak typing): the engine parses image.int8-fp16.onnx, strongly typed, no
    precision flags; both the graph (ONNX Runtime) and the engine are measured against fp32."""
    done = _export_on_fake_tensorrt(tmp_path, "11.4", "trt-int8", random_checkpoint, bpe_path,
                                    calib_dir=CALIB_IMAGES, calib_count=4, calib_method="minmax")
    plan = trt_build.plan_build("trt-int8", "11.4.0.106")
    assert done.world.violations == [] and done.trt.recorder.unchecked() == []
    assert done.trt.recorder.uncovered(_declared(plan)) == []
    image = json.loads((done.artifact / "image.engine").read_bytes())
    assert Path(image["onnx"]).name == "image.int8-fp16.onnx" and image["strongly_typed"] and image["flags"] == []
    data = done.manifest.data
    assert data["graphs"]["image"]["file"] == "image.int8-fp16.onnx" and data["graphs"]["image"]["opset"] == 19
    assert data["precision"]["float_part"] == "fp16" and data["precision"]["engines"] == {"image": "strong",
                                                                                          "text": "strong"}
    assert data["validation"]["drift_vs_fp32_onnxruntime"]["candidate"] == "image.int8-fp16.onnx in ONNX Runtime"
    assert data["validation"]["drift_vs_fp32"]["candidate"].startswith("tensorrt 11.4.0.106")


# ------------------------------------------------------------------------------------- with TensorRT only

@pytest.fixture(scope="module")
def trt_fp16_artifact(trt_fp16_attempt):
    if trt_fp16_attempt.error is not None:
        raise trt_fp16_attempt.error
    return trt_fp16_attempt.root / "trt"


@pytest.mark.tensorrt
@requires_tensorrt
def test_fp16_engine_runs_like_the_fp32_graph(trt_fp16_artifact, fp32_artifact):
    from groupvit_edge.runtimes.onnxruntime import OnnxRuntime
    import tensorrt
    manifest = read_manifest(trt_fp16_artifact)
    assert manifest.data["tensorrt"]["version"] == tensorrt.__version__
    assert set(manifest.data["engines"]) == {"image", "text"}
    runtime = runtimes.open(trt_fp16_artifact)
    assert runtime.name == "tensorrt"
    reference = OnnxRuntime(read_manifest(fp32_artifact))
    pixels = np.random.default_rng(0).standard_normal((11, 3, 224, 224)).astype(np.float32)  # > max batch 8
    ours, theirs = runtime.encode_image(pixels), reference.encode_image(pixels)
    assert ours.group_embeds.shape == theirs.group_embeds.shape and ours.grouping.shape == theirs.grouping.shape
    cosine = np.sum(ours.group_embeds * theirs.group_embeds, axis=-1)
    # FP16 rounding of L2-normalised embeddings: cosine ≥ 0.999 separates fp16 noise from a broken engine.
    assert cosine.min() >= 0.999
    again = runtime.encode_image(pixels)          # reused buffers give the same answer
    np.testing.assert_allclose(again.group_embeds, ours.group_embeds, atol=1e-6)
    tokens = np.zeros((3, 77), np.int32)
    tokens[:, :3] = [[49406, 320, 49407], [49406, 1125, 49407], [49406, 2368, 49407]]
    text_cosine = np.sum(runtime.encode_text(tokens) * reference.encode_text(tokens), axis=-1)
    assert text_cosine.min() >= 0.9999            # the text engine is fp32 (TF32 matmuls at most)
    runtime.close()


@pytest.mark.tensorrt
@requires_tensorrt
def test_engine_from_another_tensorrt_is_refused(trt_fp16_artifact, tmp_path):
    artifact = tmp_path / "other"
    shutil.copytree(trt_fp16_artifact, artifact)
    data = json.loads((artifact / MANIFEST_NAME).read_text())
    data["tensorrt"]["version"] = "9.0.0"
    (artifact / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(UserError, match="built with TensorRT 9.0.0"):
        trt_runtime.open_runtime(read_manifest(artifact), trt_runtime.Options())
    assert runtimes.open(artifact).name == "onnxruntime"   # the automatic choice falls back to the ONNX


@pytest.mark.tensorrt
@requires_tensorrt
def test_int8_engine_from_the_qdq_graph(tmp_path, random_checkpoint, bpe_path, coco_images):
    export(str(random_checkpoint), tmp_path / "int8", "trt-int8", image_size=224, tokenizer=bpe_path,
           calib_dir=CALIB_IMAGES, calib_count=4, calib_method="minmax",
           validation_images=EVAL_IMAGES / coco_images[0].name, cache_dir=tmp_path / "cache", log=print)
    manifest = read_manifest(tmp_path / "int8")
    assert manifest.data["tensorrt"]["plan"]["source"] == "qdq-fp16"
    drift = manifest.data["validation"]["drift_vs_fp32"]["model_level"]
    # Same bar as the QDQ graph in ONNX Runtime (test_calibration): a sane INT8 engine stays above 0.98.
    assert drift["group_embed_cosine"]["mean"] > 0.98
