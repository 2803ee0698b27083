"""The drift report as records: what `measure_drift` returns and what every renderer reads. `DriftReport.to_dict()`
is drift.json and `DriftReport.from_dict` reads it back; `to_markdown()` is drift.md and the terminal table.

The records sit below both the measuring (`drift`) and the rendering (`render`, `html_report`), so each imports
them and neither imports the other.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..runtimes.base import ImageEncoding
from ..segmentation.preprocess import Prepared
from ..segmentation.vocabulary import Vocabulary
from .budget import DriftBudget
from .photo_drift import DriftUncertainty
from .uncertainty import format_estimate

SCHEMA = "groupvit-edge/drift/1"


@dataclass(frozen=True)
class Cosine:
    mean: float
    min: float


@dataclass(frozen=True)
class ModelLevelDrift:
    """Vocabulary-free figures. Agreements are percentages of pixels; None where there was nothing to count."""
    group_agreement: float | None            # final group equals the reference's
    group_agreement_confident: float | None  # the same over pixels whose reference decision is not a near-tie
    near_tie_share: float | None             # pixels whose reference best-vs-second group margin is below margin
    group_embed_cosine: Cosine
    image_embed_cosine: Cosine
    max_abs_diff: dict[str, float]           # per image-graph output


@dataclass(frozen=True)
class WorstImage:
    image: str                               # the photo's path as given
    agreement: float                         # percent of its pixels whose class equals the reference's


@dataclass(frozen=True)
class ClassLevelDrift:
    """The candidate's label maps scored against the reference's as ground truth (percent / mIoU points)."""
    miou_vs_reference: float
    pixel_agreement: float
    miou_vs_reference_confident: float | None
    pixel_agreement_confident: float | None
    near_tie_class_share: float
    per_class_iou: dict[str, float | None]
    worst_images: list[WorstImage]           # worst first


@dataclass(frozen=True)
class GroundTruthDrift:
    reference_miou: float
    candidate_miou: float
    drop: float
    reference_pixel_accuracy: float
    candidate_pixel_accuracy: float


@dataclass(frozen=True)
class ComparedModel:
    """One side of a comparison, the reference or a candidate: an artifact, checkpoint or runtime."""
    source: str
    backend: str                             # the runtime's description: what ran it, at which precision
    target: str
    model_sha256: str


@dataclass(frozen=True)
class CandidateDrift(ComparedModel):
    """How far one candidate is from the reference: what `drift`, export validation, `bench`, `tune` and
    `groupvit_edge.testing` all read."""
    class_level: ClassLevelDrift
    model_level: ModelLevelDrift
    ground_truth: GroundTruthDrift | None
    encode_seconds: float = 0.0
    # The gated figures' intervals over photos; None in a drift.json written before they were measured.
    uncertainty: DriftUncertainty | None = None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(dataclasses.replace(self, uncertainty=None))
        data["timing"] = {"encode_s": data.pop("encode_seconds")}
        data["uncertainty"] = self.uncertainty.to_dict() if self.uncertainty is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> CandidateDrift:
        """The inverse of `to_dict` (its "failures", written with a budget, are the report's to derive)."""
        class_level, model_level, truth = data["class_level"], data["model_level"], data["ground_truth"]
        return cls(source=data["source"], backend=data["backend"], target=data["target"],
                   model_sha256=data["model_sha256"],
                   class_level=ClassLevelDrift(**{**class_level, "worst_images": [
                       WorstImage(**worst) for worst in class_level["worst_images"]]}),
                   model_level=ModelLevelDrift(**{**model_level,
                                                  "group_embed_cosine": Cosine(**model_level["group_embed_cosine"]),
                                                  "image_embed_cosine": Cosine(**model_level["image_embed_cosine"])}),
                   ground_truth=GroundTruthDrift(**truth) if truth is not None else None,
                   encode_seconds=data["timing"]["encode_s"],
                   uncertainty=DriftUncertainty.from_dict(data["uncertainty"]) if data.get("uncertainty") else None)


@dataclass
class MeasuredPhoto:
    """One photo as `measure_drift` measured it: its geometry and each runtime's encoding of its windows (pixels
    are not kept)."""
    path: Path
    prepared: Prepared
    encodings: list[ImageEncoding]      # [reference, candidate 1, ...]
    ground_truth: np.ndarray | None = None
    reference_cache: tuple | None = None   # (reference WindowDecisions, reference label map)


@dataclass(frozen=True)
class PhotoEvidence:
    """What report.html's worst-photo panels are drawn from: the worst photos' encodings and what turns them into
    class maps, one entry per runtime (reference first). Kept in memory on a measured report, never in drift.json."""
    photos: list[MeasuredPhoto]
    vocabularies: list[Vocabulary]
    logit_scales: list[float]
    background: float | None
    class_names: list[str]


@dataclass(frozen=True)
class DriftImages:
    count: int
    source: list[str]                   # the directories or files given, or the shipped samples' description
    windows: int
    size: list[int]                     # [height, width] of a window
    resize: str


@dataclass(frozen=True)
class DriftVocabulary:
    kind: str                           # "prototypes", "labels" (names given) or "artifact" (the artifacts' own)
    labels: list[str]
    seed: int | None = None             # prototypes: the k-means seed
    templates: list[str] | None = None  # class names: the prompt templates

    def to_dict(self) -> dict:
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None}


@dataclass(frozen=True)
class DriftSettings:
    confident_margin: float
    background_threshold: float | None  # None for prototypes, which have no background


@dataclass(frozen=True)
class GroundTruthMasks:
    masks: str                          # the masks directory
    classes: str                        # the class map's name


@dataclass(frozen=True)
class DriftTiming:
    reference_encode_s: float
    vocabulary_s: float
    postprocess_and_metrics_s: float
    total_s: float


@dataclass(frozen=True)
class DriftReport:
    """One drift run: what was compared on which photos, and how far each candidate is. `to_dict()` is
    drift.json (schema SCHEMA)."""
    reference: ComparedModel
    images: DriftImages
    vocabulary: DriftVocabulary
    settings: DriftSettings
    ground_truth: GroundTruthMasks | None
    candidates: list[CandidateDrift]
    timing: DriftTiming
    budget: DriftBudget | None = None   # with one, drift.json and report.html carry each candidate's verdict
    # The photos behind the worst-photo panels: set by measure_drift, None for a report read from drift.json.
    evidence: PhotoEvidence | None = field(default=None, compare=False, repr=False)

    def failures(self, budget: DriftBudget | float) -> list[str]:
        """One sentence per limit a candidate exceeds; a number is a `max_drop` in mIoU points."""
        budget = budget if isinstance(budget, DriftBudget) else DriftBudget(max_drop=budget)
        return [failure for candidate in self.candidates for failure in budget.failures(candidate)]

    def verdict(self, candidate: CandidateDrift) -> list[str] | None:
        """`candidate`'s failures under the run's budget; None when the run had no budget. Derived rather than
        stored, so a copy of the report with another budget (dataclasses.replace) is judged by that one."""
        return None if self.budget is None else self.budget.failures(candidate)

    def to_dict(self) -> dict:
        candidates = [candidate.to_dict() for candidate in self.candidates]
        if self.budget is not None:
            for entry, candidate in zip(candidates, self.candidates):
                entry["failures"] = self.verdict(candidate)
        data = {"schema": SCHEMA, "reference": dataclasses.asdict(self.reference),
                "images": dataclasses.asdict(self.images), "vocabulary": self.vocabulary.to_dict(),
                "settings": dataclasses.asdict(self.settings),
                "ground_truth": dataclasses.asdict(self.ground_truth) if self.ground_truth else None,
                "candidates": candidates, "timing": dataclasses.asdict(self.timing)}
        if self.budget is not None:
            data["budget"] = self.budget.describe()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DriftReport:
        """The inverse of `to_dict`: a saved drift.json as the report it was written from (without `evidence`).
        A ValueError, KeyError or TypeError when `data` is not a drift report of schema SCHEMA."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise ValueError(f"its schema is {schema!r}, not {SCHEMA!r}")
        truth = data["ground_truth"]
        return cls(reference=ComparedModel(**data["reference"]), images=DriftImages(**data["images"]),
                   vocabulary=DriftVocabulary(**data["vocabulary"]), settings=DriftSettings(**data["settings"]),
                   ground_truth=GroundTruthMasks(**truth) if truth is not None else None,
                   candidates=[CandidateDrift.from_dict({name: value for name, value in entry.items()
                                                         if name != "failures"}) for entry in data["candidates"]],
                   timing=DriftTiming(**data["timing"]),
                   budget=DriftBudget.from_description(data["budget"]) if "budget" in data else None)

    def to_markdown(self) -> str:
        return drift_markdown(self)


def read_drift_report(path: str | Path) -> DriftReport:
    """The report a saved drift.json holds; a UserError naming the file when it is missing, not JSON or not a
    drift report."""
    path = Path(path)
    fix = "pass the drift.json that `groupvit-edge drift --report DIR` wrote (DIR/drift.json)"
    if not path.is_file():
        where = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"{path} {where}: {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not JSON ({error}): {fix}") from None
    try:
        return DriftReport.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        reason = f"no {error}" if isinstance(error, KeyError) else str(error)
        raise UserError(f"{path} is not a groupvit-edge drift report ({reason}): {fix}") from None


def format_figure(value, digits: int = 2, suffix: str = "") -> str:
    """A figure as drift.md and report.html show it; an unmeasured one (None) as a dash."""
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def drift_markdown(report: DriftReport) -> str:
    """The terminal table: one row per candidate, class level then model level, under the run's description."""
    images, vocabulary = report.images, report.vocabulary
    lines = [f"Drift vs {report.reference.source} ({report.reference.backend}) on {images.count} "
             f"images ({images.windows} windows, {images.size[0]}x{images.size[1]}), "
             f"vocabulary: {vocabulary.kind} ({len(vocabulary.labels)} classes)", "",
             "| candidate | target | mIoU vs ref (all / confident) | pixel agree % | group agree % (all / confident) "
             "| near-tie % "
             "| group cos mean / min | image cos mean / min | max abs diff grouping | GT mIoU ref → cand |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report.candidates:
        cls, model, truth = c.class_level, c.model_level, c.ground_truth
        gt = f"{truth.reference_miou:.2f} → {truth.candidate_miou:.2f}" if truth else "—"
        lines.append(
            f"| {c.source} | {c.target} | {format_figure(cls.miou_vs_reference)} / "
            f"{format_figure(cls.miou_vs_reference_confident)} | {format_figure(cls.pixel_agreement)} "
            f"| {format_figure(model.group_agreement)} / {format_figure(model.group_agreement_confident, 3)} "
            f"| {format_figure(model.near_tie_share, 1)} "
            f"| {model.group_embed_cosine.mean:.5f} / {model.group_embed_cosine.min:.5f} "
            f"| {model.image_embed_cosine.mean:.5f} / {model.image_embed_cosine.min:.5f} "
            f"| {model.max_abs_diff['grouping']:.2e} | {gt} |")
    lines += uncertainty_lines(report)
    timing = report.timing
    lines += ["", f"time: {timing.total_s:.1f} s total, reference encoding {timing.reference_encode_s:.1f} s, "
                  f"post-processing + metrics {timing.postprocess_and_metrics_s:.1f} s "
                  f"({100 * timing.postprocess_and_metrics_s / max(timing.total_s, 1e-9):.1f}%)"]
    return "\n".join(lines)


def uncertainty_lines(report: DriftReport) -> list[str]:
    """Each candidate's gated figures with their 95% intervals over photos and worst photos; a report read from a
    drift.json written without them says so."""
    lines = ["", "Gated figures over photos (95% interval: percentile bootstrap over photos; a budget passes only "
                 "when the bound does):"]
    for candidate in report.candidates:
        uncertainty = candidate.uncertainty
        if uncertainty is None:
            lines.append(f"- {candidate.source}: no intervals (this drift.json was written without them)")
            continue
        lines.append(f"- {candidate.source}:")
        lines += [f"  - {what}: {format_estimate(getattr(uncertainty, name), digits, unit, named=True)}"
                  for name, what, digits, unit in ESTIMATE_ROWS if getattr(uncertainty, name) is not None]
    return lines


# How each estimated figure is named and rounded in the terminal table and report.html.
ESTIMATE_ROWS = (("group_agreement_confident", "confident group agreement", 3, "%"),
                 ("group_embed_cosine", "group cosine mean", 5, ""),
                 ("group_agreement", "group agreement", 2, "%"),
                 ("miou_vs_reference", "mIoU vs reference", 2, ""),
                 ("ground_truth_drop", "ground-truth mIoU drop", 2, " points"))
