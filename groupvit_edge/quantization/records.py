"""What the quantization steps hand each other and the export records: typed records, not dict entries."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..artifact import GraphRecord
from ..metrics.budget import EVERY_PHOTO, BudgetFailure
from ..metrics.drift import MODEL_LEVEL_BUDGET, CandidateDrift, DriftBudget
from ..metrics.drift_report import format_figure
from ..metrics.uncertainty import ENOUGH_PHOTOS, format_estimate
from .calibration_set import VALIDATION_IMAGES, CalibrationSet, PhotoSet


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

    def verdict(self) -> Verdict:
        """The check against its budget, or — without one — against the default budget, on the 95% bounds."""
        given = self.budget is not None
        budget = self.budget if self.budget is not None else MODEL_LEVEL_BUDGET
        return Verdict.of(budget, budget.judge(self.drift), given, len(self.photos.paths),
                          self.photos.source == VALIDATION_IMAGES)

    def line(self) -> str:
        model, cls, uncertainty = self.drift.model_level, self.drift.class_level, self.drift.uncertainty
        confident = format_figure(model.group_agreement_confident, 3, "%")
        cosine = f"{model.group_embed_cosine.mean:.5f}"
        if uncertainty is not None:
            confident = format_estimate(uncertainty.group_agreement_confident, 3, "%", named=True)
            cosine = format_estimate(uncertainty.group_embed_cosine, 5, named=True)
        return (f"{self.candidate} vs {self.reference} on {len(self.photos.paths)} photos ({self.photos.source}): "
                f"confident group agreement {confident}, group cosine mean {cosine} / min "
                f"{model.group_embed_cosine.min:.5f}, max abs diff {max(model.max_abs_diff.values()):.1e}, "
                f"{self.vocabulary} mIoU {cls.miou_vs_reference:.2f}")

    def to_dict(self) -> dict:
        drift = self.drift.to_dict()
        class_level = {key: drift["class_level"][key] for key in
                       ("miou_vs_reference", "pixel_agreement", "miou_vs_reference_confident")}
        return {"reference": self.reference, "candidate": self.candidate, "images": self.photos.names(),
                "photos": self.photos.source, "vocabulary": self.vocabulary, "class_level": class_level,
                "model_level": drift["model_level"], "uncertainty": drift["uncertainty"],
                "budget": self.budget.describe() if self.budget is not None else None, "failures": self.failures,
                "verdict": self.verdict().to_dict(),
                **({"inference_precision": self.inference_precision} if self.inference_precision else {})}


@dataclass(frozen=True)
class Verdict:
    """What a drift check proves against a budget: "within" (every bound passes), "not proven" (the figures pass
    but a bound does not: too few photos, or too spread), or "outside" (a figure itself fails)."""
    state: str
    budget: str
    given: bool                          # the user's budget; else the default one, for information
    photos: int
    photos_needed: int | None            # not proven: about how many photos in all would prove it
    own_photos: bool                     # measured on --validation-images
    failures: tuple[str, ...] = ()

    @classmethod
    def of(cls, budget: DriftBudget, failures: list[BudgetFailure], given: bool, photos: int,
           own_photos: bool) -> Verdict:
        state = "within" if not failures else "outside" if any(f.proven for f in failures) else "not proven"
        needed = [f.photos_needed for f in failures if f.photos_needed is not None]
        if state != "outside" and photos < ENOUGH_PHOTOS and not budget.every_photo:
            # Intervals over fewer photos were measured to be unstable: a passing bound proves little.
            state, needed = "not proven", [*needed, ENOUGH_PHOTOS]
        return cls(state, budget.describe(), given, photos, max(needed) if state == "not proven" and needed else
                   None, own_photos, tuple(f.sentence for f in failures))

    def line(self) -> str:
        which = "the budget" if self.given else "the default budget"
        judged = "" if self.budget.endswith(EVERY_PHOTO) else " on the 95% bounds"
        text = {"within": f"within {which} ({self.budget}){judged} over {self.photos} photos",
                "outside": f"outside {which} ({self.budget}): {'; '.join(self.failures)}",
                "not proven": f"not proven against {which} ({self.budget}) on {self.photos} photos: "
                              + ("; ".join(self.failures) if self.failures else
                                 f"an interval over fewer than {ENOUGH_PHOTOS} photos proves little")}[self.state]
        if self.state == "not proven":
            text += (f"; add about {self.photos_needed - self.photos} photos" if self.photos_needed else
                     "; add photos")
        if not self.own_photos:
            text += ("; measure on your own photos from the deployment domain (--validation-images DIR, dozens "
                     "or more), which is what the figure should stand for")
        return text

    def to_dict(self) -> dict:
        return {"state": self.state, "budget": self.budget, "given": self.given, "photos": self.photos,
                "photos_needed": self.photos_needed}


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
            model, uncertainty = step.check.drift.model_level, step.check.drift.uncertainty
            confident = (format_estimate(uncertainty.group_agreement_confident, 3, compact=True) if uncertainty
                         else format_figure(model.group_agreement_confident, 3))
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
    outlier_readers: list[dict] = field(default_factory=list)   # quantization.outliers.OutlierReader records
    float_readers: list[str] = field(default_factory=list)      # outlier readers kept in float to hold the budget
    split_readers: list[str] = field(default_factory=list)      # outlier readers with their outlier channels float

    def to_dict(self, target: str) -> dict:
        always = ("compute", "kept_float", "kept_float_nodes", "quantized_nodes")
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        return {"target": target, **{name: value for name, value in values.items()
                                     if name in always or value not in (None, [])}}


@dataclass
class OutlierStep:
    """One remedy tried against activation outliers, and its drift."""
    remedy: str
    check: DriftCheck
    fits: bool                                      # within the user's budget, else not outside the default one

    def to_dict(self) -> dict:
        model = self.check.drift.model_level
        return {"remedy": self.remedy, "fits": self.fits, "group_agreement_confident":
                model.group_agreement_confident, "group_embed_cosine": dataclasses.asdict(model.group_embed_cosine)}


@dataclass
class Int8Candidate:
    """One calibrated INT8 image graph the outlier remedy weighs, with what made it."""
    method: Any                                     # statistics.MethodOptions
    graph: Any                                      # onnx.ModelProto of the quantized graph
    check: DriftCheck
    source: Any                                     # onnx.ModelProto of the fp32 graph it quantizes (split or not)
    reused_cache: bool
    calibration_seconds: float
    split_readers: tuple[str, ...] = ()             # readers whose outlier channels compute apart in float

    def remedy(self) -> str:
        kept = f"SmoothQuant α={self.method.smooth_quant_alpha}" if self.method.method == "nncf" else self.method.method
        split = f", outlier channels of {len(self.split_readers)} reader(s) in float" if self.split_readers else ""
        return kept + split


@dataclass
class OutlierRemedy:
    """What the export did about activation outliers that broke the budget: every step measured, the one kept."""
    steps: list[OutlierStep]
    kept: Int8Candidate
    float_readers: list[str]

    @property
    def check(self) -> DriftCheck:
        return self.kept.check

    def summary(self) -> str:
        readers = f", {len(self.float_readers)} outlier reader(s) in float" if self.float_readers else ""
        tried = ", ".join(f"{step.remedy} {'fits' if step.fits else 'exceeds'}" for step in self.steps)
        return f"kept {self.kept.remedy()}{readers} (tried: {tried})"

    def to_dict(self) -> dict:
        return {"steps": [step.to_dict() for step in self.steps], "method": self.kept.method.to_dict(),
                "split_readers": list(self.kept.split_readers), "float_readers": self.float_readers}


@dataclass
class ReducedImageGraph:
    """A reduced-precision image graph a precision step wrote, with its measured drift."""
    graph: GraphRecord
    precision: PrecisionRecord
    check: DriftCheck
    calibration: CalibrationRecord | None = None
    search: BudgetSearch | None = None
    outliers: OutlierRemedy | None = None

