"""The CLI as a user meets it: real subprocesses, exit codes 0/1/2, one-sentence errors, files written."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import hub_cache
from PIL import Image


def run(*args, timeout=600):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "groupvit_edge.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def test_segment_writes_overlay_and_label_pngs(onnx_artifact, coco_images, tmp_path):
    images = coco_images[:2]
    done = run("segment", onnx_artifact, *images, "--labels", "cat,dog,grass", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    for image in images:
        overlay = Image.open(tmp_path / "out" / f"{image.stem}.overlay.png")
        labels = Image.open(tmp_path / "out" / f"{image.stem}.labels.png")
        assert overlay.size == labels.size == Image.open(image).size
        assert labels.mode == "P" and np.asarray(labels).max() <= 3      # background + 3 classes
        assert image.name in done.stdout
    assert "onnxruntime" in done.stdout


def test_segment_with_the_precomputed_vocabulary_and_letterbox(onnx_artifact, coco_images, tmp_path):
    done = run("segment", onnx_artifact, coco_images[3], "--resize", "letterbox", "--no-background",
               "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "classes: cat, dog, grass" in done.stdout


def test_segment_without_labels_or_a_vocabulary_uses_the_coco_classes(onnx_artifact, coco_images, tmp_path):
    """`segment ART` is what a user types first: with neither --labels nor a vocabulary in the artifact it segments
    with COCO's 80 object classes instead of refusing."""
    import shutil
    from groupvit_edge.segmentation.vocabulary import DEFAULT_LABELS
    bare = tmp_path / "bare"
    shutil.copytree(onnx_artifact, bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    (bare / manifest.pop("vocabulary")["file"]).unlink()
    (bare / "manifest.json").write_text(json.dumps(manifest))
    done = run("segment", bare, coco_images[0], "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "80 COCO object classes" in done.stdout and "classes: background, person, bicycle" in done.stdout
    assert "and 69 more" in done.stdout and len(DEFAULT_LABELS) == 80
    assert np.asarray(Image.open(tmp_path / "out" / f"{coco_images[0].stem}.labels.png")).max() <= 80


def test_info_describes_a_valid_artifact(onnx_artifact):
    done = run("info", onnx_artifact)
    assert done.returncode == 0, done.stderr
    assert f"{onnx_artifact}: onnx, made by groupvit-edge" in done.stdout
    assert "precision: fp32" in done.stdout and "runs here on: onnxruntime" in done.stdout


def test_info_describes_an_artifact_whose_export_remedied_activation_outliers(onnx_artifact, tmp_path):
    """The outlier remedy's record sits in `validation` beside the budget search's, with steps too: info once
    read it as a budget search and crashed on the missing budget."""
    import shutil
    artifact = tmp_path / "remedied"
    shutil.copytree(onnx_artifact, artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    node = "/vision_model/encoder/stages.0/layers.0/mlp/fc1/MatMul"
    manifest["precision"].update(outlier_readers=[{"node": node, "channels": [3, 7], "ratio": 412.0}],
                                 split_readers=[node])
    step = {"group_embed_cosine": {"mean": 0.98288, "min": 0.96}}
    manifest["validation"]["outlier_remedy"] = {
        "steps": [{"remedy": "SmoothQuant α=0.95", "fits": False, "group_agreement_confident": 97.829, **step},
                  {"remedy": "SmoothQuant α=0.95, outlier channels of 1 reader(s) in float", "fits": True,
                   "group_agreement_confident": 99.914, "group_embed_cosine": {"mean": 0.99741, "min": 0.98}}],
        "method": {"method": "nncf", "weight_bits": 8, "smooth_quant_alpha": 0.95}, "split_readers": [node],
        "float_readers": []}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    done = run("info", artifact)
    assert done.returncode == 0, done.stderr
    assert "activation outliers in 1 INT8 reader(s): kept SmoothQuant α=0.95, 1 reader(s) split" in done.stdout
    assert "SmoothQuant α=0.95: 97.829% / 0.98288, exceeds" in done.stdout


def test_doctor_reports_backends():
    done = run("doctor")
    assert done.returncode == 0, done.stderr
    assert "onnxruntime" in done.stdout and "tensorrt" in done.stdout and "onnx " in done.stdout


@pytest.mark.parametrize("command", ["export", "segment", "doctor"])
def test_help_shows_an_example(command):
    done = run(command, "--help")
    assert done.returncode == 0 and "Example" in done.stdout and "groupvit-edge " + command in done.stdout


def test_drift_help_names_the_report_it_writes():
    done = run("drift", "--help")
    assert done.returncode == 0 and "report.html" in done.stdout


def _bad_inputs(artifact, image, tmp_path):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    broken = tmp_path / "broken-artifact"
    broken.mkdir()
    (broken / "manifest.json").write_text("{")
    return {
        "missing model": (["export", "--model", tmp_path / "nope", "--out", tmp_path / "a"], "does not exist"),
        "image size": (["export", "--model", "random:0", "--image-size", "450", "--out", tmp_path / "a"],
                       "not a multiple of the patch size 16"),
        "corrupt image": (["segment", artifact, not_an_image, "--labels", "cat", "--out", tmp_path / "o"],
                          "not a readable image"),
        "empty labels": (["segment", artifact, image, "--labels", "", "--out", tmp_path / "o"], "--labels is empty"),
        "corrupt manifest": (["segment", broken, image, "--labels", "cat", "--out", tmp_path / "o"], "corrupt"),
        "no manifest": (["segment", tmp_path, image, "--labels", "cat", "--out", tmp_path / "o"], "no manifest"),
        "missing image": (["segment", artifact, tmp_path / "gone.jpg", "--out", tmp_path / "o"], "does not exist"),
    }


@pytest.mark.parametrize("case", ["missing model", "image size", "corrupt image", "empty labels",
                                  "corrupt manifest", "no manifest", "missing image"])
def test_bad_input_is_one_sentence_and_exit_2(case, onnx_artifact, coco_images, tmp_path):
    args, needle = _bad_inputs(onnx_artifact, coco_images[0], tmp_path)[case]
    done = run(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], done.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "o").exists()


def test_export_end_to_end_from_the_cli(random_checkpoint, bpe_path, coco_images, tmp_path):
    out = tmp_path / "art"
    done = run("export", "--model", random_checkpoint, "--target", "onnx", "--image-size", "224",
               "--tokenizer", bpe_path, "--validation-images", coco_images[0], "--labels", "cat,dog", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "max abs diff" in done.stdout and "confident group agreement" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validation"]["fp32_vs_pytorch"]["images"] == [coco_images[0].name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


HUB_ID = "nvidia/groupvit-gcc-yfcc"


@pytest.fixture
def offline_hf_home(monkeypatch, tmp_path):
    """HF_HOME as a user sets it, with HF_HUB_OFFLINE=1, for the CLI's own process: its cache is HF_HOME/hub."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf-home" / "hub"


def test_export_a_hub_id_from_the_huggingface_cache_offline(offline_hf_home, random_checkpoint, coco_images,
                                                            tmp_path):
    from groupvit_edge.model import load_model
    hub_cache(offline_hf_home, HUB_ID, random_checkpoint)
    out = tmp_path / "art"
    done = run("export", "--model", HUB_ID, "--target", "onnx", "--image-size", "224",
               "--validation-images", coco_images[0], "--out", out)
    assert done.returncode == 0, done.stderr
    model = json.loads((out / "manifest.json").read_text())["model"]
    assert model["id"] == HUB_ID and model["weights_sha256"] == load_model(str(random_checkpoint)).weights_sha256


@pytest.mark.parametrize("command", ["export", "segment"])
def test_a_hub_id_offline_and_not_cached_is_one_sentence_and_exit_2(command, offline_hf_home, coco_images,
                                                                    tmp_path):
    out = tmp_path / "out"
    args = (["export", "--model", HUB_ID] if command == "export" else ["segment", HUB_ID, coco_images[0]])
    done = run(*args, "--out", out)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip() == (f"error: {HUB_ID} is not in the HuggingFace cache ({offline_hf_home}) and "
                                   f"HF_HUB_OFFLINE is set: download it once with `hf download {HUB_ID}` (or load "
                                   f"it once online), or pass a local checkpoint directory")
    assert not out.exists()


RANDOM_WEIGHTS = "has seeded random weights, so its class names mean nothing"


def test_segment_with_random_weights_says_so_once(bpe_path, coco_images, tmp_path):
    done = run("segment", "random:0", *coco_images[:2], "--labels", "cat,dog", "--tokenizer", bpe_path,
               "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if RANDOM_WEIGHTS in line]
    assert warnings == [f"warning: random:0 {RANDOM_WEIGHTS}: segment with a trained checkpoint such as {HUB_ID}, "
                        f"or an artifact exported from one"], done.stderr
    assert all(image.name in done.stdout for image in coco_images[:2])


def test_segment_a_checkpoint_directory_does_not_call_its_weights_random(random_checkpoint, bpe_path, coco_images,
                                                                         tmp_path):
    """It holds random:0's weights, but a directory is not known to be random: only random:SEED specs are."""
    done = run("segment", random_checkpoint, coco_images[0], "--labels", "cat,dog", "--tokenizer", bpe_path,
               "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert RANDOM_WEIGHTS not in done.stderr + done.stdout


def test_an_artifact_exported_from_random_weights_says_so_in_its_manifest_record():
    from groupvit_edge.artifact_records import ManifestFields, ModelRecord
    fields = ManifestFields("manifest.json")
    assert ModelRecord.parse(fields, {"id": "random:7", "weights_sha256": "ab"}).weights_are_random
    for model_id in (HUB_ID, "/ckpt/random:7", "./groupvit-random0"):
        assert not ModelRecord.parse(fields, {"id": model_id, "weights_sha256": "ab"}).weights_are_random


@pytest.mark.parametrize("option, value, needle", [
    ("--labels", "a,,b", "--labels 'a,,b' has an empty class name"),
    ("--labels", "prototypes:x", "--labels 'prototypes:x': write prototypes:K"),
    ("--ref", "{tmp}", "has no manifest.json"),
])
def test_bench_refuses_bad_input_before_measuring_anything(option, value, needle, onnx_artifact, coco_images,
                                                          tmp_path):
    done = run("bench", onnx_artifact, "--images", coco_images[0], option, value.format(tmp=tmp_path))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "benchmarking" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], done.stderr


def test_bench_ends_with_a_user_error_found_while_measuring(onnx_artifact, coco_images, tmp_path):
    """More prototypes than one photo has groups is found only once its windows are encoded: still exit 2."""
    done = run("bench", onnx_artifact, "--images", coco_images[0], "--labels", "prototypes:100000", "--runs", "1",
               "--warmup", "0", "--json", tmp_path / "bench.json")
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --labels prototypes:100000 needs"), done.stderr
    assert not (tmp_path / "bench.json").exists()
