"""Whether and how TensorRT is here: the `tensorrt` module, the one sentence that says how to install it, and the
one logger a process gives TensorRT."""
from __future__ import annotations

import functools
import platform

from ...errors import UserError
from ...imports import require

NAME = "tensorrt"
EXTRA = "tensorrt"
# cuda-python 13 links the CUDA 13 runtime statically and needs an R580 driver; JetPack 6 has CUDA 12.6.
CUDA_PYTHON_PIN = "cuda-python>=12.6,<13"
JETSON_CUDA_PYTHON_PIN = "cuda-python>=12.6,<12.7"


def install_hint(machine: str | None = None) -> str:
    """How TensorRT gets onto a machine: pip on x86-64; on a Jetson (aarch64) JetPack's apt packages, which pip
    cannot replace (PyPI's aarch64 TensorRT wheels are for Arm servers, not Jetson)."""
    if (machine or platform.machine()).lower() in ("aarch64", "arm64"):
        return (f"on a Jetson TensorRT comes with JetPack 6.1+ (sudo apt install python3-libnvinfer), so create the "
                f"venv with `python3 -m venv --system-site-packages` and pip install groupvit-edge[tensorrt] "
                f"'{JETSON_CUDA_PYTHON_PIN}' in it")
    return "pip install groupvit-edge[tensorrt] on a machine with an NVIDIA GPU"


def not_installed_message(machine: str | None = None) -> str:
    return (f"TensorRT is not installed: engines are built and run on the machine that uses them; "
            f"{install_hint(machine)}; `groupvit-edge doctor` shows what is here")


def import_tensorrt():
    """The `tensorrt` module, or a UserError with the one sentence that says how to get it."""
    try:
        return require("tensorrt")
    except UserError:
        raise UserError(not_installed_message()) from None
    except Exception as error:   # a wheel whose CUDA libraries are missing fails with OSError and friends
        raise UserError(f"TensorRT is installed but cannot be loaded ({error}): reinstall it for this machine's "
                        f"CUDA ({install_hint()})") from None


@functools.cache
def tensorrt_logger(trt):
    """The one logger of this process for `trt`: TensorRT keeps the logger of the first Builder or Runtime and
    ignores later ones, so builds and runtimes share it."""
    return trt.Logger(trt.Logger.WARNING)
