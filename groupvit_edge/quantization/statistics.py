"""Calibration: activation statistics from the photos, by the maintained post-training quantizers, as one QDQ
image graph that ONNX Runtime, OpenVINO and TensorRT all read.

The form is fixed by TensorRT's explicit quantization: symmetric INT8 (zero point 0, signed) for activations
and weights, per-channel weights. The calibrators are the maintained ones — NNCF's ONNX post-training
quantization (SmoothQuant, bias correction) and ONNX Runtime's MinMax/Entropy/Percentile — never hand-written.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError
from ..hardware import int8_weight_bits
from ..imports import require
from .form import float_outside_policy
from .policy import Policy

if TYPE_CHECKING:
    import onnx

METHODS = ("nncf", "minmax", "entropy", "percentile")
DEFAULT_METHOD = "nncf"
SMOOTH_QUANT_ALPHA = 0.95
HISTOGRAM_WINDOWS = 16     # ORT entropy/percentile calibrators: ~330 MB per 448² window (measured)
# 7-bit weights (values in [-64, 63]; NNCF's overflow fix, ORT's reduce_range) where the CPU needs them
# (hardware.int8_weight_bits): x86 CPUs without VNNI or AMX multiply u8×s8 pairs into int16 with saturation
# (vpmaddubsw), which full-range weights overflow (benchmarks/int8_saturation.py measures both; docs/benchmarks.md
# has the figures). 7-bit stays symmetric INT8, so TensorRT and VNNI CPUs
# read the same graph at a small cost.
WEIGHT_BITS = (7, 8)


@dataclass(frozen=True)
class MethodOptions:
    method: str = DEFAULT_METHOD
    smooth_quant_alpha: float = SMOOTH_QUANT_ALPHA     # nncf: SmoothQuant migration strength for MatMul
    fast_bias_correction: bool = True                  # nncf
    percentile: float = 99.999                         # ORT percentile calibrator
    weight_bits: int = field(default_factory=int8_weight_bits)

    @property
    def reduce_range(self) -> bool:
        return self.weight_bits == 7

    def to_dict(self) -> dict:
        keys = {"nncf": ("smooth_quant_alpha", "fast_bias_correction"), "percentile": ("percentile",)}
        return {"method": self.method, "weight_bits": self.weight_bits,
                **{k: getattr(self, k) for k in keys.get(self.method, ())}}


def quantize(model: onnx.ModelProto, windows: np.ndarray, policy: Policy, options: MethodOptions,
             log=print) -> onnx.ModelProto:
    if options.method not in METHODS:
        raise UserError(f"--calib-method {options.method!r} is unknown: use one of {', '.join(METHODS)}")
    if options.weight_bits not in WEIGHT_BITS:
        raise UserError(f"--int8-weight-bits {options.weight_bits} is not supported: use 7 or 8")
    if options.method == "nncf":
        return _quantize_nncf(model, windows, policy, options, log)
    return _quantize_ort(model, windows, policy, options, log)


def _quantize_nncf(model, windows, policy: Policy, options: MethodOptions, log) -> onnx.ModelProto:
    nncf = _nncf()
    allowed = set(policy.quantizable)
    ignored = [node.name for node in model.graph.node if node.name not in allowed]
    log(f"quantizing with NNCF (symmetric INT8, SmoothQuant α={options.smooth_quant_alpha}, bias correction) "
        f"on {len(windows)} windows")
    return nncf_quantize(model, windows, nncf.IgnoredScope(names=ignored, validate=False), options)


def _nncf():
    nncf = require("nncf", what="--calib-method nncf", package="NNCF", otherwise=" (or choose --calib-method minmax)")
    logging.getLogger("nncf").setLevel(logging.WARNING)
    return nncf


def nncf_quantize(model, windows: np.ndarray, ignored_scope, options: MethodOptions):
    """NNCF post-training quantization of an ONNX model or an OpenVINO IR, the same settings for both routes:
    TRANSFORMER, symmetric (PERFORMANCE preset), SmoothQuant on MatMul, bias correction, every window."""
    nncf = _nncf()
    advanced = require("nncf.quantization.advanced_parameters", package="NNCF")
    AdvancedQuantizationParameters = advanced.AdvancedQuantizationParameters
    AdvancedSmoothQuantParameters = advanced.AdvancedSmoothQuantParameters
    OverflowFix = advanced.OverflowFix
    return nncf.quantize(
        model, nncf.Dataset(list(windows), lambda window: {"pixels": window[None]}),
        preset=nncf.QuantizationPreset.PERFORMANCE, model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(windows), fast_bias_correction=options.fast_bias_correction, ignored_scope=ignored_scope,
        advanced_parameters=AdvancedQuantizationParameters(
            # FIRST_LAYER is NNCF's own default (7-bit weights on the patch embedding only).
            overflow_fix=OverflowFix.ENABLE if options.reduce_range else OverflowFix.FIRST_LAYER,
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=options.smooth_quant_alpha)))


class WindowReader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed windows, one window per batch, with the
    `len`/`set_range` that its strided MinMax calibration uses."""

    def __init__(self, windows: np.ndarray):
        self._all = windows
        self._windows = iter(windows)

    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._windows = iter(self._all[start_index:end_index])

    def get_next(self):
        window = next(self._windows, None)
        return None if window is None else {"pixels": window[None]}


def minmax_stride(count: int, most: int = 16) -> int:
    """Windows per MinMax statistics pass: the largest divisor of `count` up to `most` (ORT requires a divisor).

    MinMax keeps every intermediate tensor of the windows it has seen (~330 MB per 448² window), so it must fold
    them in passes. ORT's own `CalibMaxIntermediateOutputs` does not: in onnxruntime 1.32 `collect_data` clears
    the tensors every N windows *without* computing their ranges, so only the last partial pass counts (and a
    window count divisible by N fails with "No data is collected"). `CalibStridedMinMax` computes and merges the
    ranges of each pass.
    """
    return max(d for d in range(1, min(most, count) + 1) if count % d == 0)


def _quantize_ort(model, windows, policy: Policy, options: MethodOptions, log) -> onnx.ModelProto:
    CalibrationMethod = _ort_quantization().CalibrationMethod
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options.method]
    if options.method != "minmax" and len(windows) > HISTOGRAM_WINDOWS:
        # Measured: ORT 1.32's percentile calibrator held 24 GB for 73 windows at 448² and was OOM-killed;
        # its histogram calibrators keep every activation of every window until the end.
        log(f"ONNX Runtime's {options.method} calibrator keeps every activation in memory: calibrating on the "
            f"first {HISTOGRAM_WINDOWS} of {len(windows)} windows")
        windows = windows[:HISTOGRAM_WINDOWS]
    log(f"quantizing with ONNX Runtime's {options.method} calibrator (symmetric S8S8 QDQ, per-channel) "
        f"on {len(windows)} windows")
    with _quiet_root_logger():
        return float_outside_policy(_run_quantize_static(model, windows, policy, options, method), policy.quantizable)


@contextlib.contextmanager
def _quiet_root_logger():
    """ORT's quantizers log advice on the root logger ("consider pre-processing"); it is not for our users."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _run_quantize_static(model, windows, policy, options, method):
    ortq = _ort_quantization()
    QuantFormat, QuantType, quantize_static = ortq.QuantFormat, ortq.QuantType, ortq.quantize_static
    with tempfile.TemporaryDirectory() as scratch:
        source, target = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        _onnx().save(model, str(source))
        quantize_static(
            str(source), str(target), WindowReader(windows), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "Gemm", "MatMul"], nodes_to_quantize=list(policy.quantizable),
            per_channel=True, reduce_range=options.reduce_range, activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8, calibrate_method=method,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           # int32 bias Q/DQ is ORT-specific; TensorRT's explicit quantization takes INT8 Q/DQ.
                           "QuantizeBias": False,
                           "CalibPercentile": options.percentile,
                           # memory stays flat over 128+ calibration images (see minmax_stride)
                           **({"CalibStridedMinMax": minmax_stride(len(windows))}
                              if options.method == "minmax" else {})})
        return _onnx().load(str(target))


def quantize_dynamic_int8(model: onnx.ModelProto, policy: Policy, reduce_range: bool = True,
                          log=print) -> onnx.ModelProto:
    """ONNX Runtime's dynamic INT8: weights INT8 per channel, activations quantized at run time, no calibration.

    ORT's own recommendation for transformers on CPU. The graph uses DynamicQuantizeLinear/MatMulInteger/
    ConvInteger, which only ONNX Runtime's CPU provider runs fast: it is an ORT-CPU artifact, not the shared QDQ one.
    """
    ortq = _ort_quantization()
    QuantType, quantize_dynamic = ortq.QuantType, ortq.quantize_dynamic
    log(f"quantizing {len(policy.quantizable)} weight nodes with ONNX Runtime's dynamic INT8 "
        f"(weights per-channel INT8, activations at run time)")
    with tempfile.TemporaryDirectory() as scratch, _quiet_root_logger():
        source, target = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        _onnx().save(model, str(source))
        quantize_dynamic(str(source), str(target), op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                         nodes_to_quantize=list(policy.quantizable), per_channel=True,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8)
        return _onnx().load(str(target))


def _onnx():
    return require("onnx", extra="export", what="calibration")


def _ort_quantization():
    return require("onnxruntime.quantization", extra="export", what="calibration", package="onnxruntime")
