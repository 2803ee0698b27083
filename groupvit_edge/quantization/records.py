"""What the quantization steps hand each other and the export records: typed records, not dict entries."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..artifact import GraphRecord
from ..metrics.drift import CandidateDrift, DriftBudget
from .calibration_set import CalibrationSet, PhotoSet


@dataclass
class DriftCheck:
    """A candidate measured against a reference on photos, and the budget it was held to (if any)."""
    reference: str
    candidate: str
    photos: PhotoSet
    vocabulary: str
    drift: CandidateDrift
    budget: DriftBudget | None = None
    inference_precision: str | None = None         # what OpenVINO computed the candidate in, where it chooses

    @property
    def failures(self) -> list[str]:
        return self.budget.failures(self.drift) if self.budget is not None else []

    def line(self) -> str:
        model, cls = self.drift.model_level, self.drift.class_level
        confident = "—" if model.group_agreement_confident is None else f"{model.group_agreement_confident:.3f}%"
        return (f"{self.candidate} vs {self.reference} on {len(self.photos.paths)} photos ({self.photos.source}): "
                f"confident group agreement {confident}, group cosine mean {model.group_embed_cosine.mean:.5f} / min "
                f"{model.group_embed_cosine.min:.5f}, max abs diff {max(model.max_abs_diff.values()):.1e}, "
                f"{self.vocabulary} mIoU {cls.miou_vs_reference:.2f}")

    def to_dict(self) -> dict:
        drift = self.drift.to_dict()
        class_level = {key: drift["class_level"][key] for key in
                       ("miou_vs_reference", "pixel_agreement", "miou_vs_reference_confident")}
        return {"reference": self.reference, "candidate": self.candidate, "images": self.photos.names(),
                "photos": self.photos.source, "vocabulary": self.vocabulary, "class_level": class_level,
                "model_level": drift["model_level"],
                "budget": self.budget.describe() if self.budget is not None else None, "failures": self.failures,
                **({"inference_precision": self.inference_precision} if self.inference_precision else {})}


@dataclass
class CalibrationRecord:
    """How INT8 scales were calibrated: the manifest's `calibration` section."""
    photos: CalibrationSet
    method: dict                                   # the quantizer and its settings
    reused_cache: bool
    seconds: float | None = None
    cache: str | None = None                       # TensorRT: the calibration cache's directory

    def to_dict(self) -> dict:
        return {**self.photos.summary(), **self.method, "reused_cache": self.reused_cache,
                **({"seconds": round(self.seconds, 1)} if self.seconds is not None else {}),
                **({"cache": self.cache} if self.cache is not None else {})}


@dataclass
class SearchStep:
    """One candidate of the drift-budget search: which of the ranked blocks went back to float, and its drift."""
    float_blocks: list[str]
    check: DriftCheck

    @property
    def fits(self) -> bool:
        return not self.check.failures

    def to_dict(self) -> dict:
        model = self.check.drift.model_level
        return {"float_blocks": self.float_blocks, "fits": self.fits, "failures": self.check.failures,
                "group_agreement_confident": model.group_agreement_confident,
                "group_embed_cosine": dataclasses.asdict(model.group_embed_cosine),
                "miou_vs_reference": self.check.drift.class_level.miou_vs_reference}


@dataclass
class BudgetSearch:
    budget: DriftBudget
    ranking: list[tuple[str, float]]               # blocks, most harmful first, with their measured harm
    steps: list[SearchStep]
    chosen: SearchStep | None
    image_graph_ms: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        lines = ["| blocks in float | confident group agree % | group cos mean / min | mIoU vs fp32 | fits |",
                 "|---|---|---|---|---|"]
        for step in self.steps:
            model = step.check.drift.model_level
            confident = "—" if model.group_agreement_confident is None else f"{model.group_agreement_confident:.3f}"
            lines.append(f"| {len(step.float_blocks)} | {confident} | {model.group_embed_cosine.mean:.5f} / "
                         f"{model.group_embed_cosine.min:.5f} | {step.check.drift.class_level.miou_vs_reference:.2f} | "
                         f"{'yes' if step.fits else 'no'} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"budget": self.budget.describe(), "fits": self.chosen is not None,
                "kept_float_blocks": self.chosen.float_blocks if self.chosen else None,
                "ranking": [{"block": block, "harm": harm} for block, harm in self.ranking],
                "steps": [step.to_dict() for step in self.steps], "image_graph_ms": self.image_graph_ms}


@dataclass
class PrecisionRecord:
    """What computes in which precision: the manifest's `precision` section (its target is added at assembly).
    The fields after `quantized_nodes` describe how a reduced graph was made or runs; unset ones are left out."""
    compute: str                                   # fp32 | fp16 | bf16 | int8 | int8-dynamic
    kept_float: list[str]
    kept_float_nodes: list[str] = field(default_factory=list)
    quantized_nodes: list[str] | str = field(default_factory=list)
    method: dict | None = None                     # the quantizer and its settings, as its calibration recorded them
    weight_bits: int | None = None
    qdq: dict | None = None                        # form.qdq_form of the QDQ graph
    attention_products: str | None = None          # int8 | float
    keep_float: list[str] = field(default_factory=list)     # blocks the user asked to keep in float
    route: str | None = None                       # openvino-int8: qdq | nncf-ir
    inference_precision: str | None = None         # what OpenVINO computes the rest in: f32 | f16 | bf16
    weights: str | None = None                     # the IR's weight precision
    float_part: str | None = None                  # trt-int8: the QDQ graph's float part
    float32_kept: list[str] = field(default_factory=list)   # ops kept in float32 inside an FP16 float part
    backends: list[str] = field(default_factory=list)       # the only backends that run this graph fast
    engines: dict[str, str] | None = None          # TensorRT: each engine's typing, by role

    def to_dict(self, target: str) -> dict:
        always = ("compute", "kept_float", "kept_float_nodes", "quantized_nodes")
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        return {"target": target, **{name: value for name, value in values.items()
                                     if name in always or value not in (None, [])}}


@dataclass
class ReducedImageGraph:
    """A reduced-precision image graph a precision step wrote, with its measured drift."""
    graph: GraphRecord
    precision: PrecisionRecord
    check: DriftCheck
    calibration: CalibrationRecord | None = None
    search: BudgetSearch | None = None

