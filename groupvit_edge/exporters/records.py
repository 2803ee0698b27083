"""What export steps hand each other and the manifest is assembled from: typed records, not dict entries."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..artifact import GraphRecord
from ..calibration.dataset import PhotoSet
from ..metrics.drift import CandidateDrift, DriftBudget


@dataclass
class DriftCheck:
    """A candidate measured against a reference on photos, and the budget it was held to (if any)."""
    reference: str
    candidate: str
    photos: PhotoSet
    vocabulary: str
    drift: CandidateDrift
    budget: DriftBudget | None = None
    details: dict = field(default_factory=dict)    # what the candidate ran as, e.g. its inference precision

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
                **self.details}


@dataclass
class PrecisionRecord:
    """What computes in which precision: the manifest's `precision` section (its target is added at assembly)."""
    compute: str                                   # fp32 | fp16 | int8 | int8-dynamic
    kept_float: list[str]
    kept_float_nodes: list[str] = field(default_factory=list)
    quantized_nodes: list[str] | str = field(default_factory=list)
    details: dict = field(default_factory=dict)    # method, QDQ form, route, inference precision, …

    def to_dict(self, target: str) -> dict:
        return {"target": target, "compute": self.compute, "kept_float": self.kept_float,
                "kept_float_nodes": self.kept_float_nodes, "quantized_nodes": self.quantized_nodes, **self.details}


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
class ReducedImageGraph:
    """A reduced-precision image graph a precision step wrote, with its measured drift."""
    graph: GraphRecord
    precision: PrecisionRecord
    check: DriftCheck
    calibration: dict | None = None
    search: BudgetSearch | None = None


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
    calibration: dict | None = None
    search: BudgetSearch | None = None
    engines: dict[str, GraphRecord] = field(default_factory=dict)
    sections: dict[str, dict] = field(default_factory=dict)     # backend sections, e.g. "tensorrt"
    figures: dict[str, float] = field(default_factory=dict)     # other validation figures, e.g. text IR diff
