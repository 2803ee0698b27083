"""benchmarks/tensorrt_device_check.py: the check a user runs once on a GPU. Here it can only refuse cleanly
without TensorRT and, end to end on the fake TensorRT of the real 10.3 bindings, produce its table."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import tensorrt_harness as harness
from tensorrt_harness.fake import TensorRTWorld, fake_tensorrt, install

from groupvit_edge.runtimes import tensorrt as trt_runtime

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tensorrt_device_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("tensorrt_device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_check_without_tensorrt_exits_2_with_the_sentence():
    if trt_runtime.is_installed():
        pytest.skip("TensorRT is installed here: the device check runs instead of refusing")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == f"error: {trt_runtime.not_installed_message()}"


def test_inspector_json_to_layer_precisions():
    """The engine inspector's JSON (DETAILED verbosity, the documented layout) → the narrowest type per layer."""
    int8_conv = json.dumps({"Name": "conv1 + relu", "LayerType": "CaskConvolution",
                            "Inputs": [{"Name": "x", "Format/Datatype": "Thirty-two wide channel vectorized row "
                                                                        "major Int8 format."}],
                            "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP16 format"}]})
    layer_norm = json.dumps({"Name": "/ln/LayerNormalization", "LayerType": "Normalization",
                             "Inputs": [{"Format/Datatype": "Float"}], "Outputs": [{"Format/Datatype": "Float"}]})
    reformat = json.dumps({"Name": "Reformatting CopyNode", "LayerType": "Reformat",
                           "Inputs": [{"Format/Datatype": "Float"}], "Outputs": [{"Format/Datatype": "Half"}]})
    layers = [trt_runtime.parse_layer_information(text) for text in (int8_conv, layer_norm, reformat)]
    assert [layer.precision for layer in layers] == ["INT8", "FP32", "FP16"]
    assert trt_runtime.precision_counts(layers) == {"INT8": 1, "FP32": 1}      # reformats compute nothing
    names_only = trt_runtime.parse_layer_information(json.dumps("conv1"))       # built without DETAILED
    assert (names_only.name, names_only.precision) == ("conv1", "unknown")
    script = _load_script()
    assert script.layer_summary(layers) == ("INT8 ×1, FP32 ×1", "1/1")


@pytest.mark.slow
def test_device_check_end_to_end_on_fake_tensorrt(monkeypatch, tmp_path, capsys):
    """The whole script on the fake TensorRT 10.3 (engines run their ONNX in ONNX Runtime): exports, opens the
    artifacts from disk, measures, inspects, prints one table and exits 0."""
    harness.fetch_or_skip("10.3")
    world = TensorRTWorld(gpu="Orin (nvgpu)", keep_models=True)
    trt = fake_tensorrt(harness.api_snapshot("10.3"), world)
    install(monkeypatch, trt, world)
    script = _load_script()
    # ONNX Runtime on a CPU says nothing about INT8 vs FP16 speed on a GPU: that bound is the device's to check.
    monkeypatch.setattr(script, "INT8_SLOWER_LIMIT", float("inf"))
    monkeypatch.setattr(sys, "argv", ["tensorrt_device_check.py", "--runs", "2", "--warmup", "1",
                                      "--calib-count", "4", "--out", str(tmp_path)])
    assert script.main() == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| trt-")]
    assert [line.split(" | ")[0] for line in table] == ["| trt-fp16", "| trt-int8"]
    assert table[0].endswith("| ok |") and "weakly typed from fp32 (FP16, OBEY_PRECISION_CONSTRAINTS)" in table[0]
    assert "strongly typed from qdq-fp16" in table[1] and table[1].endswith("| ok |")
