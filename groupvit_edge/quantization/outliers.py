"""Activation outliers: the few input channels of an INT8 reader that are far larger than the rest.

Trained ViTs carry LayerNorm output channels tens to hundreds of times larger than the others. A per-tensor INT8
activation scale set by such a channel leaves the others a handful of levels; SmoothQuant migrates part of the
range into the weights, and what it cannot absorb is kept in float. The detection reads the fp32 graph's
activations on calibration windows: per reader (a quantized MatMul/Gemm), each input channel's largest magnitude
against the median channel's.

What SmoothQuant cannot absorb is split off, as LLM.int8() does: each outlier reader computes its inlier channels
in INT8 (its input with the outlier channels zeroed, so the activation scale is the inliers') and its few outlier
channels in float, and adds the two. Only when that does not hold the budget do whole readers go back to float.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..artifact_records import OutlierNote
from ..imports import require
from ..model.blocks import block_of
from .measure import run_exposing

if TYPE_CHECKING:
    import onnx

# A channel this many times the median channel's magnitude is an outlier. Seeded random weights give at most
# 8.6x (measured: the group projector's fc2 input; LayerNorm outputs under 4x), the stress checkpoints of
# tests/outliers.py 76x at strength 40; trained ViTs' outliers are tens to hundreds of times (LLM.int8(),
# SmoothQuant). 20x sits between: a plain model reports none, one with trained-like outliers reports them.
OUTLIER_RATIO = 20.0
DETECTION_WINDOWS = 4        # windows read: outlier channels are a property of the weights, seen on any photo
READER_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class OutlierReader:
    node: str                            # the reader: a MatMul/Gemm the policy quantizes
    block: str | None                    # its block (model/blocks.py), the unit --keep-float names
    channels: tuple[int, ...]            # input channels above OUTLIER_RATIO × the median channel
    ratio: float                         # the largest channel's magnitude over the median channel's

    def to_dict(self) -> dict:
        return {"node": self.node, "block": self.block, "channels": list(self.channels),
                "ratio": round(self.ratio, 1)}

    def describe(self) -> str:
        return OutlierNote(self.node, self.channels, self.ratio, in_float=False).describe()


def find_outlier_readers(fp32: onnx.ModelProto, quantizable, windows: np.ndarray,
                         ratio: float = OUTLIER_RATIO) -> list[OutlierReader]:
    """The readers among `quantizable` whose activation input has outlier channels, most extreme first."""
    allowed = set(quantizable)
    readers = [node for node in fp32.graph.node if node.name in allowed and node.op_type in READER_OPS]
    values = run_exposing(fp32, sorted({node.input[0] for node in readers}), windows[:DETECTION_WINDOWS])
    found = []
    for node in readers:
        magnitude = channel_magnitudes(values[node.input[0]])
        median = float(np.median(magnitude))
        if median <= 0:
            continue
        relative = magnitude / median
        channels = np.flatnonzero(relative > ratio)
        if channels.size:
            found.append(OutlierReader(node.name, block_of(node.name), tuple(int(c) for c in channels),
                                       float(relative.max())))
    return sorted(found, key=lambda reader: -reader.ratio)


def channel_magnitudes(activation: np.ndarray) -> np.ndarray:
    """The largest |value| of each channel (the last axis, which a MatMul contracts) over everything else."""
    return np.abs(activation).reshape(-1, activation.shape[-1]).max(axis=0)


@dataclass(frozen=True)
class SplitGraph:
    """An fp32 graph whose outlier readers compute their outlier channels apart (split_outlier_channels)."""
    model: onnx.ModelProto
    readers: tuple[str, ...]             # the readers split; their names, inputs' order and weights are unchanged
    added: tuple[str, ...]               # the nodes the split added: masks, gathers, outlier products, sums
    channels: tuple[tuple[int, ...], ...]    # each split reader's outlier channels

    def digest(self) -> str:
        """What a calibration of this graph depends on beyond the fp32 weights: which channels go where."""
        lines = [f"{reader}:{','.join(map(str, channels))}" for reader, channels in zip(self.readers, self.channels)]
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def split_outlier_channels(fp32: onnx.ModelProto, readers: list[OutlierReader]) -> SplitGraph:
    """`fp32` computing the same function with each outlier MatMul reader X·W as (X·mask)·W + X[:, c]·W[c, :].

    The reader keeps its name and weight and reads X·mask (outlier channels zeroed), which the quantizers see as
    its activation; the outlier product, named after the reader (so it stays in the reader's block), is not in the
    policy and stays float. Its sum comes after the reader's bias Add, where the quantizers' bias correction does
    not look. Readers of one tensor share one mask and one gather. Gemm readers are left whole.
    """
    onnx_helper = require("onnx", extra="export").helper
    model = copy.deepcopy(fp32)
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    wanted = {reader.node: reader for reader in readers}
    consumers = _consumers(graph)
    shared: dict[tuple[str, tuple[int, ...]], tuple[str, str]] = {}
    sums: dict[str, object] = {}           # tensor the sum follows → the Add node
    nodes: list = []
    split: list[OutlierReader] = []
    outputs = {output.name for output in graph.output}
    for node in graph.node:
        reader = wanted.get(node.name)
        # A reader whose (biased) output is a graph output has no consumer to read the sum instead: left whole.
        if reader is not None and node.op_type == "MatMul" and node.input[1] in weights \
                and _bias_output(node, consumers, weights) not in outputs:
            split.append(reader)
            activation, channels = node.input[0], reader.channels
            if (activation, channels) not in shared:
                shared[(activation, channels)] = _mask_and_gather(graph, nodes, node, channels)
            inliers, outliers = shared[(activation, channels)]
            node.input[0] = inliers
            weight = _array(weights[node.input[1]])
            product = f"{node.name}/outlier_product"
            nodes.append(onnx_helper.make_node("MatMul", [outliers, _constant(
                graph, f"{product}/weight", weight[list(channels), :])], [product], name=product))
            after = _bias_output(node, consumers, weights)
            sums[after] = onnx_helper.make_node("Add", [after, product], [f"{node.name}/with_outliers"],
                                                name=f"{node.name}/outlier_sum")
        nodes.append(node)
        for output in node.output:
            if output in sums:
                nodes.append(sums[output])
    _read_sums(nodes, sums)
    before = {node.name for node in graph.node}
    graph.ClearField("node")
    graph.node.extend(nodes)
    return SplitGraph(model, tuple(reader.node for reader in split),
                      tuple(node.name for node in nodes if node.name not in before),
                      tuple(reader.channels for reader in split))


def _mask_and_gather(graph, nodes: list, reader, channels: tuple[int, ...]) -> tuple[str, str]:
    onnx_helper = require("onnx", extra="export").helper
    width = _array(next(init for init in graph.initializer if init.name == reader.input[1])).shape[0]
    mask = np.ones(width, dtype=np.float32)
    mask[list(channels)] = 0.0
    inliers, outliers = f"{reader.name}/inliers", f"{reader.name}/outlier_channels"
    activation = reader.input[0]
    nodes.append(onnx_helper.make_node("Mul", [activation, _constant(graph, f"{inliers}/mask", mask)], [inliers],
                                       name=inliers))
    nodes.append(onnx_helper.make_node("Gather", [activation, _constant(
        graph, f"{outliers}/index", np.array(channels, dtype=np.int64))], [outliers], name=outliers, axis=-1))
    return inliers, outliers


def _bias_output(node, consumers, weights) -> str:
    """The reader's output after its bias Add (a constant added to it alone), else its own output."""
    readers = consumers.get(node.output[0], [])
    if len(readers) == 1 and readers[0].op_type == "Add" and any(name in weights for name in readers[0].input):
        return readers[0].output[0]
    return node.output[0]


def _read_sums(nodes: list, sums: dict) -> None:
    """Every consumer of a summed tensor reads the sum instead (the sum itself reads the tensor)."""
    renamed = {tensor: add.output[0] for tensor, add in sums.items()}
    added = {id(add) for add in sums.values()}
    for node in nodes:
        if id(node) in added:
            continue
        for position, name in enumerate(node.input):
            if name in renamed:
                node.input[position] = renamed[name]


def _consumers(graph) -> dict[str, list]:
    found: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _array(initializer) -> np.ndarray:
    return require("onnx", extra="export").numpy_helper.to_array(initializer)


def _constant(graph, name: str, value: np.ndarray) -> str:
    graph.initializer.append(require("onnx", extra="export").numpy_helper.from_array(np.ascontiguousarray(value),
                                                                                    name))
    return name
