"""`doctor`: every registered backend, each through its own module's interface, and the readiness targets."""
from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from groupvit_edge import doctor, runtimes
from groupvit_edge.cli import cli
from groupvit_edge.errors import UserError
from groupvit_edge.runtimes import tensorrt as trt_runtime
from groupvit_edge.runtimes.tensorrt import cuda as trt_cuda

plan = importlib.import_module("groupvit_edge.exporters.plan")    # the package re-exports the function `plan`

INTERFACE = ("NAME", "EXTRA", "Options", "is_installed", "install_hint", "devices", "unsupported_reason",
             "open_runtime")


@pytest.mark.parametrize("name", runtimes.BACKENDS)
def test_every_backend_module_implements_the_whole_interface(name):
    module = runtimes.backend_module(name)
    assert [member for member in INTERFACE if not hasattr(module, member)] == []
    assert module.NAME == name
    assert "pip install" in module.install_hint() and "\n" not in module.install_hint()


def test_the_registry_lists_every_backend_module_once():
    assert sorted(runtimes.BACKENDS) == sorted(runtimes.BACKEND_MODULES)
    assert len(set(runtimes.BACKENDS)) == len(runtimes.BACKENDS)


class _CudaRuntime:
    """cuda-python's runtime API on one Orin: names come back as NUL-padded bytes."""

    class cudaError_t:
        cudaSuccess = 0

    def cudaGetDeviceProperties(self, device):
        return (0, SimpleNamespace(name=b"Orin (nvgpu)\0\0\0", major=8, minor=7))


def test_doctor_asks_each_backend_module_for_its_devices_or_its_install_hint(monkeypatch):
    """Each line comes from that backend's module: changing a module's answer changes the report."""
    onnxruntime = runtimes.backend_module("onnxruntime")
    openvino = runtimes.backend_module("openvino")
    monkeypatch.setattr(onnxruntime, "is_installed", lambda: True)
    monkeypatch.setattr(onnxruntime, "devices", lambda: ["FirstProvider", "SecondProvider"])
    monkeypatch.setattr(openvino, "is_installed", lambda: False)
    monkeypatch.setattr(openvino, "install_hint", lambda: "pip install openvino-from-the-module")
    monkeypatch.setattr(trt_runtime, "is_installed", lambda: True)
    monkeypatch.setattr(trt_cuda, "cuda_runtime_module", lambda: _CudaRuntime())
    monkeypatch.setattr(doctor, "target_readiness", lambda: [])
    statuses = {status.name: status for status in doctor.environment()["backends"]}
    assert list(statuses) == list(runtimes.BACKENDS)
    assert statuses["onnxruntime"].devices == ("FirstProvider", "SecondProvider")
    assert statuses["openvino"].unavailable == "not installed: pip install openvino-from-the-module"
    assert statuses["tensorrt"].devices == ("Orin (nvgpu) (compute capability 8.7)",)
    lines = doctor.report().splitlines()
    backends = lines[lines.index("backends:") + 1:lines.index("backends:") + 1 + len(runtimes.BACKENDS)]
    assert [line.split()[0] for line in backends] == list(runtimes.BACKENDS)
    assert "  onnxruntime  FirstProvider, SecondProvider" in backends
    assert "  openvino     not installed: pip install openvino-from-the-module" in backends
    assert "  tensorrt     Orin (nvgpu) (compute capability 8.7)" in backends


def test_a_backend_installed_without_a_usable_device_says_why(monkeypatch):
    monkeypatch.setattr(trt_runtime, "is_installed", lambda: True)
    monkeypatch.setattr(trt_cuda, "cuda_runtime_module", lambda: None)
    monkeypatch.setattr(trt_cuda, "_torch_cuda", lambda: None)
    status = doctor.backend_status("tensorrt")
    assert status.devices == () and status.unavailable.startswith("no CUDA device 0 is visible")


def test_cuda_device_is_what_engines_are_tied_to():
    device = trt_runtime.CudaDevice("Orin (nvgpu)", "8.7")
    with pytest.raises(AttributeError):
        device.gpu = "RTX 4090"       # frozen: a runtime's device cannot drift from what was checked
    built = {"version": "10.3.0", "gpu": "RTX 4090", "compute_capability": "8.9"}
    assert "this GPU (Orin (nvgpu)) is 8.7" in trt_runtime.engine_incompatibility(built, "10.3.0", device)


def test_doctor_target_choices_are_the_targets_that_declare_a_readiness_check():
    declared = [name for name, target in plan.targets().items() if target.readiness]
    assert declared and list(plan.readiness_targets()) == declared
    choice = next(p for p in cli.commands["doctor"].params if p.name == "target")
    assert list(choice.type.choices) == declared and choice.default == declared[0]
    refused = CliRunner().invoke(cli, ["doctor", "--artifact", ".", "--target", "onnx"])
    assert refused.exit_code == 2 and "'onnx' is not one of" in refused.output
    with pytest.raises(UserError, match="'onnx' has no readiness check"):
        plan.readiness_report(".", "onnx")


@pytest.mark.parametrize("target, missing, backend_here, extra", [
    ("openvino-fp32", {"openvino"}, False, "export,openvino"),
    ("openvino-int8", {"nncf"}, True, "export"),               # nncf comes with the export extra
    ("openvino-int8", {"torch", "openvino"}, False, "export,openvino"),
    ("onnx-fp16", {"onnxconverter_common"}, True, "export"),
    ("trt-fp16", {"torch"}, False, "export"),                  # the engine step says how to get TensorRT
])
def test_a_missing_package_names_the_extra_of_the_targets_backend(monkeypatch, target, missing, backend_here,
                                                                  extra):
    chosen = plan.targets()[target]
    monkeypatch.setattr(runtimes.backend_module(chosen.runs_on), "is_installed", lambda: backend_here)
    monkeypatch.setattr(plan.importlib.util, "find_spec", lambda name: None if name in missing else object())
    [problem] = plan._missing_packages(chosen)
    assert problem.endswith(f"pip install torch==2.13.0 'groupvit-edge[{extra}]'"), problem


def test_the_extra_named_is_the_one_the_backend_module_declares(monkeypatch):
    chosen = plan.targets()["openvino-fp32"]
    backend = runtimes.backend_module(chosen.runs_on)
    monkeypatch.setattr(backend, "is_installed", lambda: False)
    monkeypatch.setattr(backend, "EXTRA", "declared-by-the-backend")
    monkeypatch.setattr(plan.importlib.util, "find_spec", lambda name: None if name in chosen.packages else object())
    [problem] = plan._missing_packages(chosen)
    assert "'groupvit-edge[export,declared-by-the-backend]'" in problem
