"""Export as a new user meets it: every target from `--model random:0 --target T --out DIR` alone, problems found
before any tracing, a drift budget that can be trusted, and a summary to act on."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from conftest import CALIB_IMAGES

from groupvit_edge.artifact import read_manifest
from groupvit_edge.errors import UserError
from groupvit_edge.exporters import export
from groupvit_edge.quantization.search import fewest_fitting

SIZE = 224


def cli(*args, cwd=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "groupvit_edge.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


def quiet(message):
    pass


@pytest.mark.parametrize("target", ["onnx-fp16"])
def test_fp16_targets_export_from_the_three_flags_alone(tmp_path, target):
    """FP16 is not calibrated, so an FP16 export needs no calibration photos: drift is measured on the shipped sample
    photos (openvino-fp16 is checked the same way through the API in test_openvino)."""
    done = cli("export", "--model", "random:0", "--target", target, "--image-size", SIZE, "--out", tmp_path / "art")
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(tmp_path / "art")
    drift = manifest.data["validation"]["drift_vs_fp32"]
    assert drift["photos"].endswith("sample photos shipped with groupvit-edge") and len(drift["images"]) >= 8
    assert "wrote" in done.stdout and "next" in done.stdout and f"groupvit-edge segment {tmp_path / 'art'}" in done.stdout


def test_int8_calibrates_on_the_shipped_photos_when_given_none(tmp_path):
    """An INT8 export needs no tokenizer, calibration or validation photos: it uses the shipped vocabulary, calibrates
    on part of the shipped sample photos and measures drift on the rest. (The onnx, onnx-int8-dynamic and
    openvino-fp32 targets are exported the same way by test_export, test_calibration and test_openvino.)"""
    result = export("random:0", tmp_path / "art", "onnx-int8", image_size=SIZE, calib_method="minmax",
                    cache_dir=tmp_path / "cache", log=quiet)
    data = result.manifest.data
    assert data["tokenizer"]["files"] == ["bpe_simple_vocab_16e6.txt.gz"]
    calibration = data["calibration"]
    assert calibration["source"] == "6 of the 8 sample photos shipped with groupvit-edge"
    assert calibration["held_out_source"] == "the other 2 sample photos"
    assert data["validation"]["drift_vs_fp32"]["images"] == calibration["held_out"]


def test_int8_with_every_calibration_image_drawn_measures_on_the_shipped_photos(tmp_path):
    """--calib-count equal to the number of photos leaves none held out: drift is then measured on the shipped
    sample photos instead of failing the export."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in sorted(CALIB_IMAGES.glob("*.jpg"))[:4]:
        shutil.copy(image, photos / image.name)
    logs = []
    result = export("random:0", tmp_path / "art", "onnx-int8", image_size=SIZE, calib_dir=photos, calib_count=4,
                    calib_method="minmax", cache_dir=tmp_path / "cache", log=logs.append)
    calibration = result.manifest.data["calibration"]
    assert calibration["count"] == 4 and "every image of" in calibration["held_out_source"]
    assert any("drift measured on the 8 sample photos" in line for line in logs)


def test_problems_are_all_reported_before_any_tracing(tmp_path):
    """A missing --calib-dir, an option of another target and a bad size are reported together, in one message,
    before any tracing, so a user fixes them in one round and no half-written artifact is left."""
    started = time.perf_counter()
    done = cli("export", "--model", "random:0", "--target", "onnx-int8", "--calib-dir", tmp_path / "missing",
               "--batch-max", "4", "--image-size", "230", "--out", tmp_path / "art")
    seconds = time.perf_counter() - started
    assert done.returncode == 2
    assert "cannot start (3 problems)" in done.stderr
    assert "--calib-dir" in done.stderr and "--batch-max applies to trt-fp16, trt-int8 only" in done.stderr
    assert "not a multiple of the patch size" in done.stderr
    assert not (tmp_path / "art").exists()
    print(f"problems reported in {seconds:.2f} s (subprocess start included)")


def test_an_option_of_another_target_is_refused_even_at_its_default_value(tmp_path):
    """`--seed 0` is the default, but a user who types it on an fp32 export expects it to matter: say it does not."""
    with pytest.raises(UserError, match="seed applies to .*onnx-int8"):
        export("random:0", tmp_path / "art", "onnx", seed=0, log=quiet)
    assert not (tmp_path / "art").exists()


def test_tensorrt_is_refused_before_any_tracing(tmp_path):
    import importlib.util
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the refusal is for machines without it")
    done = cli("export", "--model", "random:0", "--target", "trt-fp16", "--out", tmp_path / "art")
    assert done.returncode == 2 and "TensorRT is not installed" in done.stderr
    assert done.stderr.count("TensorRT is not installed") == 1 and not (tmp_path / "art").exists()


def test_unknown_and_misspelled_options_raise(tmp_path):
    with pytest.raises(UserError, match="calib_cout.*did you mean calib_count"):
        export("random:0", tmp_path / "art", "onnx-int8", calib_cout=8, log=quiet)
    with pytest.raises(UserError, match="--max-drop nan is out of range"):
        export("random:0", tmp_path / "art", "onnx-int8", max_drop=float("nan"), log=quiet)
    from groupvit_edge import runtimes
    with pytest.raises(UserError, match="'thread' is unknown"):
        runtimes.open("random:0", thread=2)
    with pytest.raises(UserError, match="'streams' applies to openvino, not to torch"):
        runtimes.open("random:0", streams=2)


def test_fewest_fitting_is_a_capped_binary_search():
    calls = []

    def fits_from(threshold):
        def fits(count):
            calls.append(count)
            return count >= threshold
        return fits

    assert fewest_fitting(29, 8, fits_from(7)) == 7 and calls[0] == 28 and len(calls) <= 8
    calls.clear()
    assert fewest_fitting(29, 2, fits_from(7)) == 14 and calls == [28, 14]      # the cap keeps the best so far
    assert fewest_fitting(29, 8, fits_from(29)) is None                         # only all-float would fit
    assert fewest_fitting(1, 8, fits_from(0)) is None


def test_returning_every_quantized_node_to_float_gives_the_fp32_graph(onnx_artifact):
    """The search's candidates come from one calibration: with every node back, the graph is fp32 again."""
    import onnxruntime as ort

    from groupvit_edge.quantization.form import quantized_nodes, return_to_float
    from groupvit_edge.quantization.policy import image_graph_policy
    from groupvit_edge.quantization.statistics import MethodOptions, quantize
    fp32 = onnx.load(str(onnx_artifact / "image.onnx"))
    policy = image_graph_policy(fp32, attention_products=True)       # activation×activation products too
    pixels = np.random.default_rng(0).standard_normal((2, 3, 448, 448)).astype(np.float32)
    quantized = quantize(fp32, pixels, policy, MethodOptions("minmax"), log=quiet)
    assert set(policy.quantizable) <= set(quantized_nodes(quantized))
    restored = return_to_float(quantized, fp32, policy.quantizable)
    assert not [n for n in restored.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    expected = ort.InferenceSession(fp32.SerializeToString()).run(None, {"pixels": pixels[:1]})
    actual = ort.InferenceSession(restored.SerializeToString()).run(None, {"pixels": pixels[:1]})
    assert max(float(np.abs(a - b).max()) for a, b in zip(expected, actual)) < 1e-5


@pytest.mark.slow      # the budget search measures each step on the 32 held-out photos: ~3 min on 2 cores
def test_readme_python_example_with_a_drift_budget(tmp_path):
    """The README's export(..., calib_dir=..., calib_count=16, max_drop=1.0) runs to the end, and the artifact meets
    the budget it records."""
    result = export("random:0", tmp_path / "int8", "onnx-int8", image_size=SIZE, calib_dir=CALIB_IMAGES,
                    calib_count=4, max_drop=1.0, cache_dir=tmp_path / "cache", log=quiet)
    validation = result.manifest.data["validation"]
    drift = validation["drift_vs_fp32"]
    assert drift["budget"] == "confident group agreement ≥ 99.9%, group cosine mean ≥ 0.995" and drift["failures"] == []
    assert drift["model_level"]["group_agreement_confident"] >= 99.9
    assert drift["model_level"]["group_embed_cosine"]["mean"] >= 0.995
    search = validation.get("drift_budget_search")     # absent when the fully quantized graph already fits
    if search is not None:
        print("search:", json.dumps({k: search[k] for k in ("budget", "kept_float_blocks", "image_graph_ms")}))


def test_an_unreachable_budget_exits_1_with_the_table_and_no_artifact(tmp_path):
    """A budget no INT8 graph can meet stops after the capped search, prints the table of what was tried, exits 1
    and leaves no artifact: a graph outside the budget must never be shipped as if it met it."""
    done = cli("export", "--model", "random:0", "--target", "onnx-int8", "--image-size", SIZE, "--calib-method",
               "minmax", "--min-group-cosine", "1.0", "--search-steps", "3", "--cache-dir", tmp_path / "cache",
               "--out", tmp_path / "art")
    assert done.returncode == 1, done.stderr
    assert "cannot be met with any block in INT8" in done.stderr
    assert "| blocks in float | confident group agree % |" in done.stderr
    assert done.stderr.count("| no |") >= 2
    assert not (tmp_path / "art").exists() and not list(tmp_path.glob(".art*"))


@pytest.mark.slow
def test_a_budget_search_keeps_the_fewest_float_blocks_that_fit(tmp_path):
    """Between the fully quantized graph's cosine and fp32's, a budget is met by returning some blocks."""
    common = dict(image_size=SIZE, calib_method="minmax", cache_dir=tmp_path / "cache", log=quiet)
    plain = export("random:0", tmp_path / "plain", "onnx-int8", **common)
    reached = plain.manifest.data["validation"]["drift_vs_fp32"]["model_level"]["group_embed_cosine"]["mean"]
    target = reached + (1 - reached) / 2
    result = export("random:0", tmp_path / "budget", "onnx-int8", min_group_cosine=round(target, 6), **common)
    search = result.manifest.data["validation"]["drift_budget_search"]
    ranking = [entry["block"] for entry in search["ranking"]]
    kept = search["kept_float_blocks"]
    assert search["fits"] and 0 < len(kept) < len(ranking) and kept == ranking[:len(kept)]
    assert result.manifest.data["validation"]["drift_vs_fp32"]["model_level"]["group_embed_cosine"]["mean"] >= target
    assert len(search["steps"]) <= 1 + 8
    from groupvit_edge.quantization.policy import block_of
    quantized = result.manifest.data["precision"]["quantized_nodes"]
    assert quantized and not [n for n in quantized if block_of(n) in kept]
