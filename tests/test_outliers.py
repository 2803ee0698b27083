"""Activation outliers: the stress checkpoints keep fp32 outputs, the detection finds their channels and nothing in a
plain model, diagnose names them, and an INT8 export of a stressed model holds the budget or says why."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import CALIB_IMAGES, EVAL_IMAGES
from outliers import READERS, image_encoder_layers, save_outlier_checkpoint, with_outliers

from groupvit_edge.artifact_records import ManifestFields, PrecisionInfo
from groupvit_edge.cli import cli
from groupvit_edge.exporters import export
from groupvit_edge.metrics.blocks import BlockReport
from groupvit_edge.model import load_model
from groupvit_edge.model.blocks import block_of
from groupvit_edge.model.graphs import ImageGraph
from groupvit_edge.quantization.outliers import OUTLIER_RATIO, find_outlier_readers
from groupvit_edge.quantization.policy import image_graph_policy
from groupvit_edge.segmentation.preprocess import list_images, load_image, prepare

STRENGTH = 300


def quiet(message):
    pass


@pytest.fixture(scope="module")
def stressed_checkpoint(tmp_path_factory):
    return save_outlier_checkpoint(tmp_path_factory.mktemp("stress"), STRENGTH)


@pytest.fixture(scope="module")
def stressed_fp32(stressed_checkpoint, tmp_path_factory, bpe_path):
    out = tmp_path_factory.mktemp("stress-art") / "fp32"
    export(str(stressed_checkpoint), out, "onnx", image_size=448, tokenizer=bpe_path,
           validation_images=EVAL_IMAGES.glob("*.jpg").__next__(), log=quiet)
    return out


def _windows(manifest_dir, count=2):
    from groupvit_edge.artifact import read_manifest
    preprocess = read_manifest(manifest_dir).preprocess
    return np.concatenate([prepare(load_image(path), preprocess).windows[:1]
                           for path in list_images([CALIB_IMAGES])[:count]])


def test_the_stress_transform_keeps_what_the_model_computes():
    plain, stressed = load_model("random:0").model.eval(), load_model("random:0").model.eval()
    chosen = with_outliers(stressed, STRENGTH, channels=4, seed=1)
    gamma = image_encoder_layers(stressed)[0].layer_norm1.weight.detach()
    assert float(gamma[chosen[(0, "layer_norm1")]].abs().min()) > 10 * float(
        image_encoder_layers(plain)[0].layer_norm1.weight.detach().abs().max())
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ImageGraph(plain, 224, 224)(pixels), ImageGraph(stressed, 224, 224)(pixels)
    for a, b in zip(expected, got):
        if a.dtype.is_floating_point:
            assert float((a - b).abs().max()) < 1e-5


def test_a_plain_model_has_no_outlier_readers(onnx_artifact):
    fp32 = onnx.load(str(onnx_artifact / "image.onnx"))
    assert find_outlier_readers(fp32, image_graph_policy(fp32).quantizable, _windows(onnx_artifact)) == []


def test_the_detection_finds_the_injected_channels(stressed_fp32):
    fp32 = onnx.load(str(stressed_fp32 / "image.onnx"))
    readers = {r.node: r for r in find_outlier_readers(fp32, image_graph_policy(fp32).quantizable,
                                                        _windows(stressed_fp32))}
    model = load_model("random:0").model
    injected = with_outliers(model, STRENGTH)
    layers = len(image_encoder_layers(model))
    assert len(readers) == layers * sum(len(names) for names in READERS.values())
    stage0_q = next(r for name, r in readers.items() if "stages.0/layers.0/self_attn/q_proj" in name)
    assert list(stage0_q.channels) == injected[(0, "layer_norm1")] and stage0_q.ratio > OUTLIER_RATIO
    fc1 = next(r for name, r in readers.items() if "stages.0/layers.0/mlp/fc1" in name)
    assert list(fc1.channels) == injected[(0, "layer_norm2")]
    assert all(r.block for r in readers.values())


def test_the_manifest_keeps_outlier_readers_and_diagnose_names_them():
    fields = ManifestFields("manifest.json")
    node = "/vision_model/encoder/stages.0/layers.0/mlp/fc1/MatMul"
    precision = PrecisionInfo.parse(fields, {"target": "onnx-int8", "compute": "int8", "kept_float": [],
                                             "outlier_readers": [{"node": node, "channels": [3, 7], "ratio": 412.0}],
                                             "float_readers": [node]})
    (note,) = precision.outliers
    assert note.in_float and note.channels == (3, 7)
    report = BlockReport("fp32", "int8", 1, 1, (448, 448), 30.0, (), outliers=precision.outliers)
    text = report.to_markdown()
    assert "activation outliers the export found in 1 INT8 reader(s)" in text
    assert f"{node} (channels 3, 7: 412x the median; kept in float)" in text
    assert report.to_dict()["outlier_readers"][0]["node"] == node


def test_a_strength_that_fits_is_kept_over_one_with_a_higher_cosine_that_does_not():
    from types import SimpleNamespace

    from groupvit_edge.quantization.pipeline import _margin

    def check(cosine, fits):
        figures = SimpleNamespace(group_embed_cosine=SimpleNamespace(low=cosine, mean=cosine), fits=fits)
        return SimpleNamespace(drift=SimpleNamespace(uncertainty=figures, model_level=figures, fits=fits))
    budget = SimpleNamespace(failures=lambda drift: [] if drift.fits else ["cosine below"])
    fitting, failing = check(0.9960, True), check(0.9990, False)
    assert max([failing, fitting], key=lambda c: _margin(budget, c)) is fitting
    assert max([check(0.9961, True), fitting], key=lambda c: _margin(budget, c)).drift.model_level.\
        group_embed_cosine.mean == 0.9961


@pytest.mark.slow
def test_an_int8_export_of_a_stressed_model_holds_the_budget_or_exits_1(stressed_checkpoint, tmp_path, bpe_path):
    """Strength 300 breaks the default INT8 graph (cosine ~0.98); the export tries SmoothQuant strengths, then the
    outlier readers in float, then blocks, and either meets the budget or exits 1 — never a silent pass."""
    out = tmp_path / "int8"
    done = CliRunner().invoke(cli, [
        "export", "--model", str(stressed_checkpoint), "--target", "onnx-int8", "--out", str(out),
        "--calib-dir", str(CALIB_IMAGES), "--calib-count", "8", "--validation-images", str(EVAL_IMAGES),
        "--tokenizer", str(bpe_path), "--min-group-cosine", "0.995", "--min-confident-agreement", "99.5"])
    assert "activation outliers in" in done.output
    if done.exit_code == 1:
        assert "cannot be met" in done.output and not out.exists()
        return
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text())
    remedy = manifest["validation"]["outlier_remedy"]
    assert remedy["steps"][0]["remedy"] == "SmoothQuant α=0.95" and not remedy["steps"][0]["fits"]
    assert manifest["precision"]["outlier_readers"]
    assert manifest["validation"]["drift_vs_fp32"]["verdict"]["state"] == "within"


def test_each_smooth_quant_strength_keeps_its_own_calibration_cache_entry(tmp_path):
    """The remedy calibrates several strengths of one model; one entry per (weights, method) would let each
    evict the last, and every export of an outlier model would recalibrate all of them."""
    from groupvit_edge.quantization.cache import cached_entry

    def key(alpha):
        return {"weights_sha256": "ab" * 32, "method": {"method": "nncf", "smooth_quant_alpha": alpha}}

    def cached(alpha):
        return cached_entry(key(alpha), lambda: f"graph at {alpha}", "graph.txt", load=lambda p: p.read_text(),
                            save=lambda text, p: p.write_text(text), root=tmp_path, log=quiet)
    assert [cached(0.95)[1], cached(1.0)[1]] == [False, False]
    assert cached(0.95) == ("graph at 0.95", True) and cached(1.0) == ("graph at 1.0", True)


def test_outlier_readers_return_to_float_a_block_at_a_time():
    """q, k and v read one LayerNorm through one activation quantizer: the search never splits them."""
    from groupvit_edge.quantization.outliers import OutlierReader
    from groupvit_edge.quantization.pipeline import reader_groups

    def reader(layer, name, ratio):
        node = f"/vision_model/encoder/stages.0/layers.{layer}/{name}/MatMul"
        return OutlierReader(node, block_of(node), (3,), ratio)
    readers = [reader(1, "self_attn/q_proj", 400), reader(0, "mlp/fc1", 300), reader(1, "self_attn/k_proj", 390),
               reader(1, "self_attn/v_proj", 200)]
    groups = reader_groups(readers)
    assert [[r.node.split("/")[-2] for r in group] for group in groups] == [["q_proj", "k_proj", "v_proj"], ["fc1"]]
