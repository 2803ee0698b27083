"""What this machine has: package versions, what each backend finds here, and which targets it can build and run."""
from __future__ import annotations

import importlib
import platform
import sys
import tempfile
from dataclasses import dataclass

from .errors import UserError
from .exporters.options import ExportOptions
from .exporters.plan import backend_option_groups, check, make_plan, targets
from .runtimes import BACKENDS, backend_module

PACKAGES = ("numpy", "PIL", "torch", "onnx", "onnxsim", "onnxconverter_common", "onnxruntime", "openvino", "nncf",
            "tensorrt")


def _version(module_name: str) -> str | None:
    try:
        module = importlib.import_module(module_name)
    except Exception:  # a broken install (e.g. a CUDA library missing) counts as absent, like a missing one
        return None
    return getattr(module, "__version__", "installed")


@dataclass(frozen=True)
class BackendStatus:
    """One registered backend on this machine: what it offers here, or why it cannot run and the fix."""
    name: str
    devices: tuple[str, ...] = ()
    unavailable: str | None = None

    def describe(self) -> str:
        return self.unavailable or ", ".join(self.devices) or "no devices"


def backend_status(name: str) -> BackendStatus:
    module = backend_module(name)
    if not module.is_installed():
        return BackendStatus(name, unavailable=f"not installed: {module.install_hint()}")
    try:
        return BackendStatus(name, tuple(module.devices()))
    except UserError as error:     # installed, but e.g. no CUDA device it can use
        return BackendStatus(name, unavailable=str(error))


def environment() -> dict:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            "packages": {name: _version(name) for name in PACKAGES},
            "backends": [backend_status(name) for name in BACKENDS]}


def report() -> str:
    env = environment()
    lines = [f"python {env['python']} on {env['platform']}", "", "packages:"]
    for name, version in env["packages"].items():
        label = "pillow" if name == "PIL" else name
        lines.append(f"  {label:<12} {version or 'not installed'}")
    lines += ["", "backends:"]
    lines += [f"  {status.name:<12} {status.describe()}" for status in env["backends"]]
    lines += ["", "targets:"]
    lines += [f"  {name:<18} {build}; {run}" for name, build, run in target_readiness()]
    return "\n".join(lines)


def target_readiness() -> list[tuple[str, str, str]]:
    """(target, can it be built here, can it be run here): the export's own plan check, asked of each target."""

    options = ExportOptions.from_values(backend_option_groups())
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, target in targets().items():
            problems = check(make_plan("random:0", name, f"{scratch}/{name}", options))
            build = "can build" if not problems else f"cannot build ({problems[0].split(';')[0]})"
            module = backend_module(target.runs_on)
            run = "can run" if module.is_installed() else f"cannot run ({module.install_hint()})"
            rows.append((name, build, run))
    return rows
