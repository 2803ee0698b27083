"""Post-training INT8 quantizers producing one QDQ image graph that ONNX Runtime, OpenVINO and TensorRT all read.

The form is fixed by TensorRT's explicit quantization: symmetric INT8 (zero point 0, signed) for activations
and weights, per-channel weights. The calibrators are the maintained ones — NNCF's ONNX post-training
quantization (SmoothQuant, bias correction) and ONNX Runtime's MinMax/Entropy/Percentile — never hand-written.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UserError
from ..hardware import int8_weight_bits
from ..imports import require
from .policy import Policy

METHODS = ("nncf", "minmax", "entropy", "percentile")
DEFAULT_METHOD = "nncf"
SMOOTH_QUANT_ALPHA = 0.95
HISTOGRAM_WINDOWS = 16     # ORT entropy/percentile calibrators: ~330 MB per 448² window (measured)
# 7-bit weights (values in [-64, 63]; NNCF's overflow fix, ORT's reduce_range) where the CPU needs them
# (hardware.int8_weight_bits): x86 CPUs without VNNI or AMX multiply u8×s8 pairs into int16 with saturation
# (vpmaddubsw), which full-range weights overflow. Measured on an AVX2-only EPYC by benchmarks/int8_saturation.py
# (NNCF graph in ONNX Runtime, 448²): group cosine mean/min 0.9813/0.9512 with 8-bit weights, 0.9962/0.9927 with
# 7-bit; computed exactly, 0.9977/0.9901 and 0.9961/0.9915. 7-bit stays symmetric INT8, so TensorRT and VNNI CPUs
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
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )
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
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    with tempfile.TemporaryDirectory() as scratch:
        source, target = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        onnx.save(model, str(source))
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
        return onnx.load(str(target))


def quantize_dynamic_int8(model: onnx.ModelProto, policy: Policy, reduce_range: bool = True,
                          log=print) -> onnx.ModelProto:
    """ONNX Runtime's dynamic INT8: weights INT8 per channel, activations quantized at run time, no calibration.

    ORT's own recommendation for transformers on CPU. The graph uses DynamicQuantizeLinear/MatMulInteger/
    ConvInteger, which only ONNX Runtime's CPU provider runs fast: it is an ORT-CPU artifact, not the shared QDQ one.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    log(f"quantizing {len(policy.quantizable)} weight nodes with ONNX Runtime's dynamic INT8 "
        f"(weights per-channel INT8, activations at run time)")
    with tempfile.TemporaryDirectory() as scratch, _quiet_root_logger():
        source, target = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        onnx.save(model, str(source))
        quantize_dynamic(str(source), str(target), op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                         nodes_to_quantize=list(policy.quantizable), per_channel=True,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8)
        return onnx.load(str(target))


def dynamic_quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Integer matrix products of a dynamically quantized graph: what runs in INT8."""
    return sorted(node.name for node in model.graph.node if node.op_type in ("MatMulInteger", "ConvInteger"))


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


def return_to_float(quantized: onnx.ModelProto, fp32: onnx.ModelProto, nodes) -> onnx.ModelProto:
    """`quantized` with the named nodes computing in float again, from the same calibration.

    Their activation inputs (and outputs, where the quantizer quantized those too) bypass QuantizeLinear →
    DequantizeLinear; their weights and biases come back exactly from `fp32` (a quantizer's bias correction is
    undone), divided by the SmoothQuant scale where the quantizer multiplied their activation by one, which keeps
    the product equal to fp32's. Q/DQ nodes left unused go.
    """
    model = copy.deepcopy(quantized)
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    initializers = {init.name: init for init in graph.initializer}
    original = {node.name: node for node in fp32.graph.node}
    fp32_values = {init.name: init for init in fp32.graph.initializer}
    wanted = set(nodes)
    for node in graph.node:
        if node.name not in wanted:
            continue
        source = original[node.name]
        scale = None
        for position in _read_float_activations(node, producers):
            scale = _smooth_quant_scale(node.input[position], source.input[position], producers, initializers)
        for position, name in enumerate(node.input):
            dequantize = producers.get(name)
            if dequantize is not None and dequantize.op_type == "DequantizeLinear":
                weight = numpy_helper.to_array(fp32_values[source.input[position]])
                if scale is not None:
                    weight = _unscale_weight(node.op_type, weight, scale)
                node.input[position] = _add_initializer(graph, f"{node.name}/float/{position}", weight)
        _restore_bias(graph, node, original, fp32_values, initializers)
        _bypass_output_quantization(graph, node)
    _drop_unused(graph)
    return model


def float_outside_policy(model: onnx.ModelProto, quantizable) -> onnx.ModelProto:
    """ONNX Runtime quantizes a tensor once for all its consumers: a LayerNorm output feeding both a quantized
    projection and the grouping assignment's k_proj reaches the assignment through Q/DQ too. Nodes the policy
    keeps float read the float tensor again."""
    allowed = set(quantizable)
    producers = {output: node for node in model.graph.node for output in node.output}
    for node in model.graph.node:
        if node.name not in allowed and node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            _read_float_activations(node, producers)
    _drop_unused(model.graph)
    return model


def _read_float_activations(node, producers) -> list[int]:
    """Point each input `node` reads through QuantizeLinear → DequantizeLinear at the float tensor the pair
    quantizes; the positions it changed. (Weights, whose DequantizeLinear reads an initializer, stay.)"""
    changed = []
    for position, name in enumerate(node.input):
        dequantize = producers.get(name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        quantize_node = producers.get(dequantize.input[0])
        if quantize_node is not None and quantize_node.op_type == "QuantizeLinear":
            node.input[position] = quantize_node.input[0]
            changed.append(position)
    return changed


def _bypass_output_quantization(graph, node) -> None:
    """ONNX Runtime's QDQ form also quantizes a product's output: consumers read it unquantized again."""
    for output in node.output:
        quantizers = [q.output[0] for q in graph.node if q.op_type == "QuantizeLinear" and q.input[0] == output]
        dequantized = {dq.output[0] for dq in graph.node
                       if dq.op_type == "DequantizeLinear" and dq.input[0] in quantizers}
        for consumer in graph.node:
            for position, name in enumerate(consumer.input):
                if name in dequantized:
                    consumer.input[position] = output


def _smooth_quant_scale(tensor: str, original_tensor: str, producers, initializers) -> np.ndarray | None:
    """The per-channel factor a quantizer multiplied `original_tensor` by to make `tensor` (SmoothQuant), or None
    when the node reads the original activation."""
    if tensor == original_tensor:
        return None
    multiply = producers.get(tensor)
    if multiply is None or multiply.op_type != "Mul" or original_tensor not in multiply.input:
        raise RuntimeError(f"cannot undo the quantizer's change of {original_tensor} into {tensor}")
    other = next(name for name in multiply.input if name != original_tensor)
    return numpy_helper.to_array(initializers[other]).reshape(-1)


def _unscale_weight(op_type: str, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if op_type == "MatMul":                  # x·a @ (W / a) = x @ W, W: [in, out]
        return (weight / scale[:, None]).astype(weight.dtype)
    if op_type == "Conv":                    # input channels are axis 1
        return (weight / scale.reshape(1, -1, *([1] * (weight.ndim - 2)))).astype(weight.dtype)
    raise RuntimeError(f"cannot undo SmoothQuant on a {op_type} node")


def _restore_bias(graph, node, original, fp32_values, initializers) -> None:
    """Bias correction changes the constant added after a quantized product; float gets fp32's back."""
    for consumer in graph.node:
        if consumer.op_type != "Add" or node.output[0] not in consumer.input or consumer.name not in original:
            continue
        for position, name in enumerate(consumer.input):
            reference = original[consumer.name].input[position]
            if name in initializers and reference in fp32_values:
                value = numpy_helper.to_array(fp32_values[reference])
                consumer.input[position] = _add_initializer(graph, f"{consumer.name}/float/{position}", value)


def _add_initializer(graph, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def _drop_unused(graph) -> None:
    """Remove nodes none of whose outputs are used (repeatedly), then initializers nothing reads."""
    outputs = {output.name for output in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(output in used for output in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | outputs
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
