"""One Runtime interface: backend selection, refusals with one sentence, and no torch needed to run."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from groupvit_edge import Segmenter, runtimes
from groupvit_edge.errors import UserError
from groupvit_edge.runtimes import onnxruntime as ort_backend


def test_open_picks_onnxruntime_for_an_onnx_artifact(onnx_artifact):
    runtime = runtimes.open(onnx_artifact)
    assert runtime.name == "onnxruntime"
    assert "CPUExecutionProvider" in runtime.description


def test_open_gives_the_reference_for_a_checkpoint(reference_runtime):
    assert reference_runtime.name == "torch"
    assert reference_runtime.manifest.preprocess.height == 448


def test_onnxruntime_matches_the_reference_on_real_windows(onnx_artifact, reference_runtime, coco_images):
    segmenter = Segmenter(runtimes.open(onnx_artifact, threads=2), ["cat", "dog"])
    _, prepared = segmenter.prepare(coco_images[1])
    ours = segmenter.runtime.encode_image(prepared.windows)
    theirs = reference_runtime.encode_image(prepared.windows)
    for name in ("group_embeds", "image_embed", "grouping"):
        assert np.abs(getattr(ours, name) - getattr(theirs, name)).max() < 1e-4, name


def test_missing_backend_package_names_the_extra(onnx_artifact, monkeypatch):
    monkeypatch.setattr(ort_backend, "is_installed", lambda: False)
    with pytest.raises(UserError, match=r"pip install groupvit-edge\[onnxruntime\]"):
        runtimes.open(onnx_artifact)


def test_checkpoint_with_an_artifact_backend_is_refused(random_checkpoint):
    with pytest.raises(UserError, match="export it first"):
        runtimes.open(str(random_checkpoint), backend="onnxruntime")


def _copy(artifact, tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy)
    return copy


@pytest.mark.parametrize("damage, needle", [
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "corrupt"),
    (lambda d: (d / "manifest.json").write_text(json.dumps({"schema_version": 1})), "lacks"),
    (lambda d: (d / "image.onnx").unlink(), "missing image.onnx"),
    (lambda d: (d / "image.onnx").write_bytes(b"garbage"), "image.onnx .*sha256"),
])
def test_damaged_artifacts_are_refused(onnx_artifact, tmp_path, damage, needle):
    copy = _copy(onnx_artifact, tmp_path)
    damage(copy)
    with pytest.raises(UserError, match=needle) as error:
        runtimes.open(copy, backend="onnxruntime")
    assert "\n" not in str(error.value)


def test_newer_schema_is_refused(onnx_artifact, tmp_path):
    copy = _copy(onnx_artifact, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="upgrade groupvit-edge"):
        runtimes.open(copy)


def test_running_an_artifact_needs_no_torch(onnx_artifact, coco_images):
    """A device image has no torch: block its import and segment through ONNX Runtime."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # any `import torch` now raises ImportError
        import groupvit_edge
        from groupvit_edge import Segmenter
        seg = Segmenter.open({str(onnx_artifact)!r}, labels=["cat", "dog", "grass"])
        result = seg.segment({str(coco_images[2])!r})
        assert result.labels.shape == (result.image.height, result.image.width)
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("ok", seg.runtime.name)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok onnxruntime"


def test_a_session_that_does_not_load_gets_the_fix_for_its_cause():
    """ONNX Runtime's own errors: a newer opset asks for a newer onnxruntime, a provider that cannot start names
    the provider, and only a file ONNX Runtime cannot parse asks for a re-export."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from groupvit_edge.runtimes.onnxruntime import load_advice

    def first_error_line(model_bytes: bytes) -> str:
        with pytest.raises(Exception) as raised:
            ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        return str(raised.value).splitlines()[0]

    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    future = helper.make_model(relu, opset_imports=[helper.make_opsetid("", 40)])
    future.ir_version = 10
    assert "upgrade onnxruntime" in load_advice(first_error_line(future.SerializeToString()),
                                                ["CPUExecutionProvider"])
    garbage = first_error_line(b"not a graph")
    assert "re-run `groupvit-edge export`" in load_advice(garbage, ["CPUExecutionProvider"])
    with_cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "re-run `groupvit-edge export`" in load_advice(garbage, with_cuda)
    # The first line ORT 1.x prints when its CUDA provider meets an older driver (no GPU here to make it happen).
    driver = ("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 35: CUDA driver version is insufficient for CUDA "
              "runtime version ; GPU=0 ; hostname=jetson ; expr=cudaSetDevice(info_.device_id);")
    assert "CUDAExecutionProvider could not start" in load_advice(driver, with_cuda)
