"""OpenVINO targets and runtime: IR export from a real checkpoint, backend selection, the precision that runs,
the model cache, devices, async streams, and the fp16/int8 targets' recorded drift. All at 224² to stay fast."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="openvino is in the dev extra (pip install groupvit-edge[openvino])")

from groupvit_edge import hardware, runtimes  # noqa: E402
from groupvit_edge.artifact import read_manifest, sha256_file  # noqa: E402
from groupvit_edge.errors import UserError  # noqa: E402
from groupvit_edge.exporters import export  # noqa: E402
from groupvit_edge.exporters import openvino as openvino_exporter  # noqa: E402
from groupvit_edge.runtimes import openvino as openvino_backend  # noqa: E402
from groupvit_edge.segmentation.preprocess import load_image, prepare  # noqa: E402

from conftest import CALIB_IMAGES, EVAL_IMAGES  # noqa: E402

SIZE = 224
# fp32 IR in OpenVINO at f32 vs the same graph in ONNX Runtime or PyTorch: identical arithmetic up to kernel
# reassociation (measured ≤ 5e-7 on every output). 1e-4 leaves 200× headroom, yet the bf16 trap (≥ 1e-3 here,
# 0.62 in the issue) fails it.
FP32_TOLERANCE = 1e-4


def _export(out, target, checkpoint, bpe, **options):
    export(str(checkpoint), out, target, image_size=SIZE, tokenizer=bpe, log=lambda message: None, **options)
    return out


@pytest.fixture(scope="module")
def ir_fp32(tmp_path_factory):
    """random:0 with no optional input: the shipped tokenizer and sample photos."""
    out = tmp_path_factory.mktemp("ov") / "fp32"
    export("random:0", out, "openvino-fp32", image_size=SIZE, labels=["cat", "dog", "grass"], log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def windows(ir_fp32, coco_images):
    return prepare(load_image(coco_images[1]), read_manifest(ir_fp32).preprocess).windows


@pytest.fixture(scope="module")
def runtime(ir_fp32, tmp_path_factory):
    return runtimes.open(ir_fp32, threads=2, cache_dir=tmp_path_factory.mktemp("ov-cache"))


def test_manifest_records_the_ir_and_keeps_the_onnx_graphs(ir_fp32):
    manifest = read_manifest(ir_fp32)
    graphs = manifest.graphs
    assert {"image", "text", "image_ir", "text_ir"} <= set(graphs)
    for name, stem in (("image_ir", "image"), ("text_ir", "text")):
        record = graphs[name]
        assert record.file == f"{stem}.xml" and record.weights == f"{stem}.bin"
        assert record.format == "openvino-ir" and record.precision == "fp32"
        assert record.inference_precision == "f32" and record.extra["openvino"] == ov.__version__.split("-")[0]
        assert record.sha256 == sha256_file(ir_fp32 / record.file)
        assert record.weights_sha256 == sha256_file(ir_fp32 / record.weights)
    assert (ir_fp32 / "image.onnx").is_file() and (ir_fp32 / "text.onnx").is_file()
    assert manifest.target == "openvino-fp32" and manifest.data["precision"]["inference_precision"] == "f32"
    validation = manifest.data["validation"]
    drift = validation["drift_vs_fp32"]
    assert drift["inference_precision"] == "f32"
    assert max(drift["model_level"]["max_abs_diff"].values()) < FP32_TOLERANCE
    assert validation["text_ir_max_abs_diff"] < FP32_TOLERANCE


def test_open_picks_openvino_and_matches_onnxruntime_and_pytorch(ir_fp32, runtime, windows, random_checkpoint):
    assert runtime.name == "openvino"
    onnx_runtime = runtimes.open(ir_fp32, backend="onnxruntime", threads=2)
    torch_runtime = runtimes.open(str(random_checkpoint), image_size=(SIZE, SIZE), threads=2)
    ours = runtime.encode_image(windows)
    assert ours.group_embeds.dtype == np.float32 and ours.grouping.shape == (len(windows), 8, 14, 14)
    for reference in (onnx_runtime, torch_runtime):
        theirs = reference.encode_image(windows)
        for name in ("group_embeds", "image_embed", "grouping"):
            assert np.abs(getattr(ours, name) - getattr(theirs, name)).max() < FP32_TOLERANCE, (reference.name, name)
    tokens = np.zeros((3, 77), dtype=np.int32)
    tokens[:, :3] = [[49406, 320, 49407], [49406, 1125, 49407], [49406, 2368, 49407]]
    assert np.abs(runtime.encode_text(tokens) - onnx_runtime.encode_text(tokens)).max() < FP32_TOLERANCE


def test_the_precision_that_ran_is_f32_and_bf16_is_an_explicit_opt_in(ir_fp32, runtime, windows):
    assert runtime.inference_precision == "f32" and "inference precision f32" in runtime.description
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(UserError, match="cannot compute in bf16"):
            runtimes.open(ir_fp32, inference_precision="bf16", cache_dir="")
        return
    bf16 = runtimes.open(ir_fp32, inference_precision="bf16", threads=2, cache_dir="")
    assert bf16.inference_precision == "bf16" and "bf16" in bf16.description
    # The trap the runtime avoids by default: bf16 moves the outputs far beyond f32 reassociation.
    difference = np.abs(bf16.encode_image(windows[:1]).group_embeds - runtime.encode_image(windows[:1]).group_embeds)
    assert difference.max() > FP32_TOLERANCE


def test_a_precision_the_device_lacks_is_refused_in_one_sentence_naming_what_it_needs():
    for precision, needs in (("bf16", "AVX-512 BF16 or AMX"), ("f16", "AVX-512 FP16")):
        with pytest.raises(UserError, match=f"cannot compute in {precision} .*{needs}.*it offers FP32") as error:
            openvino_backend.precision_for("f32", ["FP32", "INT8"], precision, "CPU")
        assert "\n" not in str(error.value)
    assert openvino_backend.precision_for("bf16", ["FP32"], None, "CPU") == "f32"   # an artifact's default falls back


def _blobs(cache) -> list[str]:
    return sorted(str(path.relative_to(cache)) for path in cache.rglob("*.blob"))


def test_model_cache_makes_the_second_start_reuse_the_compiled_model(ir_fp32, tmp_path, windows):
    cache = tmp_path / "cache"
    first = runtimes.open(ir_fp32, cache_dir=cache)
    blobs = _blobs(cache)
    assert blobs
    second = runtimes.open(ir_fp32, cache_dir=cache)
    assert _blobs(cache) == blobs            # served from the cache, nothing new
    assert np.array_equal(first.encode_image(windows[:1]).grouping, second.encode_image(windows[:1]).grouping)


def test_every_configuration_has_its_own_cache_directory(ir_fp32, tmp_path):
    """An f32 blob imported for a bf16 compile crashed OpenVINO's CPU plugin: no two configurations may ever
    share a cache directory, whatever OpenVINO's own blob key holds."""
    base = {"device": "CPU", "shape": [1, 3, SIZE, SIZE], "version": "2026.4.1", "graph_digest": "a/b"}
    config = openvino_backend.compile_config("CPU", {"CPU": "f32"}, "LATENCY")
    location = openvino_backend.cache_location(tmp_path, config=config, **base)
    changed = [
        {"config": openvino_backend.compile_config("CPU", {"CPU": "bf16"}, "LATENCY")},
        {"config": openvino_backend.compile_config("CPU", {"CPU": "f16"}, "LATENCY")},
        {"config": openvino_backend.compile_config("CPU", {"CPU": "f32"}, "THROUGHPUT")},
        {"config": openvino_backend.compile_config("CPU", {"CPU": "f32"}, "LATENCY", streams=2)},
        {"config": openvino_backend.compile_config("CPU", {"CPU": "f32"}, "LATENCY", threads=1)},
        {"device": "GPU"}, {"shape": [1, 3, 448, 448]}, {"version": "2026.5.0"}, {"graph_digest": "a/c"}]
    locations = {openvino_backend.cache_location(tmp_path, **{**base, "config": config, **change})
                 for change in changed}
    assert location not in locations and len(locations) == len(changed)
    assert location == openvino_backend.cache_location(tmp_path, config=config, **base)   # and it is stable
    # Compiled for real: the image and text graphs in two hints, each in its own directory, none at the root.
    cache = tmp_path / "compiled"
    tokens = np.zeros((1, 77), dtype=np.int32)
    for hint in ("LATENCY", "THROUGHPUT"):
        runtimes.open(ir_fp32, hint=hint, cache_dir=cache).encode_text(tokens)
    directories = {Path(blob).parent for blob in _blobs(cache)}
    assert len(directories) == 4 and Path(".") not in directories
    assert all(len(list((cache / directory).glob("*.blob"))) == 1 for directory in directories)


_ENCODE_IN_A_NEW_PROCESS = """
import sys, numpy as np
from groupvit_edge import runtimes
from groupvit_edge.artifact import read_manifest
from groupvit_edge.segmentation.preprocess import load_image, prepare
artifact, precision, cache, photo, out = sys.argv[1:]
windows = prepare(load_image(photo), read_manifest(artifact).preprocess).windows[:1]
runtime = runtimes.open(artifact, inference_precision=precision, cache_dir=cache, threads=2)
np.save(out, runtime.encode_image(windows).group_embeds)
"""


@pytest.mark.skipif("BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
                    reason="the f32-then-bf16 cache crash needs a CPU with bf16 arithmetic (AVX-512 BF16 or AMX)")
def test_f32_then_bf16_in_one_cache_directory_both_run(ir_fp32, tmp_path, coco_images, windows):
    """Export leaves an f32 blob behind; every later bf16 start on that cache used to import it and crash. Each
    start is its own process, as a user's are; the third is served from the cache."""
    import subprocess
    import sys
    cache = tmp_path / "cache"
    results = {}
    for run, precision in enumerate(("f32", "bf16", "bf16")):
        out = tmp_path / f"{run}.npy"
        done = subprocess.run([sys.executable, "-c", _ENCODE_IN_A_NEW_PROCESS, str(ir_fp32), precision, str(cache),
                               str(coco_images[1]), str(out)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{precision} after f32 in one cache: exit {done.returncode}\n{done.stderr}"
        results[run] = np.load(out)
    reference = runtimes.open(ir_fp32, backend="onnxruntime").encode_image(windows[:1]).group_embeds
    assert np.abs(results[0] - reference).max() < FP32_TOLERANCE                 # f32 is f32
    assert np.abs(results[1] - reference).max() > FP32_TOLERANCE                 # bf16 is bf16, not the f32 blob
    assert np.array_equal(results[1], results[2])


def test_async_stream_yields_every_window_in_order(ir_fp32, windows):
    throughput = runtimes.open(ir_fp32, hint="THROUGHPUT", streams=2, threads=2, cache_dir="")
    stream = list(throughput.encode_images_async(iter([*windows, *windows])))
    assert len(stream) == 2 * len(windows)
    batch = throughput.encode_image(windows)
    for index, encoding in enumerate(stream):
        assert np.array_equal(encoding.group_embeds[0], batch.group_embeds[index % len(windows)])


def test_bench_streams_runs_openvino_in_throughput_mode(ir_fp32, coco_images):
    from groupvit_edge.metrics.bench import BenchSettings, benchmark
    report = benchmark([ir_fp32], [EVAL_IMAGES / coco_images[0].name], isolate=False, log=lambda m: None,
                       settings=BenchSettings(warmup=1, runs=2, threads=2, streams=2, labels=None))
    row = report.rows[0]
    assert row.status == "ok", row.traceback
    assert "THROUGHPUT 2 streams" in row.backend and "inference precision f32" in row.backend
    assert row.stream_windows_per_s > 0
    assert "stream windows/s (2 streams)" in report.to_markdown()
    assert runtimes.throughput_options("onnxruntime", 2) == {}      # its windows/s: one call after another


def test_segment_takes_streams_auto_and_refuses_a_bad_count_in_one_sentence(ir_fp32, coco_images, tmp_path):
    import subprocess
    import sys

    def segment(streams):
        return subprocess.run([sys.executable, "-m", "groupvit_edge.cli", "segment", str(ir_fp32),
                               str(coco_images[0]), "--out", str(tmp_path / streams), "--streams", streams,
                               "--hint", "THROUGHPUT", "--cache-dir", ""],
                              capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)

    done = segment("auto")       # the help offers AUTO; any case
    assert done.returncode == 0, done.stderr
    assert "THROUGHPUT" in done.stdout and (tmp_path / "auto" / f"{coco_images[0].stem}.labels.png").is_file()
    done = segment("many")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --streams 'many' must be a whole number ≥ 1 or AUTO"]
    assert not (tmp_path / "many").exists()


def test_device_hint_and_precision_errors_are_one_sentence(ir_fp32):
    available = ov.Core().available_devices
    absent = next(name for name in ("NPU", "GPU", "CPU") if not any(d.startswith(name) for d in available))
    for options, needle in (({"device": absent}, f"device {absent} is not available here"),
                            ({"device": f"AUTO:{absent},CPU"}, f"device {absent} is not available here"),
                            ({"hint": "FAST"}, "--hint 'FAST' is not one of LATENCY, THROUGHPUT"),
                            ({"streams": "many"}, "whole number"),
                            ({"inference_precision": "int4"}, "--inference-precision 'int4' is not one of")):
        with pytest.raises(UserError, match=needle) as error:
            runtimes.open(ir_fp32, cache_dir="", **options)
        assert "\n" not in str(error.value) and str(error.value).count(". ") == 0
    assert "CPU" in str(pytest.raises(UserError, runtimes.open, ir_fp32, device=absent).value)
    assert runtimes.open(ir_fp32, device="AUTO", cache_dir="").inference_precision.startswith("f32")


def test_backend_selection_without_ir_or_without_openvino(ir_fp32, tmp_path, monkeypatch):
    copy = tmp_path / "onnx-only"
    shutil.copytree(ir_fp32, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for name in ("image_ir", "text_ir"):
        del manifest["graphs"][name]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert "no OpenVINO IR" in openvino_backend.unsupported_reason(read_manifest(copy))
    assert runtimes.open(copy).name == "onnxruntime"
    monkeypatch.setattr(openvino_backend, "is_installed", lambda: False)
    assert runtimes.open(ir_fp32).name == "onnxruntime"       # the ONNX graphs kept in the artifact still run
    with pytest.raises(UserError, match=r"pip install groupvit-edge\[openvino\]"):
        runtimes.open(ir_fp32, backend="openvino")


def test_fp16_ir_halves_the_weights_and_records_its_drift(ir_fp32, tmp_path, random_checkpoint, bpe_path,
                                                          coco_images):
    out = _export(tmp_path / "fp16", "openvino-fp16", random_checkpoint, bpe_path)   # no photos: FP16 needs none
    manifest = read_manifest(out)
    record = manifest.graphs["image_ir"]
    assert record.precision == "fp16" and record.inference_precision == "f16"
    assert manifest.graphs["text_ir"].precision == "fp32"
    ratio = (out / "image.bin").stat().st_size / (ir_fp32 / "image.bin").stat().st_size
    assert 0.45 < ratio < 0.55
    runtime = runtimes.open(out, cache_dir="")
    cpu_has_f16 = "FP16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert runtime.inference_precision == ("f16" if cpu_has_f16 else "f32")
    drift = manifest.data["validation"]["drift_vs_fp32"]["model_level"]
    # Only the weights are rounded to fp16 on a CPU without f16 arithmetic: the ONNX fp16 target's bar
    # (cosine ≥ 0.9999, confident agreement ≥ 99.99%) holds with room to spare.
    assert drift["group_embed_cosine"]["mean"] >= 0.9999 and drift["group_agreement_confident"] >= 99.99


def test_bf16_target_is_measured_in_bf16_and_refused_on_a_cpu_without_it(tmp_path, random_checkpoint, bpe_path,
                                                                          monkeypatch):
    """openvino-bf16 proves its drift in the precision it will run in, so a CPU without bf16 arithmetic refuses it
    before tracing; on a bf16 CPU the IR keeps fp32 weights and records bf16 as what ran."""
    monkeypatch.setattr(openvino_exporter, "cpu_computes", lambda precision: False)
    with pytest.raises(UserError, match="openvino-bf16 is measured in bf16 at export"):
        _export(tmp_path / "refused", "openvino-bf16", random_checkpoint, bpe_path)
    assert not (tmp_path / "refused").exists()
    monkeypatch.undo()
    if not openvino_exporter.cpu_computes("bf16"):
        pytest.skip("this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX): the export itself needs one")
    out = _export(tmp_path / "bf16", "openvino-bf16", random_checkpoint, bpe_path)
    manifest = read_manifest(out)
    assert manifest.data["precision"]["compute"] == "bf16"
    assert manifest.graphs["image_ir"].precision == "fp32"
    assert manifest.graphs["image_ir"].inference_precision == "bf16"
    drift = manifest.data["validation"]["drift_vs_fp32"]
    assert drift["inference_precision"] == "bf16"
    assert drift["model_level"]["group_embed_cosine"]["mean"] > 0.99
    runtime = runtimes.open(out, cache_dir="")
    assert runtime.inference_precision == "bf16" and "bf16" in runtime.description


def test_the_int8_float_remainder_follows_the_cpu_and_can_be_forced_either_way(monkeypatch):
    monkeypatch.setenv(hardware.FLAGS_ENV, "avx2,avx512f,avx512_vnni")
    assert openvino_exporter.int8_float_rest() == ["f32"]
    monkeypatch.setenv(hardware.FLAGS_ENV, "avx2,avx512f,avx512_vnni,amx_tile,amx_bf16,amx_int8")
    offered = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    # OpenVINO must offer it too: flags forced on a CPU without bf16 cannot make its plugin compute in it.
    assert openvino_exporter.int8_float_rest() == (["bf16", "f32"] if offered else ["f32"])


@pytest.fixture(scope="module")
def int8_artifacts(tmp_path_factory, random_checkpoint, bpe_path, coco_images):
    cache = tmp_path_factory.mktemp("calibration-cache")

    def build(route, name=None):
        return _export(tmp_path_factory.mktemp("ov-int8") / (name or route), "openvino-int8", random_checkpoint,
                       bpe_path, calib_dir=CALIB_IMAGES, calib_count=8, cache_dir=cache, openvino_int8_route=route,
                       validation_images=EVAL_IMAGES / coco_images[0].name)
    return build


def _check_int8(out, route):
    manifest = read_manifest(out)
    precision = manifest.data["precision"]
    assert precision["route"] == route and precision["compute"] == "int8"
    assert manifest.graphs["image_ir"].precision == "int8" and manifest.data["calibration"]["count"] == 8
    quantized = precision["quantized_nodes"]
    assert quantized and not [n for n in quantized if "LayerNorm" in n or "/assign/MatMul" in n
                              or "/assign/q_proj" in n or n == "/MatMul"]
    # The float remainder runs in bf16 where this CPU computes it, and export measured it in that form.
    rest = openvino_exporter.int8_float_rest()[0]
    drift = manifest.data["validation"]["drift_vs_fp32"]
    assert drift["inference_precision"] == rest == precision["inference_precision"]
    assert manifest.graphs["image_ir"].inference_precision == rest
    assert precision["method"]["weight_bits"] == hardware.int8_weight_bits()
    # 8 calibration images at 224² is far below the benchmark's 128 at 448²; 0.98 (the ONNX int8 test's bar)
    # still separates a sane INT8 graph from a broken one.
    assert drift["model_level"]["group_embed_cosine"]["mean"] > 0.98
    runtime = runtimes.open(out, cache_dir="")
    assert runtime.name == "openvino" and runtime.inference_precision == rest
    encoding = runtime.encode_image(np.zeros((2, 3, SIZE, SIZE), dtype=np.float32))
    assert encoding.group_embeds.shape == (2, 8, 256) and np.isfinite(encoding.group_embeds).all()
    return manifest


def test_int8_default_route_and_its_calibration_cache(int8_artifacts):
    route = openvino_exporter.DEFAULT_INT8_ROUTE
    first = int8_artifacts(route)
    manifest = _check_int8(first, route)
    assert any("/self_attn/MatMul" in n for n in manifest.data["precision"]["quantized_nodes"]) == \
        (route == "nncf-ir")
    assert manifest.data["calibration"]["reused_cache"] is False
    again = read_manifest(int8_artifacts(route, "again"))
    assert again.data["calibration"]["reused_cache"] is True
    assert again.graphs["image_ir"].weights_sha256 == manifest.graphs["image_ir"].weights_sha256


@pytest.mark.slow
def test_int8_other_route(int8_artifacts):
    route = next(r for r in openvino_exporter.INT8_ROUTES if r != openvino_exporter.DEFAULT_INT8_ROUTE)
    manifest = _check_int8(int8_artifacts(route), route)
    if route == "qdq":      # the QDQ ONNX stays in the artifact for ONNX Runtime, with its own drift
        assert manifest.graphs["image"].file == "image.int8.onnx"
        assert "drift_vs_fp32_onnxruntime" in manifest.data["validation"]


def test_int8_refuses_an_unknown_route_and_a_budget_on_the_ir_route(tmp_path):
    with pytest.raises(UserError, match="--openvino-int8-route 'fastest' is not one of nncf-ir, qdq"):
        export("random:0", tmp_path / "x", "openvino-int8", openvino_int8_route="fastest", log=lambda m: None)
    with pytest.raises(UserError, match="add --openvino-int8-route qdq"):
        export("random:0", tmp_path / "x", "openvino-int8", max_drop=1.0, log=lambda m: None)
    assert not (tmp_path / "x").exists()
