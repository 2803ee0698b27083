"""The ISA is read in one place (groupvit_edge.hardware); every default keyed on it follows the flags, and
GROUPVIT_EDGE_CPU_FLAGS forces them, so both branches of each default run on any CPU."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from groupvit_edge import hardware
from groupvit_edge.exporters import make_plan
from groupvit_edge.exporters.options import ExportOptions
from groupvit_edge.exporters.plan import backend_option_groups
from groupvit_edge.quantization.pipeline import int8_weight_bits

SKYLAKE = "avx2,avx512f"                                            # no VNNI, no bf16
ZEN4 = "avx2,avx512f,avx512_vnni,avx512_bf16"
SAPPHIRE_RAPIDS = "avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_bf16 amx_int8"
ALDER_LAKE = "avx2,avx_vnni"


@pytest.mark.parametrize("flags, bf16, saturates", [(SKYLAKE, False, True), (ZEN4, True, False),
                                                    (SAPPHIRE_RAPIDS, True, False), (ALDER_LAKE, False, False)])
def test_the_isa_decides_bf16_and_int8_saturation(monkeypatch, flags, bf16, saturates):
    monkeypatch.setenv(hardware.FLAGS_ENV, flags)
    monkeypatch.setattr(hardware, "is_x86", lambda: True)
    assert hardware.has_bf16() is bf16
    assert hardware.int8_saturates() is saturates
    assert hardware.int8_weight_bits() == (7 if saturates else 8)
    assert "forced by GROUPVIT_EDGE_CPU_FLAGS" in hardware.cpu_header()


def test_arm_never_saturates(monkeypatch):
    monkeypatch.setenv(hardware.FLAGS_ENV, "neon asimd")
    monkeypatch.setattr(hardware, "is_x86", lambda: False)
    assert not hardware.int8_saturates() and hardware.int8_weight_bits() == 8


def _job(target, **options):
    typed = ExportOptions.from_values(backend_option_groups(), **options)
    return SimpleNamespace(options=typed, plan=make_plan("random:0", target, "out", typed))


def test_int8_weight_bits_are_as_asked_else_the_targets_else_the_cpus(monkeypatch):
    monkeypatch.setattr(hardware, "is_x86", lambda: True)
    monkeypatch.setenv(hardware.FLAGS_ENV, SKYLAKE)
    assert int8_weight_bits(_job("onnx-int8")) == 7               # a CPU target exported on a saturating CPU
    assert int8_weight_bits(_job("onnx-int8-dynamic")) == 7
    assert int8_weight_bits(_job("trt-int8")) == 8                # GPUs accumulate in int32
    assert int8_weight_bits(_job("onnx-int8", int8_weight_bits=8)) == 8
    monkeypatch.setenv(hardware.FLAGS_ENV, SAPPHIRE_RAPIDS)
    assert int8_weight_bits(_job("openvino-int8")) == 8
    assert int8_weight_bits(_job("onnx-int8", int8_weight_bits=7)) == 7


def test_without_the_override_the_flags_are_this_cpus(monkeypatch):
    monkeypatch.delenv(hardware.FLAGS_ENV, raising=False)
    assert hardware.cpu_flags() == hardware._cpuinfo()[1]
    assert "forced" not in hardware.cpu_header()
