"""The ONNX artifact: graphs every backend parses, a manifest runtimes can trust, atomic writes."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from groupvit_edge.artifact import read_manifest
from groupvit_edge.errors import UserError, ValidationFailed
from groupvit_edge.exporters import export
from groupvit_edge.exporters import onnx as onnx_exporter
from groupvit_edge.exporters import run as export_run

# Ops a TensorRT 10.3 ONNX parser or a deterministic export must not see (noise, scatter, OneHot).
FORBIDDEN_OPS = {"OneHot", "ScatterElements", "ScatterND", "RandomUniform", "RandomNormal",
                 "RandomUniformLike", "RandomNormalLike", "Multinomial"}


def _ops(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def test_artifact_layout_and_manifest(onnx_artifact, random_checkpoint):
    manifest = read_manifest(onnx_artifact)
    data = manifest.data
    assert sorted(p.name for p in onnx_artifact.iterdir()) == ["image.onnx", "manifest.json", "text.onnx",
                                                               "tokenizer", "vocab.npz"]
    assert data["model"]["id"] == str(random_checkpoint)
    assert len(data["model"]["weights_sha256"]) == 64
    assert data["preprocess"]["height"] == data["preprocess"]["width"] == 448
    assert data["patch_size"] == 16 and data["num_groups"] == 8 and data["embed_dim"] == 256
    assert data["logit_scale"] == pytest.approx(np.exp(2.6592), rel=1e-6)
    image = data["graphs"]["image"]
    assert [i["name"] for i in image["inputs"]] == ["pixels"]
    assert image["inputs"][0]["shape"] == ["batch", 3, 448, 448]
    assert {o["name"]: o["shape"] for o in image["outputs"]} == {
        "group_embeds": ["batch", 8, 256], "image_embed": ["batch", 256], "grouping": ["batch", 8, 28, 28],
        "stage1_grouping": ["batch", 64, 28, 28]}
    assert data["graphs"]["text"]["inputs"][0] == {"name": "token_ids", "dtype": "int32", "shape": ["classes", 77]}
    assert data["vocabulary"]["labels"] == ["cat", "dog", "grass"]
    validation = data["validation"]["fp32_vs_pytorch"]
    print("export validation:", json.dumps(validation))
    assert validation["images"] == ["000000000139.jpg"] and validation["photos"] == "--validation-images"
    assert max(validation["model_level"]["max_abs_diff"].values()) < 1e-4
    assert validation["model_level"]["group_agreement"] > 99.9 and validation["failures"] == []
    assert validation["text_max_abs_diff"] < 1e-4


def test_graphs_use_portable_ops(onnx_artifact):
    image_ops, text_ops = _ops(onnx_artifact / "image.onnx"), _ops(onnx_artifact / "text.onnx")
    assert not (set(image_ops) | set(text_ops)) & FORBIDDEN_OPS
    # LayerNorm as one op (opset ≥ 17), never decomposed: gcc-yfcc has 39 in the image tower, 25 in the text one.
    assert image_ops["LayerNormalization"] == 39 and text_ops["LayerNormalization"] == 25
    assert image_ops["ReduceMean"] == 1 and not {"Pow", "Sqrt"} & (set(image_ops) | set(text_ops))
    assert "ArgMax" not in text_ops
    # Every node keeps its module path: the precision policy and the manifest are written in those names.
    assert all(node.name.startswith("/") for node in onnx.load(str(onnx_artifact / "image.onnx")).graph.node)
    model = onnx.load(str(onnx_artifact / "image.onnx"), load_external_data=False)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_dynamic_batch(onnx_artifact, reference_runtime):
    from groupvit_edge.runtimes.onnxruntime import OnnxRuntime
    runtime = OnnxRuntime(read_manifest(onnx_artifact))
    pixels = np.random.default_rng(0).standard_normal((3, 3, 448, 448)).astype(np.float32)
    ours, theirs = runtime.encode_image(pixels), reference_runtime.encode_image(pixels)
    assert ours.group_embeds.shape == (3, 8, 256) and ours.grouping.shape == (3, 8, 28, 28)
    assert np.abs(ours.group_embeds - theirs.group_embeds).max() < 1e-4
    tokens = np.zeros((5, 77), dtype=np.int32)
    tokens[:, :2] = [49406, 49407]
    assert runtime.encode_text(tokens).shape == (5, 256)


def test_non_square_export(tmp_path, random_checkpoint, bpe_path):
    result = export(str(random_checkpoint), tmp_path / "wide", "onnx", image_size=(224, 320), tokenizer=bpe_path,
                    log=lambda m: None)
    shapes = {o["name"]: o["shape"] for o in result.manifest.graphs["image"].outputs}
    assert shapes["grouping"] == ["batch", 8, 14, 20]
    assert result.manifest.data["validation"]["fp32_vs_pytorch"]["model_level"]["group_agreement"] > 99.9


def test_failed_validation_leaves_nothing(tmp_path, random_checkpoint, bpe_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValidationFailed("the ONNX graphs disagree with PyTorch; the artifact was not written")
    monkeypatch.setattr(onnx_exporter, "_validated", broken)
    with pytest.raises(ValidationFailed, match="not written"):
        export(str(random_checkpoint), tmp_path / "art", image_size=224, tokenizer=bpe_path, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_nothing(tmp_path, random_checkpoint, bpe_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(export_run, "_copy_tokenizer", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export(str(random_checkpoint), tmp_path / "art", image_size=224, tokenizer=bpe_path, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_foreign_directory(tmp_path, random_checkpoint, bpe_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"...")
    with pytest.raises(UserError, match="not a groupvit-edge artifact"):
        export(str(random_checkpoint), precious, image_size=224, tokenizer=bpe_path, log=lambda m: None)
    assert (precious / "holiday.jpg").exists()


def test_export_ships_its_tokenizer(tmp_path, random_checkpoint):
    """random:SEED and .pth checkpoints carry no vocabulary: the CLIP BPE file shipped with groupvit-edge is used."""
    from groupvit_edge.assets import default_tokenizer
    from groupvit_edge.segmentation import Segmenter
    export(str(random_checkpoint), tmp_path / "art", image_size=224, log=lambda m: None)
    tokenizer = read_manifest(tmp_path / "art").data["tokenizer"]
    assert tokenizer["files"] == [default_tokenizer().name]
    with Segmenter.open(tmp_path / "art", ["cat", "dog"]) as segmenter:
        assert segmenter.vocabulary.text_embeds.shape == (2, 256)
