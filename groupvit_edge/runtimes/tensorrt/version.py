"""TensorRT versions: which this toolkit builds for, how a version string reads, and whether engines a manifest
records load in the TensorRT and on the GPU here. Pure functions, no TensorRT needed."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cuda import CudaDevice

MIN_VERSION = (10, 3)                # JetPack 6.1/6.2; the parser table of checks.tensorrt is 10.3's
STRONG_BY_DEFAULT_FROM = (10, 12)    # weak typing deprecated in 10.12 (release notes)
WEAK_TYPING_REMOVED_IN = 11


def version_parts(version: str) -> tuple[int, ...]:
    """The dotted numbers a TensorRT version starts with: "10.3.0" → (10, 3, 0), "10.12.0.36" → (10, 12, 0, 36),
    "10.3.0rc1" → (10, 3, 0); () for a string that starts with none."""
    match = re.match(r"\s*\d+(?:\.\d+)*", str(version))
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def versions_match(built: str, installed: str) -> bool:
    """Same TensorRT release. The standard runtime needs major, minor, patch (and build where both have one) to
    match (DRIVE OS TensorRT release notes; "By default, TensorRT engines are compatible only with the version of
    TensorRT used to build them", 10.16 version-compatibility page); `tensorrt.__version__` has 3 or 4 parts."""
    a, b = version_parts(built), version_parts(installed)
    common = min(len(a), len(b))
    return common >= 3 and a[:common] == b[:common]


def engine_incompatibility(recorded: dict | None, installed_version: str, device: CudaDevice | None) -> str | None:
    """Why engines described by a manifest's `tensorrt` record cannot load here, in one sentence; None if they can.

    Engines are tied to the TensorRT version that built them and, without hardware compatibility mode, to the GPU
    architecture ("Engines built with hardware compatibility mode can run on multiple GPU architectures ... Without
    this mode, engines are not portable across different GPU architectures", support matrix 10.10).
    """
    if not recorded or not recorded.get("version"):
        return ("its manifest does not say which TensorRT built the engines; re-run `groupvit-edge export` "
                "with a trt-* target on this machine")
    target = recorded.get("target", "trt-fp16")
    if not versions_match(recorded["version"], installed_version):
        return (f"its engines were built with TensorRT {recorded['version']} and this machine has TensorRT "
                f"{installed_version}: an engine loads only in the TensorRT that built it; rebuild here with "
                f"`groupvit-edge export --target {target}`")
    if device is not None and recorded.get("compute_capability") != device.compute_capability:
        return (f"its engines were built for compute capability {recorded.get('compute_capability')} "
                f"({recorded.get('gpu')}) and this GPU ({device.gpu}) is {device.compute_capability}: "
                f"rebuild on this GPU with `groupvit-edge export --target {target}`")
    return None
