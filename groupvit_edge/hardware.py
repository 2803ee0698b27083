"""What this machine computes with: the CPU model and the ISA extensions that decide which precision is fast.

This is the one place that reads the ISA: every default keyed on it (INT8 weight bits, the float remainder of an
OpenVINO INT8 IR) asks the functions below. `GROUPVIT_EDGE_CPU_FLAGS` (flags separated by commas or spaces)
replaces the flags read from /proc/cpuinfo, so tests cover both branches on any CPU and an export can be made on
one CPU for another. Benchmarks print `cpu_header()` so figures from different machines are never mixed; `tune`
records `device_identity()` beside its choice so the choice is used only on the machine that measured it.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

# The extensions that matter for GroupViT's matrix products: VNNI (INT8 dot products), AVX-512 BF16, AMX tiles.
RELEVANT_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
               "amx_int8")
FLAGS_ENV = "GROUPVIT_EDGE_CPU_FLAGS"
BF16_ISA = ("avx512_bf16", "amx_bf16")
# INT8 dot products that accumulate in int32 (no int16 intermediate for full-range weights to saturate).
INT8_DOT_ISA = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = frozenset(value.split())
    except OSError:     # not Linux: the model from platform, no flags
        pass
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """The CPU's ISA flags as /proc/cpuinfo names them, or as GROUPVIT_EDGE_CPU_FLAGS forces them."""
    forced = os.environ.get(FLAGS_ENV)
    if forced is not None:
        return frozenset(forced.replace(",", " ").split())
    return _cpuinfo()[1]


def isa_flags() -> list[str]:
    """The relevant ISA extensions this CPU reports, in RELEVANT_ISA's order."""
    flags = cpu_flags()
    return [name for name in RELEVANT_ISA if name in flags]


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX)."""
    return any(flag in cpu_flags() for flag in BF16_ISA)


def int8_saturates() -> bool:
    """Whether INT8 matrix products go through an int16 intermediate that full-range (8-bit) weights saturate:
    x86 without VNNI or AMX (vpmaddubsw). Arm's dot products and GPUs accumulate in int32."""
    return is_x86() and not any(flag in cpu_flags() for flag in INT8_DOT_ISA)


def int8_weight_bits() -> int:
    """The weight range an INT8 graph for this CPU uses by default: 8 bits, 7 only where they would saturate."""
    return 7 if int8_saturates() else 8


def cpu_header() -> str:
    """One line for a benchmark's header: model, CPU count and the relevant ISA extensions."""
    isa = isa_flags()
    forced = f" (forced by {FLAGS_ENV})" if FLAGS_ENV in os.environ else ""
    return (f"CPU: {cpu_model()} ({os.cpu_count()} CPUs); ISA: "
            f"{', '.join(isa) if isa else 'none of ' + ', '.join(RELEVANT_ISA)}{forced}")


def device_identity(extra: str = "") -> str:
    """A stable identity of this machine's compute: CPU model, its relevant ISA, CPU count and anything the caller
    adds (a GPU's name); a choice measured on one identity is not reused on another."""
    text = "|".join([cpu_model(), ",".join(isa_flags()), str(os.cpu_count()), extra])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
