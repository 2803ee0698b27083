"""TensorRT: the readiness check of the graphs, the pure logic of engine building and running, and what an
export for a trt-* target does on a machine without TensorRT.

TensorRT cannot be installed here (DEVELOPERS.md): tests that need it are marked `tensorrt` and skip with the
reason; everything else runs on the real artifacts the toolkit makes and on graphs made to break each rule.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from groupvit_edge.calibration.cache import calibration_key, changed_fields
from groupvit_edge import runtimes
from groupvit_edge.artifact import MANIFEST_NAME, Preprocess, read_manifest
from groupvit_edge.calibration import CalibrationSet
from groupvit_edge.checks.tensorrt import check_artifact, check_graph, operator_table
from groupvit_edge.errors import UserError
from groupvit_edge.exporters import export
from groupvit_edge.exporters import tensorrt as engines
from groupvit_edge.runtimes import tensorrt as trt_runtime

from conftest import CALIB_IMAGES, EVAL_IMAGES, record_file

TENSORRT_HERE = trt_runtime.is_installed()
requires_tensorrt = pytest.mark.skipif(
    not TENSORRT_HERE, reason="needs TensorRT ≥ 10.3 and an NVIDIA GPU; TensorRT cannot be installed in this "
                              "development environment (DEVELOPERS.md), so engines are built and run only on one")


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
    assert message == trt_runtime.NOT_INSTALLED and "\n" not in message
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
    assert table["source"]["repo"] == "onnx/onnx-tensorrt" and table["source"]["branch"] == "release/10.3"
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
    assert {f.node for f in report.errors} == {"q", "dq"}   # the Q zero point and the DQ's UINT8 input


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
    relu = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                  [_value("x", TensorProto.FLOAT, ["batch"])], [_value("y", TensorProto.FLOAT, ["batch"])], opset=21)
    assert _errors(relu, "trt-fp16") == {"opset"}
    # LayerNorm computed in FP16 builds, with the overflow warning.
    half = numpy_helper.from_array(np.ones(4, np.float16), "gamma")
    fp16 = _model([helper.make_node("LayerNormalization", ["x", "gamma"], ["y"], name="ln")],
                  [_value("x", TensorProto.FLOAT16, ["batch", 4])], [_value("y", TensorProto.FLOAT16, ["batch", 4])],
                  [half])
    report = check_graph(fp16, "trt-fp16")
    assert report.ok and report.rules("warning") == {"fp16-precision"}


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
    plan = engines.plan_build("trt-fp16", version)
    assert (plan.typing, plan.source, plan.builder_flags, plan.pin_float32) == (typing, source, builder_flags, pinned)
    assert plan.network_flags == (("STRONGLY_TYPED",) if typing == "strong" else ())
    assert not plan.calibrator


def test_int8_plans_and_refusals():
    explicit = engines.plan_build("trt-int8", "10.3.0")
    assert (explicit.typing, explicit.source, explicit.builder_flags) == ("strong", "qdq", ())
    assert engines.plan_build("trt-int8", "11.0.0.1") == engines.plan_build("trt-int8", "11.0.0.1", "strong")
    implicit = engines.plan_build("trt-int8", "10.3.0", int8_route="implicit")
    assert (implicit.typing, implicit.source, implicit.calibrator, implicit.pin_float32) == ("weak", "fp32", True, True)
    assert implicit.builder_flags == ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert engines.plan_build("trt-fp16", "10.3.0", "strong").source == "fp16"        # strong also on 10.3
    for kwargs, message in [
        (dict(target="trt-int8", version="11.0.0.1", int8_route="implicit"), "removed implicit INT8 calibration"),
        (dict(target="trt-fp16", version="11.0.0.1", typing="weak"), "removed weak typing"),
        (dict(target="trt-int8", version="10.3.0", typing="weak"), "built strongly typed"),
        (dict(target="trt-int8", version="10.3.0", typing="strong", int8_route="implicit"), "weakly typed network"),
        (dict(target="trt-fp16", version="8.6.2"), "older than 10.3"),
        (dict(target="trt-fp16", version="10.2.0"), "older than 10.3"),
        (dict(target="trt-fp16", version="banana"), "cannot read the TensorRT version"),
        (dict(target="trt-fp16", version="10.3.0", typing="loose"), "tensorrt_typing='loose' is unknown"),
        (dict(target="onnx", version="10.3.0"), "not a TensorRT target"),
    ]:
        with pytest.raises(UserError, match=message):
            engines.plan_build(**kwargs)
    assert engines.text_plan(implicit).builder_flags == () and engines.text_plan(implicit).typing == "strong"


def _bindings(builder_flags, network_flags: dict, calibrator: bool):
    """The enum members a plan reads from `tensorrt`, as the 10.x and 11.0 Python API pages list them."""
    namespace = SimpleNamespace(BuilderFlag=SimpleNamespace(**{name: i for i, name in enumerate(builder_flags)}),
                                NetworkDefinitionCreationFlag=SimpleNamespace(**network_flags))
    if calibrator:
        namespace.IInt8EntropyCalibrator2 = object
    return namespace


TRT_10_API = _bindings(["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "TF32"],
                       {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}, calibrator=True)
TRT_11_API = _bindings(["TF32"], {"STRONGLY_TYPED": 0}, calibrator=False)


def test_api_check_and_network_flags_per_version():
    weak = engines.plan_build("trt-fp16", "10.3.0")
    assert engines.missing_api(weak, TRT_10_API) == []
    # A weak plan against 11's bindings names exactly what 11 removed.
    assert engines.missing_api(weak, TRT_11_API) == ["BuilderFlag.FP16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS"]
    implicit = engines.plan_build("trt-int8", "10.3.0", int8_route="implicit")
    assert "IInt8EntropyCalibrator2" in engines.missing_api(implicit, TRT_11_API)
    strong = engines.plan_build("trt-fp16", "11.0.0.1")
    assert engines.missing_api(strong, TRT_11_API) == []
    # STRONGLY_TYPED is bit 1 on 10.x (after EXPLICIT_BATCH) and bit 0 on 11: read from the enum, never hardcoded.
    assert engines.network_flag_bits(strong, TRT_10_API) == 2
    assert engines.network_flag_bits(strong, TRT_11_API) == 1
    assert engines.network_flag_bits(weak, TRT_10_API) == 0


# ----------------------------------------------------------------------------------------------- profiles

def test_profiles_from_options():
    options = engines.TensorRTOptions()
    defaults = engines.batch_profiles(options)
    assert defaults["image"] == engines.BatchProfile(*engines.IMAGE_PROFILE)
    assert defaults["text"] == engines.BatchProfile(*engines.TEXT_PROFILE)
    chosen = engines.batch_profiles(engines.TensorRTOptions(batch_min=2, batch_opt=4, batch_max=16, classes_max=512))
    assert chosen["image"].shapes(["batch", 3, 448, 448]) == ((2, 3, 448, 448), (4, 3, 448, 448), (16, 3, 448, 448))
    assert chosen["text"].shapes(["classes", 77]) == ((1, 77), (64, 77), (512, 77))
    with pytest.raises(UserError, match="1 ≤ min ≤ opt ≤ max"):
        engines.BatchProfile(4, 2, 8)
    with pytest.raises(UserError, match="1 ≤ min ≤ opt ≤ max"):
        engines.BatchProfile(0, 1, 1)
    with pytest.raises(UserError, match="profiled on axis 0 only"):
        chosen["image"].shapes(["batch", 3, "height", 448])


def test_runtime_chunks_calls_beyond_the_profile():
    assert trt_runtime.batch_chunks(3, 8) == [slice(0, 3)]
    assert trt_runtime.batch_chunks(17, 8) == [slice(0, 8), slice(8, 16), slice(16, 17)]
    assert trt_runtime.batch_chunks(0, 8) == []


# -------------------------------------------------------------------------------- FP32 layers (weak typing)

def test_layers_map_back_to_onnx_nodes():
    nodes = {"/a/MatMul", "/a/MatMul_1", "/ln/LayerNormalization"}
    assert engines.node_of_layer("/a/MatMul", nodes) == "/a/MatMul"
    assert engines.node_of_layer("/a/MatMul_1", nodes) == "/a/MatMul_1"         # its own node, not /a/MatMul
    assert engines.node_of_layer("/a/MatMul_1_2", nodes) == "/a/MatMul_1"       # parser's uniqueness suffix
    assert engines.node_of_layer("/a/MatMul_7", nodes) == "/a/MatMul"
    assert engines.node_of_layer("ONNXTRT_Broadcast", nodes) is None


def test_float32_pins_follow_the_policy():
    layers = [
        engines.LayerInfo(0, "/ln/LayerNormalization", "NORMALIZATION", ("FLOAT", "FLOAT"), ("FLOAT",)),
        engines.LayerInfo(1, "/attn/Softmax", "SOFTMAX", ("FLOAT",), ("FLOAT",)),
        engines.LayerInfo(2, "/assign/Equal", "ELEMENTWISE", ("FLOAT", "FLOAT"), ("BOOL",)),
        engines.LayerInfo(3, "/assign/Equal_1", "SHAPE", ("INT64",), ("INT64",)),
        engines.LayerInfo(4, "/mlp/fc1/MatMul", "MATRIX_MULTIPLY", ("FLOAT", "FLOAT"), ("FLOAT",)),
    ]
    nodes = {"/ln/LayerNormalization", "/attn/Softmax", "/assign/Equal", "/mlp/fc1/MatMul"}
    pins = engines.float32_pins(layers, nodes, kept_nodes={"/assign/Equal"})
    # LayerNorm and Softmax by type; the assignment's Equal computes in FP32 with its BOOL output left alone; its
    # shape-arithmetic helper touches no float; the MLP is free to run in FP16.
    assert pins == [(0, (0,)), (1, (0,)), (2, ())]


def test_kept_float_nodes_of_the_exported_image_graph(fp32_artifact):
    names, kept = engines.kept_float_nodes(fp32_artifact / "image.onnx")
    ops = {node.name: node.op_type for node in onnx.load(str(fp32_artifact / "image.onnx")).graph.node}
    assert kept <= names
    assert sum(ops[n] == "LayerNormalization" for n in kept) == 39          # every LayerNorm of the image tower
    assert any(n.endswith("/downsample/assign/q_proj/MatMul") for n in kept)  # the grouping assignment
    assert any("/mlp/" in n and ops[n] == "Erf" for n in kept)                # GELU's Erf stays float32…
    assert not any(ops[n] in ("MatMul", "Gemm") and "/assign/" not in n for n in kept)  # …its MatMuls do not


# ------------------------------------------------------------------------------------------------- caches

def test_timing_cache_is_keyed_by_version_and_gpu(tmp_path):
    orin = engines.timing_cache_path(tmp_path, "10.3.0", "Orin (nvgpu)", "8.7")
    assert orin == tmp_path / "tensorrt" / "timing-10.3.0-orin-nvgpu-sm87.cache"
    assert len({orin, engines.timing_cache_path(tmp_path, "10.3.0.30", "Orin (nvgpu)", "8.7"),
                engines.timing_cache_path(tmp_path, "10.3.0", "NVIDIA GeForce RTX 4090", "8.9")}) == 3


def test_calibration_cache_is_reused_only_when_its_key_matches(tmp_path):
    preprocess = Preprocess(height=224, width=224, stride=(112, 112))

    def key(count, version="10.3.0"):
        calibration = CalibrationSet.from_dir(CALIB_IMAGES, count, preprocess, seed=0, log=lambda m: None)
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
    orin = {"gpu": "Orin (nvgpu)", "compute_capability": "8.7"}
    assert trt_runtime.engine_incompatibility(built, "10.3.0", orin) is None
    assert trt_runtime.engine_incompatibility(built, "10.3.0.30", orin) is None      # __version__ has 3 or 4 parts
    wrong_version = trt_runtime.engine_incompatibility(built, "10.4.0", orin)
    assert "built with TensorRT 10.3.0 and this machine has TensorRT 10.4.0" in wrong_version
    assert "--target trt-int8" in wrong_version and "\n" not in wrong_version
    wrong_gpu = trt_runtime.engine_incompatibility(built, "10.3.0", {"gpu": "RTX 4090", "compute_capability": "8.9"})
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
    data["engines"] = {graph: {"file": f"{graph}.engine", "format": "tensorrt-engine"} for graph in ("image", "text")}
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


def test_tensorrt_modules_import_without_torch_or_tensorrt():
    import subprocess
    import sys
    script = ("import sys; sys.modules['torch'] = None; sys.modules['tensorrt'] = None\n"
              "import groupvit_edge.runtimes.tensorrt as r, groupvit_edge.exporters.tensorrt as e\n"
              "import groupvit_edge.checks.tensorrt\n"
              "assert not r.is_installed()\nprint(e.plan_build('trt-fp16', '10.3.0').typing)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "weak"


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
    assert manifest.data["tensorrt"]["plan"]["source"] == "qdq"
    drift = manifest.data["validation"]["drift_vs_fp32"]["model_level"]
    # Same bar as the QDQ graph in ONNX Runtime (test_calibration): a sane INT8 engine stays above 0.98.
    assert drift["group_embed_cosine"]["mean"] > 0.98
