"""The families of export targets, each one module behind `contract.ExporterFamily` (checked by mypy here)."""
from __future__ import annotations

from . import openvino, precision, tensorrt
from .contract import ExporterFamily

FAMILIES: dict[str, ExporterFamily] = {"precision": precision, "openvino": openvino, "tensorrt": tensorrt}
