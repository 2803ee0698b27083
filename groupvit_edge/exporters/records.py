"""What export steps hand each other and the manifest is assembled from: typed records, not dict entries."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..artifact import GraphRecord
from ..quantization.records import BudgetSearch, CalibrationRecord, DriftCheck, OutlierRemedy, PrecisionRecord


@dataclass
class FloatGraphs:
    """The base of every target: fp32 image and text graphs, validated against PyTorch."""
    image: GraphRecord
    text: GraphRecord
    check: DriftCheck
    text_max_abs_diff: float


@dataclass
class ArtifactParts:
    """Everything a target adds to the base; `run._assemble_manifest` turns it into the manifest, once."""
    graphs: dict[str, GraphRecord]                 # by role: image, text, image_ir, text_ir
    precision: PrecisionRecord
    checks: dict[str, DriftCheck] = field(default_factory=dict)
    calibration: CalibrationRecord | None = None
    search: BudgetSearch | None = None
    outliers: OutlierRemedy | None = None          # what the INT8 path did about activation outliers
    engines: dict[str, GraphRecord] = field(default_factory=dict)
    sections: dict[str, dict] = field(default_factory=dict)     # backend sections, e.g. "tensorrt"
    figures: dict[str, float] = field(default_factory=dict)     # other validation figures, e.g. text IR diff
