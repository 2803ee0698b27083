"""What this machine has: package versions, devices, and which targets it can build and run."""
from __future__ import annotations

import importlib
import platform
import sys

PACKAGES = ("numpy", "PIL", "torch", "onnx", "onnxsim", "onnxconverter_common", "onnxruntime", "openvino", "nncf",
            "tensorrt")


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
    lines += [f"  {name:<18} {build}; {run}" for name, build, run in target_readiness()]
    return "\n".join(lines)


def target_readiness() -> list[tuple[str, str, str]]:
    """(target, can it be built here, can it be run here): the export's own plan check, asked of each target."""
    import tempfile
    from .exporters.options import ExportOptions
    from .exporters.plan import backend_option_groups, check, plan, targets
    from .runtimes import backend_module
    options = ExportOptions.from_values(backend_option_groups())
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, target in targets().items():
            problems = check(plan("random:0", name, f"{scratch}/{name}", options))
            build = "can build" if not problems else f"cannot build ({problems[0].split(';')[0]})"
            module = backend_module(target.runs_on)
            hint = module.install_hint() if hasattr(module, "install_hint") else \
                f"pip install groupvit-edge[{module.EXTRA}]"
            run = "can run" if module.is_installed() else f"cannot run ({hint})"
            rows.append((name, build, run))
    return rows
