"""COCO calibration, the precision policy, the cache, and the FP16/INT8 targets built from them."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import CALIB_IMAGES, EVAL_IMAGES
from PIL import Image

from groupvit_edge import hardware, runtimes
from groupvit_edge.artifact import Preprocess, read_manifest
from groupvit_edge.errors import UserError
from groupvit_edge.exporters import export
from groupvit_edge.quantization.cache import cached_quantization
from groupvit_edge.quantization.calibration_set import CalibrationSet
from groupvit_edge.quantization.policy import block_of, image_graph_policy

SMALL = Preprocess(height=224, width=224, stride=(112, 112))


def test_calibration_set_sampling_holdout_and_skips(tmp_path):
    for index in range(6):
        Image.new("RGB", (64, 48), (index * 40, 10, 10)).save(tmp_path / f"img{index}.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    logs = []
    first = CalibrationSet.resolve(tmp_path, 4, SMALL, seed=1, held_out=2, log=logs.append)
    second = CalibrationSet.resolve(tmp_path, 4, SMALL, seed=1, held_out=2, log=logs.append)
    assert first.images == second.images and len(first.images) == 4
    assert not set(first.images) & set(first.held_out) and len(first.held_out) == 2
    assert first.skipped_files == 1 and "non-image" in logs[0]
    with pytest.warns(UserWarning, match="unreadable"):
        windows = CalibrationSet(sorted(tmp_path.glob("*.jpg")), [], SMALL).windows(progress=False)
    assert windows.shape[1:] == (3, 224, 224) and windows.dtype == np.float32
    fingerprint = first.fingerprint()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(first.images[0])
    assert first.fingerprint() != fingerprint          # edited image → new key → no stale cache
    with pytest.raises(UserError, match="not a directory"):
        CalibrationSet.resolve(tmp_path / "missing", 4, SMALL)


def test_cache_reuses_only_on_an_identical_key(tmp_path):
    built = []
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))

    def build():
        built.append(1)
        return model

    key = {"weights_sha256": "a" * 64, "images_sha256": "b", "method": {"method": "nncf"}, "count": 4}
    logs = []
    assert cached_quantization(key, build, tmp_path, logs.append)[1] is False
    assert cached_quantization(key, build, tmp_path, logs.append)[1] is True
    changed = {**key, "images_sha256": "c", "count": 8}
    assert cached_quantization(changed, build, tmp_path, logs.append)[1] is False
    assert len(built) == 2 and "different count, images_sha256; recalibrating" in logs[-1]


def test_policy_on_the_exported_graph(onnx_artifact):
    policy = image_graph_policy(onnx.load(str(onnx_artifact / "image.onnx")))
    assert policy.quantizable and all("/assign/MatMul" not in n and "Softmax" not in n for n in policy.quantizable)
    assert any(n.endswith("/downsample/assign/q_proj/MatMul") for n in policy.assignment)
    assert not set(policy.quantizable) & set(policy.assignment)
    blocks = policy.blocks()
    assert {"patch_embed", "stage0.layer0.attention", "stage0.grouping", "stage2.layer2.mlp"} <= set(blocks)
    assert "other" not in blocks
    assert block_of("/vision_model/encoder/stages.1/layers.2/mlp/fc1/MatMul") == "stage1.layer2.mlp"
    fewer = policy.without_blocks(["stage0.grouping"])
    assert not set(fewer.quantizable) & set(blocks["stage0.grouping"])


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, random_checkpoint, bpe_path, coco_images):
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("int8") / "int8"
    logs = []
    export(str(random_checkpoint), out, "onnx-int8", image_size=224, tokenizer=bpe_path, calib_dir=CALIB_IMAGES,
           calib_count=6, validation_images=EVAL_IMAGES / coco_images[0].name, cache_dir=cache, log=logs.append)
    return out, cache, logs


def test_u8_activation_form_keeps_every_quantization_level(int8_artifact):
    """ONNX Runtime runs the symmetric S8 graph with unsigned activations on x86; the shifted grid must quantize
    every value to the same level. With ORT's graph optimisations off, Q/DQ are computed literally, so the two forms
    give the same numbers; weights stay int8."""
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    from groupvit_edge.quantization.form import unsigned_activations
    out, _, _ = int8_artifact
    signed = onnx.load(str(out / "image.int8.onnx"))
    unsigned = unsigned_activations(onnx.load(str(out / "image.int8.onnx")))
    constants = {init.name: init for init in unsigned.graph.initializer}
    activation_zeros = [constants[node.input[2]] for node in unsigned.graph.node
                        if node.op_type == "QuantizeLinear" and node.input[0] not in constants]
    weight_zeros = [constants[node.input[2]] for node in unsigned.graph.node
                    if node.op_type == "DequantizeLinear" and node.input[0] in constants]
    assert activation_zeros and {zero.data_type for zero in activation_zeros} == {TensorProto.UINT8}
    assert {int(numpy_helper.to_array(zero).max()) for zero in activation_zeros} == {128}
    assert weight_zeros and {zero.data_type for zero in weight_zeros} == {TensorProto.INT8}
    settings = ort.SessionOptions()
    settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32) * 2

    def run(model):
        session = ort.InferenceSession(model.SerializeToString(), settings, providers=["CPUExecutionProvider"])
        return session.run(None, {"pixels": pixels})

    for a, b in zip(run(signed), run(unsigned)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_onnxruntime_chooses_the_activation_form_by_cpu_and_on_request(int8_artifact, onnx_artifact, monkeypatch):
    from groupvit_edge.runtimes import onnxruntime as ort_backend
    out, _, _ = int8_artifact
    manifest = read_manifest(out)
    assert [c.options for c in ort_backend.configurations(manifest)] == [{"int8_activations": "s8"},
                                                                         {"int8_activations": "u8"}]
    assert "U8 activations" in runtimes.open(out, "onnxruntime", int8_activations="u8").description
    assert "S8 activations" in runtimes.open(out, "onnxruntime", int8_activations="s8").description
    monkeypatch.setattr(hardware, "is_x86", lambda: False)
    assert ort_backend.activation_form(manifest, "auto") == "s8"
    monkeypatch.setattr(hardware, "is_x86", lambda: True)
    assert ort_backend.activation_form(manifest, "auto") == "u8"
    fp32 = read_manifest(onnx_artifact)      # other graphs have no activation form
    assert ort_backend.activation_form(fp32, "u8") is None and len(ort_backend.configurations(fp32)) == 1
    assert "activations" not in runtimes.open(onnx_artifact, "onnxruntime", int8_activations="u8").description
    with pytest.raises(UserError, match="int8-activations"):
        runtimes.open(out, "onnxruntime", int8_activations="u16")


def test_int8_artifact_is_symmetric_qdq_under_the_policy(int8_artifact):
    out, _, logs = int8_artifact
    manifest = read_manifest(out)
    precision_info = manifest.data["precision"]
    assert precision_info["target"] == "onnx-int8" and precision_info["compute"] == "int8"
    assert precision_info["qdq"]["symmetric_int8"] and precision_info["qdq"]["per_channel_qdq"] > 0
    quantized = precision_info["quantized_nodes"]
    assert quantized and not [n for n in quantized if "LayerNorm" in n or "Softmax" in n or "/assign/MatMul" in n]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == ["image.int8.onnx", "text.onnx"]
    calibration = manifest.data["calibration"]
    assert calibration["count"] == 6 and len(calibration["sha256"]) == 64 and calibration["method"] == "nncf"
    drift = manifest.data["validation"]["drift_vs_fp32"]
    print("int8 (6 calibration images, 224²) drift vs fp32:", json.dumps(drift["model_level"]))
    # 6 calibration images is far below the 128 the target uses; 0.98 still separates a sane INT8 graph from
    # a broken one (the weight-noise artifact in test_drift scores far lower).
    assert drift["model_level"]["group_embed_cosine"]["mean"] > 0.98
    runtime = runtimes.open(out)
    encoding = runtime.encode_image(np.zeros((2, 3, 224, 224), dtype=np.float32))
    assert encoding.group_embeds.shape == (2, 8, 256) and np.isfinite(encoding.group_embeds).all()


def test_second_int8_export_reuses_the_calibration(int8_artifact, tmp_path, random_checkpoint, bpe_path,
                                                   coco_images):
    _, cache, _ = int8_artifact
    logs = []
    export(str(random_checkpoint), tmp_path / "again", "onnx-int8", image_size=224, tokenizer=bpe_path,
           calib_dir=CALIB_IMAGES, calib_count=6, validation_images=EVAL_IMAGES / coco_images[0].name,
           cache_dir=cache, log=logs.append)
    assert any(line.startswith("reusing calibration cache") for line in logs)
    assert read_manifest(tmp_path / "again").data["calibration"]["reused_cache"] is True


def test_fp16_artifact(tmp_path, random_checkpoint, bpe_path, coco_images):
    export(str(random_checkpoint), tmp_path / "fp16", "onnx-fp16", image_size=224, tokenizer=bpe_path,
           validation_images=EVAL_IMAGES / coco_images[1].name, log=lambda m: None)
    manifest = read_manifest(tmp_path / "fp16")
    assert manifest.data["precision"]["compute"] == "fp16"
    model = onnx.load(str(tmp_path / "fp16" / "image.fp16.onnx"))
    float16 = onnx.TensorProto.FLOAT16
    assert sum(init.data_type == float16 for init in model.graph.initializer) > 50
    layer_norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert layer_norms and all(n.name.startswith("/") for n in layer_norms)   # kept as float32 nodes
    drift = manifest.data["validation"]["drift_vs_fp32"]["model_level"]
    # fp16 rounding of embeddings: the bar is cosine ≥ 0.9999 and confident agreement ≥ 99.99%.
    assert drift["group_embed_cosine"]["mean"] >= 0.9999
    assert drift["group_agreement_confident"] >= 99.99


def test_dynamic_int8_is_an_onnxruntime_only_artifact(tmp_path, random_checkpoint, bpe_path, coco_images):
    export("random:0", tmp_path / "dyn", "onnx-int8-dynamic", image_size=224, log=lambda m: None)   # no inputs
    manifest = read_manifest(tmp_path / "dyn")
    precision_info = manifest.data["precision"]
    assert precision_info["compute"] == "int8-dynamic" and precision_info["backends"] == ["onnxruntime"]
    assert manifest.data["calibration"] is None     # no calibration images: activations are quantized at run time
    model = onnx.load(str(tmp_path / "dyn" / "image.int8-dynamic.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    quantized = precision_info["quantized_nodes"]
    assert len(quantized) > 50 and not [n for n in quantized if "/assign/q_proj" in n or "/assign/k_proj" in n]
    drift = manifest.data["validation"]["drift_vs_fp32"]["model_level"]
    print("int8-dynamic (224²) drift vs fp32:", json.dumps(drift))
    assert drift["group_embed_cosine"]["mean"] > 0.98
    assert runtimes.open(tmp_path / "dyn").name == "onnxruntime"
    with pytest.raises(UserError, match="OpenVINO IR"):
        runtimes.open(tmp_path / "dyn", backend="openvino")


def test_ort_minmax_sees_every_calibration_window(tmp_path):
    """onnxruntime 1.32's CalibMaxIntermediateOutputs drops all but the last partial pass; our strided MinMax
    must keep the range of a window in the first pass."""
    from onnx import TensorProto, helper, numpy_helper

    from groupvit_edge.quantization.policy import Policy
    from groupvit_edge.quantization.statistics import MethodOptions, minmax_stride, quantize
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["pixels", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    windows = np.full((32, 4), 0.5, dtype=np.float32)
    windows[0, 0] = 100.0                      # the largest activation is in the first pass only
    assert minmax_stride(32) == 16 and minmax_stride(31) == 1 and minmax_stride(287) == 7
    quantized = quantize(model, windows, Policy(["mm"], [], []), MethodOptions("minmax", weight_bits=8),
                         log=lambda m: None)
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    pixels_q = next(n for n in quantized.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "pixels")
    assert inits[pixels_q.input[1]] == pytest.approx(100.0 / 127, rel=1e-3)
