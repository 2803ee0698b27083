"""What this machine computes with: the CPU model and the ISA extensions that decide which precision is fast.

Benchmarks print `cpu_header()` so figures from different machines are never mixed; `tune` records
`device_identity()` beside its choice so the choice is used only on the machine that measured it.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

# The extensions that matter for GroupViT's matrix products: VNNI (INT8 dot products), AVX-512 BF16, AMX tiles.
RELEVANT_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset()
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


def isa_flags() -> list[str]:
    """The relevant ISA extensions this CPU reports, in RELEVANT_ISA's order."""
    flags = _cpuinfo()[1]
    return [name for name in RELEVANT_ISA if name in flags]


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def cpu_header() -> str:
    """One line for a benchmark's header: model, CPU count and the relevant ISA extensions."""
    isa = isa_flags()
    return f"CPU: {cpu_model()} ({os.cpu_count()} CPUs); ISA: {', '.join(isa) if isa else 'none of ' + ', '.join(RELEVANT_ISA)}"


def device_identity(extra: str = "") -> str:
    """A stable identity of this machine's compute: CPU model, its relevant ISA, CPU count and anything the caller
    adds (a GPU's name); a choice measured on one identity is not reused on another."""
    text = "|".join([cpu_model(), ",".join(isa_flags()), str(os.cpu_count()), extra])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
