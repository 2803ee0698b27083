"""Drift, eval and bench on the artifacts the toolkit makes, judged with groupvit_edge.testing like users do."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from groupvit_edge import runtimes
from groupvit_edge.metrics.drift import measure_drift
from groupvit_edge.metrics.evaluate import evaluate
from groupvit_edge.runtimes.base import ImageEncoding, Runtime
from groupvit_edge.segmentation import Segmenter
from groupvit_edge.testing import assert_drift_within

from conftest import EVAL_IMAGES, EVAL_MASKS, SHARED_DATA, record_file


@pytest.fixture(scope="module")
def images(coco_images):
    return coco_images[:3]


@pytest.fixture(scope="module")
def degraded_artifact(onnx_artifact, tmp_path_factory):
    """A real artifact whose image graph has 3% noise on every weight matrix: what a bad quantizer produces."""
    copy = tmp_path_factory.mktemp("degraded") / "noisy"
    shutil.copytree(onnx_artifact, copy)
    model = onnx.load(str(copy / "image.onnx"))
    rng = np.random.default_rng(0)
    for initializer in model.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.ndim == 2 and weights.size > 10000:
            noisy = weights + 0.03 * weights.std() * rng.standard_normal(weights.shape).astype(weights.dtype)
            initializer.CopyFrom(numpy_helper.from_array(noisy, initializer.name))
    onnx.save(model, str(copy / "image.onnx"))
    record_file(copy, "image.onnx", ("graphs", "image", "sha256"))
    return copy


def test_fp32_artifact_does_not_drift_from_pytorch(onnx_artifact, reference_runtime, images, tmp_path):
    # ORT and PyTorch differ by ~1e-7: only pixels whose reference decision is a near-tie may flip.
    report = assert_drift_within(reference_runtime, onnx_artifact, images=images, labels="prototypes:8",
                                 max_drop=0.5, min_confident_group_agreement=99.99, min_group_cosine=0.99999,
                                 report_dir=tmp_path / "report")
    candidate = report.candidates[0]
    print("fp32 vs PyTorch:", candidate.model_level, candidate.class_level.miou_vs_reference)
    assert candidate.model_level.max_abs_diff["grouping"] < 1e-4
    assert (tmp_path / "report" / "drift.json").is_file()


def test_without_labels_or_a_vocabulary_drift_probes_with_prototypes(onnx_artifact, reference_runtime, images,
                                                                      tmp_path):
    """`drift --ref MODEL --candidate ART` is the next step export prints: with no --labels, and a reference (a
    checkpoint) without a vocabulary, drift measures with the default prototypes instead of refusing."""
    no_vocabulary = tmp_path / "no-vocab"
    shutil.copytree(onnx_artifact, no_vocabulary)
    manifest = json.loads((no_vocabulary / "manifest.json").read_text())
    assert manifest.pop("vocabulary", None) is not None
    (no_vocabulary / "vocab.npz").unlink()
    (no_vocabulary / "manifest.json").write_text(json.dumps(manifest))
    report = measure_drift(reference_runtime, [no_vocabulary], images[:1], progress=False)
    assert report.vocabulary.kind == "prototypes" and len(report.vocabulary.labels) == 16
    # The other side without one: an artifact exported without --labels, against one that has a vocabulary.
    candidate_side = measure_drift(onnx_artifact, [no_vocabulary], images[:1], progress=False)
    assert candidate_side.vocabulary.kind == "prototypes" and len(candidate_side.vocabulary.labels) == 16
    with_vocabulary = measure_drift(onnx_artifact, [onnx_artifact], images[:1], progress=False)
    assert with_vocabulary.vocabulary.labels == ["cat", "dog", "grass"]


def test_degraded_artifact_fails_with_figures_and_report(degraded_artifact, reference_runtime, images, tmp_path):
    with pytest.raises(AssertionError) as failure:
        assert_drift_within(reference_runtime, degraded_artifact, images=images, labels="prototypes:8",
                            max_drop=0.1, min_group_cosine=0.9999, report_dir=tmp_path / "report")
    message = str(failure.value)
    assert "drift budget exceeded" in message and "| candidate |" in message
    assert str(tmp_path / "report") in message
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert any("worst1" in name for name in pngs) and any("per-class-iou" in name for name in pngs)


def test_plugin_fixture_judges_the_candidate_against_the_reference(assert_drift, onnx_artifact, degraded_artifact,
                                                                    images, tmp_path):
    """The `assert_drift` fixture takes the reference first and the candidate second, as its docstring shows (or both
    by name), and reports into the test's tmp_path: with the order swapped a user would judge fp32 against INT8."""
    with pytest.raises(AssertionError, match="drift budget exceeded"):
        assert_drift(onnx_artifact, degraded_artifact, images=images[:1], labels="prototypes:8", max_drop=None,
                     min_group_cosine=0.9999)
    written = json.loads((tmp_path / "drift-report" / "drift.json").read_text())
    assert written["reference"]["source"] == str(onnx_artifact)
    assert [c["source"] for c in written["candidates"]] == [str(degraded_artifact)]
    assert written["candidates"][0]["failures"]
    by_name = assert_drift(candidate=degraded_artifact, reference=onnx_artifact, images=images[:1],
                           labels="prototypes:8", max_drop=None)
    assert by_name.reference.source == str(onnx_artifact)
    assert [c.source for c in by_name.candidates] == [str(degraded_artifact)]


def test_model_level_sees_what_class_level_cannot(onnx_artifact, degraded_artifact, images):
    """With real class names random weights give near-constant maps; the model level still measures drift."""
    report = measure_drift(onnx_artifact, [onnx_artifact, degraded_artifact], images, labels="cat,dog,grass",
                           progress=False)
    same, noisy = (c.model_level for c in report.candidates)
    assert same.group_agreement == 100.0 and same.group_embed_cosine.min > 0.999999
    assert noisy.group_agreement < 100.0 and noisy.group_embed_cosine.min < same.group_embed_cosine.min
    assert noisy.near_tie_share == same.near_tie_share           # a property of the reference alone


class _ShuffledGroups(Runtime):
    """Swaps two final groups: embeddings follow, so class maps are unchanged but group ids are not."""
    name = "shuffled"

    def __init__(self, inner):
        self.inner, self.manifest = inner, inner.manifest

    def encode_image(self, pixels):
        encoding = self.inner.encode_image(pixels)
        order = [1, 0, *range(2, encoding.grouping.shape[1])]
        return ImageEncoding(encoding.group_embeds[:, order], encoding.image_embed, encoding.grouping[:, order])

    def encode_text(self, token_ids):
        return self.inner.encode_text(token_ids)


def test_group_agreement_is_positional_and_class_level_is_not(onnx_artifact, images):
    inner = runtimes.open(onnx_artifact)
    report = measure_drift(inner, [_ShuffledGroups(inner)], images[:1], labels="prototypes:8", progress=False)
    candidate = report.candidates[0]
    assert candidate.class_level.miou_vs_reference == pytest.approx(100.0)
    assert candidate.model_level.group_agreement < 100.0


def test_drift_with_ground_truth_masks(onnx_artifact, images):
    from groupvit_edge.metrics.classmaps import coco_object
    report = measure_drift(onnx_artifact, [onnx_artifact], images, masks_dir=SHARED_DATA / "coco/eval2017/masks",
                           class_map=coco_object(), progress=False)
    truth = report.candidates[0].ground_truth
    assert report.vocabulary.labels[0] == "person" and len(report.vocabulary.labels) == 80
    assert truth.drop == 0.0 and 0.0 <= truth.reference_miou <= 100.0


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "groupvit_edge.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=900, stdin=subprocess.DEVNULL)


def test_drift_cli_max_drop_exit_codes(onnx_artifact, degraded_artifact, images, tmp_path):
    common = ["--ref", onnx_artifact, "--images", images[0], "--images", images[1], "--labels", "prototypes:8"]
    ok = run_cli("drift", *common, "--candidate", onnx_artifact, "--max-drop", "0.5", "--json", tmp_path / "a.json",
                 "--report", tmp_path / "report")
    assert ok.returncode == 0, ok.stderr
    assert "| candidate |" in ok.stdout and "within the budget (mIoU drop ≤ 0.5)" in ok.stdout
    assert f"wrote {tmp_path / 'a.json'} and {tmp_path / 'report' / 'report.html'} (and its folder)" in ok.stdout
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["schema"] == "groupvit-edge/drift/1" and data["images"]["count"] == 2
    failed = run_cli("drift", *common, "--candidate", degraded_artifact, "--max-drop", "0.01",
                     "--json", tmp_path / "b.json")
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr.startswith("failed: ") and "points below" in failed.stderr
    bad = run_cli("drift", "--ref", onnx_artifact, "--candidate", tmp_path / "missing", "--images", images[0])
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_eval_matches_a_hand_computed_confusion(onnx_artifact, coco_images):
    """The report equals a confusion matrix built here from the same segmentations and the raw masks."""
    from PIL import Image
    from groupvit_edge.metrics import ConfusionMatrix
    from groupvit_edge.metrics.classmaps import coco_object
    report = evaluate(onnx_artifact, EVAL_IMAGES, EVAL_MASKS, "coco-object", limit=2, progress=False)
    class_map = coco_object()
    segmenter = Segmenter.open(onnx_artifact, class_map.foreground, resample="opencv")   # the official resize
    confusion = ConfusionMatrix(81)
    for image in sorted(EVAL_IMAGES.glob("*.jpg"))[:2]:
        mask = np.asarray(Image.open(SHARED_DATA / "coco/eval2017/masks" / f"{image.stem}.png"))
        confusion.update(class_map.convert(mask, class_map.forms[1]), segmenter.segment(image).labels)
    assert report.miou == pytest.approx(100 * confusion.mean_iou)
    assert report.pixel_accuracy == pytest.approx(100 * confusion.pixel_accuracy)
    assert report.images == 2 and "| background |" in report.to_markdown()


def test_eval_and_bench_cli(onnx_artifact, tmp_path):
    done = run_cli("eval", onnx_artifact, "--images", EVAL_IMAGES, "--masks", EVAL_MASKS, "--limit", "1",
                   "--json", tmp_path / "eval.json")
    assert done.returncode == 0, done.stderr
    assert "mIoU" in done.stdout and json.loads((tmp_path / "eval.json").read_text())["classes"] == "coco-object"
    broken = tmp_path / "broken"
    shutil.copytree(onnx_artifact, broken)
    (broken / "image.onnx").write_bytes(b"not onnx")
    done = run_cli("bench", onnx_artifact, broken, "--images", EVAL_IMAGES, "--limit", "2", "--runs", "2",
                   "--warmup", "1", "--json", tmp_path / "bench.json")
    assert done.returncode == 1, done.stderr       # the table is complete, and says one artifact failed
    assert done.stderr.startswith("failed: 1 of 2 artifacts could not be measured") and "sha256" in done.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert rows[0]["status"] == "ok" and rows[0]["miou_vs_reference"] == 100.0
    assert rows[0]["image_graph_ms"]["p50"] > 0 and rows[0]["peak_rss_mb"] > 0 and rows[0]["size_mb"] > 100
    assert rows[1]["status"].startswith("failed: ") and "sha256" in rows[1]["status"]


def test_a_bench_child_that_dies_becomes_a_failed_row(onnx_artifact, coco_images):
    """A SIGKILL from outside, as the out-of-memory killer sends it: the row fails and the table goes on. Bench runs
    in a thread so that a parent waiting forever fails this test instead of hanging it."""
    import multiprocessing
    import os
    import signal
    import threading
    import time
    from groupvit_edge.metrics.bench import BenchSettings, benchmark
    finished = {}

    def bench():
        finished["report"] = benchmark([onnx_artifact], coco_images[:1], reference=str(onnx_artifact),
                                       settings=BenchSettings(warmup=0, runs=1, labels=None), log=lambda m: None)

    thread = threading.Thread(target=bench, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    (child,) = multiprocessing.active_children()
    os.kill(child.pid, signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive(), "bench is still waiting for a child that died"
    (row,) = finished["report"].rows
    assert row.status == "failed: killed by SIGKILL" and row.peak_rss_mb is None
    assert "| failed: killed by SIGKILL |" in finished["report"].to_markdown()


def test_bench_fails_a_row_for_the_backend_but_a_bug_stays_a_traceback(onnx_artifact, coco_images, monkeypatch):
    from groupvit_edge.metrics import bench
    from groupvit_edge.metrics.bench import BenchSettings, benchmark
    settings = BenchSettings(warmup=0, runs=1, labels=None)
    opened = runtimes.open

    def open_failing_at_run(*args, **options):
        runtime = opened(*args, **options)

        def encode_image(pixels):
            raise RuntimeError("RUNTIME_EXCEPTION: out of memory")
        runtime.encode_image = encode_image
        return runtime

    monkeypatch.setattr(runtimes, "open", open_failing_at_run)
    report = benchmark([onnx_artifact], coco_images[:1], settings=settings, isolate=False, log=lambda m: None)
    assert report.rows[0].status == "failed: RUNTIME_EXCEPTION: out of memory"
    monkeypatch.setattr(runtimes, "open", opened)

    class MeasuringCodeWithABug:
        def __init__(self, *args, **kwargs):
            raise TypeError("a bug in the measuring code")

    monkeypatch.setattr(bench, "Segmenter", MeasuringCodeWithABug)
    with pytest.raises(TypeError, match="a bug in the measuring code"):
        benchmark([onnx_artifact], coco_images[:1], settings=settings, isolate=False, log=lambda m: None)


def test_bench_refuses_threads_for_a_backend_without_them_before_measuring(onnx_artifact, coco_images, monkeypatch):
    from groupvit_edge.errors import UserError
    from groupvit_edge.metrics.bench import BenchSettings, benchmark
    monkeypatch.setattr(runtimes, "choose_backend", lambda source, backend=None, verify=True: ("tensorrt", None))
    logged = []
    with pytest.raises(UserError, match="'threads' applies to torch, onnxruntime, openvino, not to tensorrt"):
        benchmark([onnx_artifact], coco_images[:1], settings=BenchSettings(warmup=0, runs=1, threads=1, labels=None),
                  log=logged.append)
    assert logged == []              # refused before the first artifact was measured
