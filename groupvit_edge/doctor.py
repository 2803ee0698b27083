"""What this machine has: package versions, devices, and which targets it can build and run."""
from __future__ import annotations

import importlib
import platform
import sys

PACKAGES = ("numpy", "PIL", "torch", "onnx", "onnxsim", "onnxconverter_common", "onnxruntime", "openvino", "nncf",
            "tensorrt")
# target → (packages needed to build it, backend that runs it)
_BASE = ("torch", "onnx", "onnxsim")
TARGETS = {"onnx": (_BASE, "onnxruntime"),
           "onnx-fp16": (_BASE + ("onnxconverter_common",), "onnxruntime"),
           "onnx-int8": (_BASE + ("nncf",), "onnxruntime"),
           "onnx-int8-dynamic": (_BASE + ("onnxruntime",), "onnxruntime"),
           "openvino-fp32": (_BASE + ("openvino",), "openvino"),
           "openvino-fp16": (_BASE + ("openvino",), "openvino"),
           "openvino-int8": (_BASE + ("openvino", "nncf"), "openvino"),
           "trt-fp16": (_BASE + ("tensorrt",), "tensorrt"),
           "trt-int8": (_BASE + ("tensorrt",), "tensorrt")}


def _version(module_name: str) -> str | None:
    try:
        module = importlib.import_module(module_name)
    except Exception:  # a broken install (e.g. a CUDA library missing) counts as absent, like a missing one
        return None
    return getattr(module, "__version__", "installed")


def environment() -> dict:
    versions = {name: _version(name) for name in PACKAGES}
    devices = {}
    if versions["onnxruntime"]:
        import onnxruntime
        devices["onnxruntime"] = onnxruntime.get_available_providers()
    if versions["openvino"]:
        import openvino
        devices["openvino"] = openvino.Core().available_devices
    if versions["tensorrt"]:
        from .errors import UserError
        from .runtimes.tensorrt import device_properties
        try:
            device = device_properties()
            devices["tensorrt"] = [f"{device['gpu']} (compute capability {device['compute_capability']})"]
        except UserError:
            devices["tensorrt"] = ["no CUDA device visible"]
    if versions["torch"]:
        import torch
        devices["torch"] = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            "packages": versions, "devices": devices}


def report() -> str:
    env = environment()
    lines = [f"python {env['python']} on {env['platform']}", "", "packages:"]
    for name, version in env["packages"].items():
        label = "pillow" if name == "PIL" else name
        lines.append(f"  {label:<12} {version or 'not installed'}")
    lines += ["", "devices:"]
    lines += [f"  {backend:<12} {', '.join(found)}" for backend, found in env["devices"].items()] or ["  none"]
    lines += ["", "targets:"]
    for target, (needs, runner) in TARGETS.items():
        missing = [name for name in needs if not env["packages"][name]]
        build = "can build" if not missing else f"cannot build (missing {', '.join(missing)})"
        run = "can run" if env["packages"][runner] else f"cannot run (pip install groupvit-edge[{runner}])"
        lines.append(f"  {target:<14} {build}; {run}")
    if not env["packages"]["tensorrt"]:
        lines.append("  trt-*          TensorRT is not installed here (needs an NVIDIA GPU; see DEVELOPERS.md)")
    return "\n".join(lines)
