"""Post-training INT8 quantizers producing one QDQ image graph that ONNX Runtime, OpenVINO and TensorRT all read.

The form is fixed by TensorRT's explicit quantization: symmetric INT8 (zero point 0, signed) for activations
and weights, per-channel weights. The calibrators are the maintained ones — NNCF's ONNX post-training
quantization (SmoothQuant, bias correction) and ONNX Runtime's MinMax/Entropy/Percentile — never hand-written.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UserError
from .policy import Policy

METHODS = ("nncf", "minmax", "entropy", "percentile")
DEFAULT_METHOD = "nncf"
SMOOTH_QUANT_ALPHA = 0.95
HISTOGRAM_WINDOWS = 16     # ORT entropy/percentile calibrators: ~330 MB per 448² window (measured)


@dataclass(frozen=True)
class MethodOptions:
    method: str = DEFAULT_METHOD
    smooth_quant_alpha: float = SMOOTH_QUANT_ALPHA     # nncf: SmoothQuant migration strength for MatMul
    fast_bias_correction: bool = True                  # nncf
    percentile: float = 99.999                         # ORT percentile calibrator

    def to_dict(self) -> dict:
        keys = {"nncf": ("smooth_quant_alpha", "fast_bias_correction"), "percentile": ("percentile",)}
        return {"method": self.method, **{k: getattr(self, k) for k in keys.get(self.method, ())}}


def quantize(model: onnx.ModelProto, windows: np.ndarray, policy: Policy, options: MethodOptions,
             log=print) -> onnx.ModelProto:
    if options.method not in METHODS:
        raise UserError(f"--calib-method {options.method!r} is unknown: use one of {', '.join(METHODS)}")
    if options.method == "nncf":
        return _quantize_nncf(model, windows, policy, options, log)
    return _quantize_ort(model, windows, policy, options, log)


def _quantize_nncf(model, windows, policy: Policy, options: MethodOptions, log) -> onnx.ModelProto:
    try:
        import nncf
        from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                           AdvancedSmoothQuantParameters)
    except ImportError:
        raise UserError("--calib-method nncf needs NNCF: pip install nncf (or choose --calib-method minmax)") from None
    import logging
    logging.getLogger("nncf").setLevel(logging.WARNING)
    allowed = set(policy.quantizable)
    ignored = [node.name for node in model.graph.node if node.name not in allowed]
    log(f"quantizing with NNCF (symmetric INT8, SmoothQuant α={options.smooth_quant_alpha}, bias correction) "
        f"on {len(windows)} windows")
    return nncf.quantize(
        model, nncf.Dataset(list(windows), lambda window: {"pixels": window[None]}),
        preset=nncf.QuantizationPreset.PERFORMANCE, model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(windows), fast_bias_correction=options.fast_bias_correction,
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        advanced_parameters=AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=options.smooth_quant_alpha)))


class _WindowReader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed windows, one window per batch."""

    def __init__(self, windows: np.ndarray):
        self._windows = iter(windows)

    def get_next(self):
        window = next(self._windows, None)
        return None if window is None else {"pixels": window[None]}


def _quantize_ort(model, windows, policy: Policy, options: MethodOptions, log) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod
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
    import logging
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)   # quantize_static logs advice on the root logger; it is not for our users
    try:
        return _run_quantize_static(model, windows, policy, options, method)
    finally:
        root.setLevel(level)


def _run_quantize_static(model, windows, policy, options, method):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    with tempfile.TemporaryDirectory() as scratch:
        source, target = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        onnx.save(model, str(source))
        quantize_static(
            str(source), str(target), _WindowReader(windows), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "Gemm", "MatMul"], nodes_to_quantize=list(policy.quantizable),
            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=method,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           # int32 bias Q/DQ is ORT-specific; TensorRT's explicit quantization takes INT8 Q/DQ.
                           "QuantizeBias": False,
                           # MinMax keeps every intermediate output until the end: fold them every 16 batches
                           # so memory stays flat over 128+ calibration images.
                           "CalibMaxIntermediateOutputs": 16, "CalibPercentile": options.percentile})
        return onnx.load(str(target))


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes (not Q/DQ themselves) that consume a dequantized tensor: what runs in INT8 on a QDQ backend."""
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return sorted({node.name for node in model.graph.node
                   if node.op_type not in ("QuantizeLinear", "DequantizeLinear")
                   and any(name in dequantized for name in node.input)})


def qdq_form(model: onnx.ModelProto) -> dict:
    """Zero points, dtypes and axes of every Q/DQ pair: what TensorRT's explicit quantization accepts."""
    initializers = {init.name: init for init in model.graph.initializer}
    zero_points, dtypes, per_channel = 0, set(), 0
    nonzero = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) > 2 and node.input[2] in initializers:
            value = numpy_helper.to_array(initializers[node.input[2]])
            zero_points += 1
            dtypes.add(str(value.dtype))
            if np.any(value != 0):
                nonzero.append(node.name)
        scale = initializers.get(node.input[1])
        if scale is not None and numpy_helper.to_array(scale).size > 1:
            per_channel += 1
    return {"qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node),
            "zero_point_dtypes": sorted(dtypes), "nonzero_zero_points": nonzero, "per_channel_qdq": per_channel,
            "symmetric_int8": not nonzero and dtypes <= {"int8"}}
