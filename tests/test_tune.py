"""`tune` on the device: every backend × precision measured, the fastest within the budget recorded with the
device's identity and used by `runtimes.open` there only; the selection logic with injected measurements."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from groupvit_edge import runtimes
from groupvit_edge.exporters import export
from groupvit_edge.metrics import tune as tuning
from groupvit_edge.metrics.drift import DriftBudget
from groupvit_edge.runtimes.base import Configuration

from conftest import EVAL_IMAGES

SIZE = 224


def quiet(message):
    pass


def _measured(label, latency, failures=(), error=None):
    entry = tuning.Measured(Configuration("openvino", {"inference_precision": label}, label), label, latency, 1.0)
    entry.drift = object() if error is None else None
    entry.failures, entry.error = list(failures), error
    return entry


def test_the_fastest_configuration_within_the_budget_is_chosen():
    f32, bf16, broken = _measured("f32", 60.0), _measured("bf16", 50.0), _measured("f16", 10.0, error="no f16")
    assert tuning.choose([f32, bf16, broken]) is bf16
    too_far = _measured("bf16", 50.0, failures=["cosine 0.98 is below 0.995"])
    assert tuning.choose([f32, too_far]) is f32          # never the faster one outside the budget
    assert tuning.choose([too_far, broken]) is None      # nothing fits: nothing is chosen


@pytest.fixture(scope="module")
def openvino_fp32(tmp_path_factory):
    pytest.importorskip("openvino", reason="openvino is in the dev extra; tune is measured on an OpenVINO artifact")
    out = tmp_path_factory.mktemp("tune") / "ov"
    export("random:0", out, "openvino-fp32", image_size=SIZE, log=quiet)
    return out


@pytest.fixture(scope="module")
def photos():
    return sorted(EVAL_IMAGES.glob("*.jpg"))[:3]


def test_tune_measures_every_configuration_records_the_choice_and_open_uses_it(openvino_fp32, photos, monkeypatch):
    report = tuning.tune(openvino_fp32, photos, runs=2, log=quiet)
    labels = {m.configuration.label for m in report.measured}
    assert "onnxruntime, fp32 ONNX" in labels and "openvino CPU, fp32 IR, f32" in labels
    capabilities = __import__("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert ("openvino CPU, fp32 IR, bf16" in labels) == ("BF16" in capabilities)
    assert all(m.latency_ms > 0 and m.drift is not None for m in report.measured)
    assert report.chosen is not None and report.chosen.fits
    assert report.chosen.latency_ms == min(m.latency_ms for m in report.measured if m.fits)
    record = json.loads((openvino_fp32 / "tuned.json").read_text())
    assert record["chosen"]["label"] == report.chosen.configuration.label and len(record["device"]) == 16
    runtime = runtimes.open(openvino_fp32)
    assert runtime.name == report.chosen.configuration.backend
    assert runtime.description == report.chosen.description      # the precision tune measured, not the default
    runtime.close()
    # Which configuration is fastest depends on the machine; every OpenVINO precision measured here, once recorded,
    # is the one `open` compiles.
    tuned = openvino_fp32 / "tuned.json"
    measured_openvino = [m.configuration for m in report.measured if m.configuration.backend == "openvino"]
    assert measured_openvino
    for configuration in measured_openvino:
        tuned.write_text(json.dumps({**record, "chosen": {"backend": configuration.backend,
                                                          "options": configuration.options,
                                                          "label": configuration.label}}))
        runtime = runtimes.open(openvino_fp32)
        assert runtime.name == "openvino"
        assert runtime.inference_precision == configuration.options["inference_precision"]
        runtime.close()
    tuned.write_text(json.dumps(record))
    assert runtimes.open(openvino_fp32, threads=1).name == "openvino"     # explicit options: the usual choice
    from groupvit_edge.runtimes import tuned as tuned_record
    monkeypatch.setattr(tuned_record, "device_identity", lambda: "another-device")
    assert runtimes.tuned_choice(openvino_fp32) is None            # measured elsewhere: not used here


def test_a_configuration_that_crashes_or_cannot_open_is_a_failed_row_and_tune_chooses_among_the_rest(
        openvino_fp32, photos, monkeypatch):
    """The first configuration's process dies of SIGSEGV (as a CPU plugin importing a foreign blob did), the second
    names a device this machine lacks: both are failed rows with their reason, the third is measured and chosen.
    tune runs in a thread so that a parent waiting forever fails this test instead of hanging it."""
    import multiprocessing
    import os
    import signal
    import threading
    import time
    crashing = Configuration("openvino", {"device": "CPU", "inference_precision": "f32"}, "openvino, crashes")
    missing = Configuration("openvino", {"device": "GPU", "inference_precision": "f32"}, "openvino GPU, f32")
    fp32 = Configuration("onnxruntime", {}, "onnxruntime, fp32 ONNX")
    monkeypatch.setattr(tuning, "configurations", lambda manifest: [crashing, missing, fp32])
    finished = {}

    def run():
        finished["report"] = tuning.tune(openvino_fp32, photos[:2], runs=1, record=False, log=quiet)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    (child,) = multiprocessing.active_children()
    os.kill(child.pid, signal.SIGSEGV)
    thread.join(timeout=600)
    assert not thread.is_alive(), "tune is still waiting for a configuration whose process died"
    report = finished["report"]
    errors = {m.configuration.label: m.error for m in report.measured}
    assert errors["openvino, crashes"] == "killed by SIGSEGV"
    assert errors["openvino GPU, f32"].startswith("OpenVINO device GPU is not available here")
    assert errors["onnxruntime, fp32 ONNX"] is None
    assert report.chosen is not None and report.chosen.configuration == fp32
    table = report.to_markdown()
    assert "| openvino, crashes | failed: killed by SIGSEGV |" in table and "chose onnxruntime, fp32 ONNX" in table


def test_bf16_is_offered_only_where_the_cpu_has_it(openvino_fp32, monkeypatch):
    """The ISA-dependent choice is testable on any CPU: the capability list decides."""
    from groupvit_edge.artifact import read_manifest
    from groupvit_edge.runtimes import openvino as openvino_backend
    manifest = read_manifest(openvino_fp32)

    class Core:
        capabilities = ["FP32"]

        def get_property(self, device, name):
            return self.capabilities

    class FakeOpenVino:
        pass

    FakeOpenVino.Core = Core
    monkeypatch.setattr(openvino_backend, "_import", lambda: FakeOpenVino)
    assert [c.options["inference_precision"] for c in openvino_backend.configurations(manifest)] == ["f32"]
    Core.capabilities = ["FP32", "BF16"]
    assert [c.options["inference_precision"] for c in openvino_backend.configurations(manifest)] == ["f32", "bf16"]


@pytest.fixture(scope="module")
def dynamic_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "int8"
    export("random:0", out, "onnx-int8-dynamic", image_size=SIZE, log=quiet)
    return out


def test_tune_an_int8_onnx_artifact_against_its_checkpoint(dynamic_int8, photos):
    # Three photos: the budget is judged on the bounds of intervals over photos, and one photo gives none.
    images = [argument for photo in photos[:3] for argument in ("--images", str(photo))]
    done = subprocess.run([sys.executable, "-m", "groupvit_edge.cli", "tune", str(dynamic_int8), *images,
                           "--runs", "2", "--dry-run"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "drift vs random:0" in done.stdout and "| onnxruntime, int8-dynamic ONNX" in done.stdout
    assert not (dynamic_int8 / "tuned.json").exists()                  # --dry-run


def test_threads_for_a_backend_without_them_is_refused_before_anything_is_measured(dynamic_int8, photos,
                                                                                   monkeypatch):
    from groupvit_edge.errors import UserError
    on_a_jetson = [Configuration("tensorrt", {}, "tensorrt, int8 engines"),
                   Configuration("onnxruntime", {}, "onnxruntime, int8-dynamic ONNX")]
    monkeypatch.setattr(tuning, "configurations", lambda manifest: on_a_jetson)
    logged = []
    with pytest.raises(UserError, match="'threads' applies to torch, onnxruntime, openvino, not to tensorrt"):
        tuning.tune(dynamic_int8, photos[:1], threads=1, runs=1, record=False, log=logged.append)
    assert logged == []          # nothing was measured


def test_max_drop_without_labels_is_refused_before_anything_is_measured(dynamic_int8, photos):
    done = subprocess.run([sys.executable, "-m", "groupvit_edge.cli", "tune", str(dynamic_int8), "--images",
                           str(photos[0]), "--runs", "1", "--dry-run", "--max-drop", "1"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == [
        "error: --max-drop gates class mIoU, which needs a vocabulary to measure it with: add --labels with the "
        "class names (or prototypes:K)"]
    assert "measuring" not in done.stdout


def test_a_bad_vocabulary_is_refused_before_anything_is_measured(dynamic_int8, photos):
    from groupvit_edge.errors import UserError
    logged = []
    with pytest.raises(UserError, match="has an empty class name"):
        tuning.tune(dynamic_int8, photos[:1], labels="cat,,dog", runs=1, record=False, log=logged.append)
    assert logged == []


def test_drift_tune_and_export_take_their_budget_from_one_function():
    from groupvit_edge.errors import UserError
    from groupvit_edge.quantization.search import budget_from
    from groupvit_edge.exporters.options import ExportOptions
    from groupvit_edge.metrics.drift import MODEL_LEVEL_BUDGET, budget_from_flags
    assert budget_from_flags() is None and budget_from_flags(defaults=MODEL_LEVEL_BUDGET) is None
    assert budget_from_flags(max_drop=1.0) == DriftBudget(max_drop=1.0)          # drift: what is given, only
    assert budget_from_flags(min_group_cosine=0.99, defaults=MODEL_LEVEL_BUDGET) == DriftBudget(
        min_confident_group_agreement=MODEL_LEVEL_BUDGET.min_confident_group_agreement, min_group_cosine=0.99)
    # export: --max-drop without --drift-labels asks for the search, gated on the model-level limits
    assert budget_from(ExportOptions.from_values({}, max_drop=1.0)) == MODEL_LEVEL_BUDGET
    assert budget_from(ExportOptions.from_values({}, max_drop=1.0, drift_labels="cat,dog")).max_drop == 1.0
    assert budget_from(ExportOptions.from_values({})) is None
    for flags, needle in (({"max_drop": 101.0}, "--max-drop 101.0 is out of range"),
                          ({"min_confident_agreement": -1.0}, "--min-confident-agreement -1.0 is out of range"),
                          ({"min_group_cosine": float("nan")}, "--min-group-cosine nan is out of range")):
        with pytest.raises(UserError, match=needle):
            budget_from_flags(**flags)


def test_nothing_within_the_budget_records_nothing(dynamic_int8, photos):
    (dynamic_int8 / "tuned.json").write_text("{}")
    impossible = DriftBudget(min_group_cosine=1.0, min_confident_group_agreement=100.0, max_abs_diff=0.0)
    report = tuning.tune(dynamic_int8, photos[:1], budget=impossible, runs=2, log=quiet)
    assert report.chosen is None and not (dynamic_int8 / "tuned.json").exists()
    assert "nothing fits the budget" in report.to_markdown()


def test_tune_exits_1_when_no_configuration_ran_within_the_budget(dynamic_int8, photos):
    """Its one configuration is INT8, whose group cosine cannot be exactly 1."""
    done = subprocess.run([sys.executable, "-m", "groupvit_edge.cli", "tune", str(dynamic_int8), "--images",
                           str(photos[0]), "--runs", "1", "--min-group-cosine", "1.0"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "no configuration measured ran within the budget" in done.stderr
    assert not (dynamic_int8 / "tuned.json").exists()
