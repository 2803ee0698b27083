"""Reliability as a careless user or a busy service meets it: concurrent calls, clashing outputs, bad numbers and
manifests, partial failures, interrupted runs. Slow cases (kill -9 at many points, big photos, long threaded
runs) live in benchmarks/reliability.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from groupvit_edge import runtimes
from groupvit_edge.artifact import read_manifest
from groupvit_edge.errors import UserError
from groupvit_edge.exporters import export
from groupvit_edge.segmentation import Segmenter

from conftest import EVAL_IMAGES

SIZE = 224


def cli(*args, timeout=600, cwd=None):
    return subprocess.run([sys.executable, "-m", "groupvit_edge.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


def quiet(message):
    pass


@pytest.fixture(scope="module")
def openvino_artifact(tmp_path_factory):
    pytest.importorskip("openvino", reason="openvino is in the dev extra; the concurrency case runs its IR")
    out = tmp_path_factory.mktemp("ov") / "art"
    export("random:0", out, "openvino-fp32", image_size=SIZE, labels="person,dog,grass,sky", log=quiet)
    return out


# ------------------------------------------------------------------------------------------- concurrency

@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_concurrent_segment_calls_give_each_caller_its_own_answer(openvino_artifact, backend):
    """8 threads segmenting different photos at once get exactly what one thread gets for each photo."""
    photos = sorted(EVAL_IMAGES.glob("*.jpg"))[:8]
    options = {"cache_dir": ""} if backend == "openvino" else {}
    with Segmenter.open(openvino_artifact, backend=backend, **options) as segmenter:
        expected = {photo: segmenter.segment(photo).labels for photo in photos}
        results, errors = {}, []

        def work(index):
            try:
                for round_ in range(3):
                    photo = photos[(index + round_) % len(photos)]
                    results[(index, round_)] = (photo, segmenter.segment(photo).labels)
            except Exception as error:     # any error fails the test below, with its message
                errors.append(f"{type(error).__name__}: {error}")

        threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(results) == 24
    assert all(np.array_equal(labels, expected[photo]) for photo, labels in results.values())


# -------------------------------------------------------------------------------------- outputs and inputs

def test_segment_mirrors_the_input_tree_and_never_writes_an_output_twice(onnx_artifact, tmp_path):
    tree = tmp_path / "tree"
    photos = sorted(EVAL_IMAGES.glob("*.jpg"))
    for relative, photo in (("sub1/x.jpg", photos[0]), ("sub2/x.jpg", photos[1]), ("x.png", photos[2])):
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.open(photo).resize((160, 120)).save(tree / relative)
    done = cli("segment", onnx_artifact, tree, "--labels", "cat", "--resize", "letterbox", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.overlay.png"))
    assert written == ["sub1/x.overlay.png", "sub2/x.overlay.png", "x.overlay.png"]


def test_one_unreadable_photo_is_skipped_counted_and_fails_the_run_at_the_end(onnx_artifact, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in sorted(EVAL_IMAGES.glob("*.jpg"))[:2]:
        Image.open(photo).resize((160, 120)).save(photos / photo.name)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    done = cli("segment", onnx_artifact, photos, "--labels", "cat", "--resize", "letterbox", "--out", tmp_path / "o")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "1 of 3 photos could not be segmented" in done.stderr and "broken.jpg" in done.stderr
    assert len(list((tmp_path / "o").glob("*.overlay.png"))) == 2 and "skipped:" in done.stdout


def test_a_pipe_is_named_as_what_it_is(onnx_artifact, tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    done = cli("segment", onnx_artifact, fifo, "--labels", "cat", "--out", tmp_path / "o", timeout=60)
    assert done.returncode == 2 and "neither a file nor a directory (a pipe" in done.stderr


@pytest.mark.parametrize("labels, needle", [
    ("cat,Cat, CAT ", "names 'cat' 3 times"),
    ("cat,background", "'background', the class pixels without a confident class get"),
    (" ".join(["word"] * 100), "more than the text encoder's 77"),
])
def test_labels_that_would_mislead_are_refused(onnx_artifact, labels, needle):
    with pytest.raises(UserError, match=needle):
        Segmenter.open(onnx_artifact, labels)


def test_labels_and_templates_of_the_wrong_kind_are_refused(onnx_artifact):
    with pytest.raises(UserError, match="is a bytes, not text"):
        Segmenter.open(onnx_artifact, [b"cat"])
    with pytest.raises(UserError, match="exactly one {} placeholder"):
        Segmenter.open(onnx_artifact, ["cat"], templates=["a {} and a {}."])
    with Segmenter.open(onnx_artifact, ["cat"]) as segmenter:
        with pytest.raises(UserError, match="0x0 pixels"):
            segmenter.segment(np.zeros((0, 0, 3), np.uint8))


def test_too_many_classes_are_refused_before_any_photo_is_encoded(onnx_artifact, tmp_path):
    labels = ",".join(f"class {n}" for n in range(300))
    done = cli("segment", onnx_artifact, sorted(EVAL_IMAGES.glob("*.jpg"))[0], "--labels", labels,
               "--out", tmp_path / "o")
    assert done.returncode == 2 and "301 classes" in done.stderr and not (tmp_path / "o").exists()


def test_a_bad_prototype_count_is_refused_before_any_photo_is_encoded(onnx_artifact, monkeypatch):
    from groupvit_edge.metrics import drift

    def must_not_run(*args, **kwargs):
        raise AssertionError("photos were encoded before the vocabulary was checked")

    monkeypatch.setattr(drift, "encode_windows", must_not_run)
    for labels in ("prototypes:0", "prototypes:abc", "prototypes:-3"):
        with pytest.raises(UserError, match="prototypes:K with a whole K ≥ 1"):
            drift.measure_drift(onnx_artifact, [onnx_artifact], EVAL_IMAGES, labels=labels, progress=False)


@pytest.mark.parametrize("args, needle", [
    (["drift", "--ref", "{art}", "--candidate", "{art}", "--max-drop", "nan"], "--max-drop nan is out of range"),
    (["drift", "--ref", "{art}", "--candidate", "{art}", "--margin", "nan"], "--margin nan is out of range"),
    (["drift", "--ref", "{art}", "--candidate", "{art}", "--margin", "-1"], "--margin -1.0 is out of range"),
    (["bench", "{art}", "--runs", "0"], "Invalid value for '--runs'"),
    (["bench", "{art}", "--batch", "0"], "Invalid value for '--batch'"),
    (["eval", "{art}", "--images", "{images}", "--masks", "{images}", "--limit", "0"], "Invalid value for '--limit'"),
    (["export", "--model", "random:0", "--max-drop", "nan", "--target", "onnx-int8", "--out", "{tmp}/a"],
     "--max-drop nan is out of range"),
    (["export", "--model", "random:0", "--image-size", "10000", "--out", "{tmp}/a"], "GB for one window"),
    (["export", "--model", "random:0", "--target", "onnx-int8", "--calib-count", "0", "--out", "{tmp}/a"],
     "--calib-count 0 is out of range"),
    (["segment", "{art}", "--threads", "0", "--out", "{tmp}/a"], "--threads 0 is out of range"),
])
def test_numbers_out_of_range_are_refused_at_parse_time(onnx_artifact, tmp_path, args, needle):
    values = {"art": onnx_artifact, "images": EVAL_IMAGES, "tmp": tmp_path}
    done = cli(*(arg.format(**values) for arg in args), timeout=120)
    assert done.returncode == 2 and needle in done.stderr, done.stderr
    assert not (tmp_path / "a").exists()


def test_threads_beyond_the_cpus_are_capped_with_a_note(onnx_artifact, tmp_path):
    done = cli("segment", onnx_artifact, sorted(EVAL_IMAGES.glob("*.jpg"))[0], "--labels", "cat", "--resize",
               "letterbox", "--threads", "1000", "--out", tmp_path / "o")
    assert done.returncode == 0, done.stderr
    assert f"--threads 1000 is more than this machine's {os.cpu_count()} CPUs" in done.stderr


def test_a_mask_that_is_not_a_png_is_one_sentence(onnx_artifact, tmp_path):
    photo = sorted(EVAL_IMAGES.glob("*.jpg"))[0]
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.open(photo).save(masks / f"{photo.stem}.png", format="JPEG")      # a JPEG named .png
    done = cli("eval", onnx_artifact, "--images", photo, "--masks", masks)
    assert done.returncode == 2 and "must be single-channel PNGs" in done.stderr


def test_a_full_disk_is_one_sentence_not_a_traceback(onnx_artifact, tmp_path, monkeypatch, capsys):
    import errno
    from groupvit_edge import cli as cli_module
    from groupvit_edge.segmentation import segmenter

    def full(self, directory, stem):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / f"{stem}.overlay.png"))

    monkeypatch.setattr(segmenter.Segmentation, "save", full)
    with pytest.raises(SystemExit) as exit_code:
        cli_module.main(["segment", str(onnx_artifact), str(sorted(EVAL_IMAGES.glob("*.jpg"))[0]), "--labels", "cat",
                         "--resize", "letterbox", "--out", str(tmp_path / "o")])
    assert exit_code.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "No space left on device: free some space" in error and "\n" not in error


# ------------------------------------------------------------------------------------------- manifests

def _edit(data, dotted: str, value):
    *path, last = dotted.split(".")
    for key in path:
        data = data[int(key)] if isinstance(data, list) else data[key]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()


@pytest.mark.parametrize("field, value, needle", [
    ("graphs", ["image.onnx"], "graphs is list, not an object"),
    ("graphs.image.file", None, "graphs.image.file is None"),
    ("graphs.image.file", _DELETE, "graphs.image.file is None"),
    ("schema_version", "abc", "schema_version is 'abc'"),
    ("preprocess.height", "abc", "preprocess.height is 'abc'"),
    ("preprocess.height", 0, "preprocess.height is 0, not positive"),
    ("preprocess.height", 224, "take ['batch', 3, 448, 448], not the preprocess size 224x448"),
    ("preprocess.stride", [0, 224], "preprocess.stride is 0, not positive"),
    ("preprocess.std", [58.4, 0, 57.4], "preprocess.std is 0"),
    ("logit_scale", "inf", "logit_scale is 'inf'"),
    ("logit_scale", -1, "logit_scale is -1, not positive"),
    ("graphs.text.inputs.0.dtype", "int33", "the type 'int33'"),
    ("graphs.image.outputs.0.shape", ["batch", -8, 256], "not positive sizes"),
    ("num_groups", 0, "num_groups is 0, not positive"),
    ("embed_dim", 25.5, "embed_dim is 25.5, not a whole number"),
    ("created", None, "created is None, not a date"),
    ("model.weights_sha256", _DELETE, "model.weights_sha256 is None, not text"),
    ("precision.target", _DELETE, "precision.target is None, not a target name"),
])
def test_a_damaged_manifest_field_is_one_sentence(onnx_artifact, tmp_path, field, value, needle):
    copy = tmp_path / "art"
    shutil.copytree(onnx_artifact, copy)
    data = json.loads((copy / "manifest.json").read_text())
    _edit(data, field, value)
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("(", r"\(")) as error:
        runtimes.open(copy)
    assert "\n" not in str(error.value)
    done = cli("doctor", "--artifact", copy)
    assert done.returncode == 2 and done.stderr.startswith("error: ")


def test_info_on_a_manifest_without_a_field_it_shows_is_one_sentence(onnx_artifact, tmp_path):
    """`info` prints created, num_groups and embed_dim: a hand-edited manifest without one is refused when the
    artifact is verified, with the manifest and the field named, not a KeyError traceback."""
    copy = tmp_path / "art"
    shutil.copytree(onnx_artifact, copy)
    data = json.loads((copy / "manifest.json").read_text())
    del data["embed_dim"]
    (copy / "manifest.json").write_text(json.dumps(data))
    done = cli("info", copy)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: {copy / 'manifest.json'} lacks embed_dim; re-run `groupvit-edge export`\n"


# ---------------------------------------------------------------------------------- writers and leftovers

@pytest.mark.slow
def test_replacing_an_artifact_says_so_refuses_user_files_and_force_keeps_them(tmp_path):
    """A re-export into an existing artifact says it replaces it (the old vocab.npz goes with it), refuses when the
    directory holds files that are not part of the artifact (NOTES.txt, results/), and with --force keeps them:
    an export never silently deletes what a user put there."""
    out = tmp_path / "art"
    export("random:0", out, image_size=SIZE, labels="cat,dog", log=quiet)
    logs = []
    export("random:0", out, image_size=SIZE, log=logs.append)
    assert any(line.startswith(f"replacing the artifact in {out}") for line in logs)
    assert not (out / "vocab.npz").exists() and "vocabulary" not in read_manifest(out).data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]      # no staging or retired copy left
    (out / "NOTES.txt").write_text("mine")
    (out / "results").mkdir()
    (out / "results" / "table.csv").write_text("1,2")
    with pytest.raises(UserError, match="holds 2 entries that are not part of the artifact.*--force"):
        export("random:0", out, image_size=SIZE, log=quiet)
    logs = []
    export("random:0", out, image_size=SIZE, force=True, log=logs.append)
    assert (out / "NOTES.txt").read_text() == "mine" and (out / "results" / "table.csv").is_file()
    assert any("kept NOTES.txt, results" in line for line in logs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_a_second_writer_to_the_same_output_is_refused(tmp_path):
    from groupvit_edge.files import _lock
    with _lock(tmp_path / "art", "artifact"):
        with pytest.raises(UserError, match="another groupvit-edge process is writing"):
            export("random:0", tmp_path / "art", image_size=SIZE, log=quiet)


def test_leftovers_of_a_killed_run_are_removed_unless_they_hold_user_files(tmp_path):
    dead = 2 ** 22 + 12345          # above the kernel's default pid_max: no live process has it
    stale = tmp_path / f".art.{dead}.partial"
    stale.mkdir()
    (stale / "image.onnx").write_bytes(b"x" * 1000)
    retired = tmp_path / f".art.{dead}.old"
    retired.mkdir()
    (retired / "NOTES.txt").write_text("mine")
    logs = []
    export("random:0", tmp_path / "art", image_size=SIZE, log=logs.append)
    assert not stale.exists()
    assert (retired / "NOTES.txt").is_file() and any(f"left {retired} in place" in line for line in logs)


def test_sigterm_mid_export_leaves_nothing_behind(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "groupvit_edge.cli", "export", "--model", "random:0",
                                "--image-size", str(SIZE), "--out", str(tmp_path / "art")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".art.*.partial")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".art.*.partial")), "the export never started writing"
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM and "aborted" in error
    assert list(tmp_path.iterdir()) == []


def test_a_drift_report_replaces_the_previous_one_whole(onnx_artifact, tmp_path):
    from groupvit_edge.metrics.drift import measure_drift
    from groupvit_edge.metrics.render import render_drift_report
    report = tmp_path / "report"
    report.mkdir()
    (report / "drift.json").write_text("{}")
    (report / "99-old-candidate-worst1-x.png").write_bytes(b"stale")
    photo = sorted(EVAL_IMAGES.glob("*.jpg"))[0]
    render_drift_report(measure_drift(onnx_artifact, [onnx_artifact], [photo], labels="prototypes:4", progress=False),
                        report)
    assert not (report / "99-old-candidate-worst1-x.png").exists() and (report / "drift.md").is_file()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"...")
    with pytest.raises(UserError, match="not a groupvit-edge drift report"):
        render_drift_report(measure_drift(onnx_artifact, [onnx_artifact], [photo], labels="prototypes:4",
                                          progress=False), foreign)
    assert (foreign / "holiday.jpg").exists()


# ------------------------------------------------------------------------------------------------ fidelity

def test_the_opencv_resample_is_mmsegs_resize_on_real_photos(onnx_artifact):
    """mmcv.imresize is cv2.resize(INTER_LINEAR); --resample opencv gives exactly its canvas. Pillow (the default)
    anti-aliases when it shrinks: the difference is measured here and stated in docs/benchmarks.md."""
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is in the dev extra")
    from groupvit_edge.artifact import read_manifest
    from groupvit_edge.segmentation.preprocess import load_image, normalize, prepare
    preprocess = read_manifest(onnx_artifact).preprocess
    differences = []
    for photo in sorted(EVAL_IMAGES.glob("*.jpg"))[:10]:
        image = load_image(photo)
        ours = prepare(image, preprocess, resample="opencv")
        height, width = ours.canvas_size
        expected = normalize(cv2.resize(np.asarray(image), (width, height), interpolation=cv2.INTER_LINEAR),
                             preprocess)
        top, left, box_h, box_w = ours.boxes[0]
        np.testing.assert_array_equal(ours.windows[0][:, :box_h, :box_w], expected[:, top:top + box_h, left:left + box_w])
        pillow = prepare(image, preprocess)
        differences.append(float(np.abs(pillow.windows - ours.windows).mean() * np.mean(preprocess.std)))
    print(f"Pillow vs OpenCV canvas, mean abs difference in intensity levels: {np.mean(differences):.2f}")
    with pytest.raises(UserError, match="--resample 'lanczos' is unknown"):
        prepare(image, preprocess, resample="lanczos")


def test_eval_with_the_paper_resize(onnx_artifact, tmp_path):
    pytest.importorskip("cv2", reason="opencv-python-headless is in the dev extra")
    from conftest import EVAL_MASKS
    done = cli("eval", onnx_artifact, "--images", sorted(EVAL_IMAGES.glob("*.jpg"))[0], "--masks", EVAL_MASKS,
               "--resample", "opencv", "--json", tmp_path / "eval.json")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["protocol"]["settings"]["resample"] == "opencv"
