"""Per-block divergence: which of GroupViT's blocks a reduced-precision artifact departs from fp32 at,
which blocks put the error there, and `--keep-float` taking the suggestion back into the INT8 export.

Real artifacts of random:0 at 224² and real COCO photos. One openvino-fp32 export serves as the fp32 reference
(its image.onnx, in ONNX Runtime) and as the OpenVINO candidate (its IR).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree

import numpy as np
import onnx
import pytest
from conftest import record_file
from onnx import numpy_helper

from groupvit_edge.errors import UserError
from groupvit_edge.exporters import export
from groupvit_edge.metrics.blocks import FLOAT32_SQNR_DB, TOLERANCE_DB, per_block_divergence
from groupvit_edge.model.blocks import block_of, block_tensors, forward_order, is_block_name
from groupvit_edge.quantization.policy import image_graph_policy, kept_float_blocks

SIZE = 224
NOISY_BLOCK = "stage1.layer1.mlp"
NOISY_NODE = "/vision_model/encoder/stages.1/layers.1/mlp/fc1/MatMul"


def _quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def fp32_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("blocks") / "fp32"
    export("random:0", out, "openvino-fp32", image_size=SIZE, log=_quiet)
    return out


@pytest.fixture(scope="module")
def calibration_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("calibration-cache")


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, calibration_cache):
    out = tmp_path_factory.mktemp("blocks") / "int8"
    export("random:0", out, "onnx-int8", image_size=SIZE, calib_method="minmax", cache_dir=calibration_cache,
           log=_quiet)
    return out


@pytest.fixture(scope="module")
def photos(coco_images):
    return coco_images[:2]


@pytest.fixture(scope="module")
def int8_report(fp32_artifact, int8_artifact, photos):
    return per_block_divergence(fp32_artifact, int8_artifact, photos)


@pytest.fixture(scope="module")
def fp32_graph(fp32_artifact):
    return onnx.load(str(fp32_artifact / "image.onnx"))


def test_the_model_declares_its_blocks_and_where_they_sit(fp32_graph):
    policy = image_graph_policy(fp32_graph)
    found = block_tensors(fp32_graph.graph)
    names = [block.block for block in found]
    # Every block the precision policy quantizes has declared tensors, in the order the graph computes them.
    assert names == policy.block_names() == forward_order(reversed(names))
    assert len(names) == 1 + 2 * (6 + 3 + 3) + 2 + 1 + 1          # embed, layers, groupings, projector, head
    assert names[0] == "patch_embed" and names[-1] == "projection" and names.index("stage0.grouping") == 13
    produced = {output for node in fp32_graph.graph.node for output in node.output}
    assert all(block.output in produced for block in found) and found[0].input == "pixels"
    assert found[2].input == found[1].output and found[13].input == found[12].output     # mlp, grouping
    assert block_of(NOISY_NODE) == NOISY_BLOCK and block_of("/Reshape_2") is None
    assert is_block_name("stage2.layer0.attention") and not is_block_name("stage2.layer0.attn")


def test_int8_vs_fp32_names_blocks_with_finite_figures_on_real_photos(int8_report, fp32_artifact, int8_artifact,
                                                                     photos, fp32_graph):
    from groupvit_edge import runtimes
    from groupvit_edge.metrics.drift import validate_candidate
    report = int8_report
    assert [f.block for f in report.blocks] == image_graph_policy(fp32_graph).block_names()
    assert report.photos == 2 and report.windows >= 2 and report.size == (SIZE, SIZE) and not report.unexposed
    for figures in report.blocks:
        values = (figures.cosine, figures.cosine_min, figures.sqnr_db, figures.max_abs, figures.own_sqnr_db,
                  figures.share)
        assert all(np.isfinite(value) for value in values), figures
        assert figures.sqnr_db < FLOAT32_SQNR_DB          # every block of an INT8 graph differs from fp32
    assert sum(f.share for f in report.blocks) == pytest.approx(100.0)
    # INT8 of these weights ends near a group cosine of 0.995, i.e. ~20 dB: some block must leave 30 dB.
    first = report.first_departure
    assert first is not None and first.sqnr_db < TOLERANCE_DB
    assert all(f.sqnr_db >= TOLERANCE_DB for f in report.blocks[:report.blocks.index(first)])
    # The last row is the graph's group_embeds: the figure the model-level drift reports, on the same windows
    # (exposing outputs may stop a fusion, hence not bit-exact).
    reference = runtimes.open(fp32_artifact, backend="onnxruntime")
    drift = validate_candidate(reference, int8_artifact, photos, labels="prototypes:4")
    assert report.blocks[-1].cosine == pytest.approx(drift.model_level.group_embed_cosine.mean, abs=1e-4)
    markdown = report.to_markdown()
    assert f"**{first.block}**" in markdown and markdown.count("\n| stage") == len(report.blocks) - 2
    chart = ElementTree.fromstring(report.chart_svg())
    assert len(chart.findall("{http://www.w3.org/2000/svg}g")) == len(report.blocks)
    assert json.loads(json.dumps(report.to_dict()))["first_departure"] == first.block


def test_noise_in_one_blocks_weights_is_reported_at_that_block(fp32_artifact, photos, tmp_path):
    noisy = tmp_path / "noisy"
    shutil.copytree(fp32_artifact, noisy)
    model = onnx.load(str(noisy / "image.onnx"))
    weight_name = next(node.input[1] for node in model.graph.node if node.name == NOISY_NODE)
    weight = next(init for init in model.graph.initializer if init.name == weight_name)
    values = numpy_helper.to_array(weight)
    # 0.3 σ of noise: this block's output falls to ~25 dB (measured), well below the 30 dB tolerance.
    noise = np.random.default_rng(0).normal(0.0, 0.3 * values.std(), values.shape).astype(values.dtype)
    weight.CopyFrom(numpy_helper.from_array(values + noise, weight_name))
    onnx.save(model, str(noisy / "image.onnx"))
    record_file(noisy, "image.onnx", ("graphs", "image", "sha256"))

    report = per_block_divergence(fp32_artifact, noisy, photos, backend="onnxruntime")
    names = [f.block for f in report.blocks]
    assert report.first_departure.block == NOISY_BLOCK
    assert all(f.identical for f in report.blocks[:names.index(NOISY_BLOCK)])      # same graph up to there
    # Teacher-forced, every other block computes exactly fp32's arithmetic: all the own noise is this block's,
    # although the grouping block downstream makes the stream worse (argmax flips) than the block itself did.
    assert report.ranking()[0].block == NOISY_BLOCK and report.ranking()[0].share > 99.9
    assert report.blocks[names.index("stage1.grouping")].sqnr_db < report.first_departure.sqnr_db - 6
    assert report.suggest() == [NOISY_BLOCK]


def test_openvino_ir_per_block_matches_fp32(fp32_artifact, photos):
    report = per_block_divergence(fp32_artifact, fp32_artifact, photos)
    assert "openvino" in report.candidate and "onnxruntime" in report.reference
    assert len(report.blocks) == 29 and not report.unexposed
    # fp32 in another backend differs by float reassociation only: the export's fp32 tolerance (1e-3 max abs)
    # at every block, and far above any reduced-precision SQNR (measured ≥ 114 dB, own ≥ 124 dB).
    assert all(f.max_abs <= 1e-3 and f.sqnr_db > 80 and f.own_sqnr_db > 80 for f in report.blocks)
    assert all(f.cosine > 0.99999 for f in report.blocks)
    assert report.first_departure is None and report.suggest() == []


def test_per_block_runs_without_torch(fp32_artifact, int8_artifact, photos):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # any `import torch` now raises ImportError
        import groupvit_edge.model
        from groupvit_edge.model.blocks import block_of
        from groupvit_edge.quantization.policy import image_graph_policy
        from groupvit_edge.metrics.blocks import per_block_divergence
        report = per_block_divergence({str(fp32_artifact)!r}, {str(int8_artifact)!r}, [{str(photos[0])!r}])
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print(len(report.blocks), report.first_departure is not None)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["29", "True"]


def test_keep_float_names_are_checked(fp32_graph, tmp_path):
    with pytest.raises(UserError, match="'stage0.grping' is not a block name"):
        export("random:0", tmp_path / "a", "onnx-int8", image_size=SIZE, keep_float="stage0.grping", log=_quiet)
    with pytest.raises(UserError, match="applies to onnx-int8, openvino-int8, trt-int8 only"):
        export("random:0", tmp_path / "b", "onnx", image_size=SIZE, keep_float="stage0.grouping", log=_quiet)
    policy = image_graph_policy(fp32_graph)
    with pytest.raises(UserError, match=r"'stage7.layer0.mlp' is not a block of .* stage0\.grouping, .*projection"):
        kept_float_blocks(policy, ["stage0.grouping", "stage7.layer0.mlp"])
    with pytest.raises(UserError, match="leaves nothing in INT8"):
        kept_float_blocks(policy, policy.block_names())
    assert kept_float_blocks(policy, ["projection", "stage0.grouping"]) == ["stage0.grouping", "projection"]
    assert not tmp_path.joinpath("a").exists() and not tmp_path.joinpath("b").exists()


def test_attention_products_go_to_int8_on_request_and_count_as_their_blocks(fp32_graph, calibration_cache, photos,
                                                                             tmp_path):
    plain, more = image_graph_policy(fp32_graph), image_graph_policy(fp32_graph, attention_products=True)
    products = sorted(set(more.quantizable) - set(plain.quantizable))
    # q·kᵀ and attention·v of 6 + 3 + 3 self-attention layers and of the two grouping blocks' cross-attention.
    assert len(products) == 2 * (6 + 3 + 3) + 2 * 2 and set(plain.quantizable) < set(more.quantizable)
    assert {block_of(name).rsplit(".", 1)[-1] for name in products} == {"attention", "grouping"}
    assert not set(more.quantizable) & set(more.assignment)
    weight_free = {node.name for node in fp32_graph.graph.node if node.op_type == "MatMul"} - set(more.quantizable)
    assert any("/assign/" not in name for name in weight_free)         # the grouping maps product stays float
    out = tmp_path / "int8-attention"
    export("random:0", out, "onnx-int8", image_size=SIZE, calib_method="minmax", cache_dir=calibration_cache,
           int8_attention=True, validation_images=[str(p) for p in photos], log=_quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    precision = manifest["precision"]
    assert precision["attention_products"] == "int8" and precision["qdq"]["symmetric_int8"]
    assert set(products) <= set(precision["quantized_nodes"])
    assert "grouping maps product" in precision["kept_float"]
    assert "activation×activation MatMul" not in precision["kept_float"]
    assert manifest["validation"]["drift_vs_fp32"]["model_level"]["group_embed_cosine"]["mean"] > 0.98
    with pytest.raises(UserError, match="--int8-attention applies to onnx-int8, openvino-int8, trt-int8 only"):
        export("random:0", tmp_path / "fp16", "onnx-fp16", image_size=SIZE, int8_attention=True, log=_quiet)


def test_per_block_compares_artifacts_only(fp32_artifact, tmp_path):
    with pytest.raises(UserError, match="is not an artifact: per-block divergence compares"):
        per_block_divergence("random:0", fp32_artifact)


def test_tensorrt_probe_engines_on_the_recording_fakes(fp32_artifact, int8_artifact, photos):
    """The TensorRT path without a GPU: engines rebuilt with the artifact's recorded plan from its QDQ graph,
    block tensors marked, teacher-forced inputs profiled — on the recording fake of TensorRT 10.3 (JetPack 6),
    which runs the ONNX an engine was built from in ONNX Runtime as written (S8 activations), so it must give ONNX
    Runtime's figures for that form."""
    import tensorrt_harness as harness
    from tensorrt_harness.fake import FakeDeviceMemory, TensorRTWorld, fake_tensorrt

    from groupvit_edge.artifact import Manifest, read_manifest
    from groupvit_edge.runtimes import backend_options
    from groupvit_edge.runtimes import onnxruntime as ort_runtime
    from groupvit_edge.runtimes import tensorrt as trt_runtime
    from groupvit_edge.runtimes.tensorrt import build as trt_build
    from groupvit_edge.segmentation.preprocess import load_image, prepare
    harness.fetch_or_skip("10.3")
    trt = fake_tensorrt(harness.api_snapshot("10.3"), world := TensorRTWorld())
    int8 = read_manifest(int8_artifact)
    plan = trt_build.plan_build("trt-int8", "10.3.0", "weak", "explicit")   # QDQ graph, policy layers pinned
    image = int8.data["graphs"]["image"]
    manifest = Manifest({**int8.data, "engines": {"image": {**image, "source": image["file"],
                                                            "plan": plan.to_manifest()}}}, int8.directory)
    found = block_tensors(onnx.load(str(fp32_artifact / "image.onnx"), load_external_data=False).graph)
    outputs = sorted({t for block in found for t in (block.input, block.output)} - {"pixels"})
    forced = sorted({block.input for block in found} - {"pixels"})
    window = prepare(load_image(photos[0]), int8.preprocess).windows[0]
    with trt_runtime.BlockProbe(manifest, outputs, forced, backend_options("tensorrt", {}), trt=trt,
                                memory=FakeDeviceMemory(world)) as engine_probe, \
            ort_runtime.BlockProbe(manifest, outputs, forced,
                                   backend_options("onnxruntime", {"int8_activations": "s8"})) as ort_probe:
        assert engine_probe.missing == []
        free = ort_probe.run(window)
        assert all(np.allclose(engine_probe.run(window)[t], free[t], atol=1e-5) for t in outputs)
        forced_run = engine_probe.run(window, free)
        assert all(np.allclose(forced_run[t], ort_probe.run(window, free)[t], atol=1e-5) for t in outputs)
    assert trt.recorder.unchecked() == []
    assert trt.recorder.uncovered(trt_build.required_api(plan) + trt_runtime.RUNTIME_API) == []


@pytest.mark.slow
def test_suggested_keep_float_is_accepted_and_improves_drift(int8_report, int8_artifact, fp32_artifact, photos,
                                                             calibration_cache, tmp_path):
    suggested = int8_report.suggest()
    assert suggested and all(is_block_name(name) for name in suggested)
    kept = tmp_path / "int8-kept"
    export("random:0", kept, "onnx-int8", image_size=SIZE, calib_method="minmax", cache_dir=calibration_cache,
           keep_float=",".join(suggested), log=_quiet)
    plain, better = (json.loads((path / "manifest.json").read_text()) for path in (int8_artifact, kept))
    same = ("sha256", "count", "seed", "method", "weight_bits", "held_out")
    assert [plain["calibration"][key] for key in same] == [better["calibration"][key] for key in same]
    assert better["precision"]["keep_float"] == suggested
    assert not [node for node in better["precision"]["quantized_nodes"] if block_of(node) in suggested]
    # The mean group-embedding cosine is what the drift budget gates; the same held-out photos on both sides.
    cosine = [m["validation"]["drift_vs_fp32"]["model_level"]["group_embed_cosine"]["mean"] for m in (plain, better)]
    assert cosine[1] > cosine[0], cosine
    # The kept blocks now compute fp32's arithmetic from fp32's input: no own noise of INT8 size left.
    again = per_block_divergence(fp32_artifact, kept, photos)
    assert all(f.own_sqnr_db > 60 for f in again.blocks if f.block in suggested)
    assert set(suggested) <= set(again.suggest())          # a next suggestion keeps them and may add more


@pytest.mark.slow
def test_drift_budget_search_starts_from_the_kept_blocks(calibration_cache, tmp_path):
    out = tmp_path / "int8-budget"
    # Just above what keeping stage0.grouping alone reaches on the held-out sample photos (0.99512, measured),
    # so the search must run; with all other blocks but one in float it fits.
    export("random:0", out, "onnx-int8", image_size=SIZE, calib_method="minmax", cache_dir=calibration_cache,
           keep_float="stage0.grouping", min_group_cosine=0.9952, search_steps=2, log=_quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    search = manifest["validation"]["drift_budget_search"]
    ranked = [entry["block"] for entry in search["ranking"]]
    assert search["fits"] and len(ranked) == 28 and "stage0.grouping" not in ranked
    assert manifest["precision"]["keep_float"] == ["stage0.grouping"]
    assert set(manifest["precision"]["kept_float"]) >= {"stage0.grouping", *search["kept_float_blocks"]}
