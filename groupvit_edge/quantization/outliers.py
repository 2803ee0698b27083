"""Activation outliers: the few input channels of an INT8 reader that are far larger than the rest.

Trained ViTs carry LayerNorm output channels tens to hundreds of times larger than the others. A per-tensor INT8
activation scale set by such a channel leaves the others a handful of levels; SmoothQuant migrates part of the
range into the weights, and what it cannot absorb is kept in float. The detection reads the fp32 graph's
activations on calibration windows: per reader (a quantized MatMul/Gemm), each input channel's largest magnitude
against the median channel's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..artifact_records import OutlierNote
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
