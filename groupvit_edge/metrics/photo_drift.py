"""Drift photo by photo: each photo's counts behind the gated figures, and those figures with their uncertainty
over photos (`uncertainty`), as `DriftUncertainty` — what a budget is judged on and drift.json keeps."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .uncertainty import CONFIDENCE, RESAMPLES, SEED, Estimate, difference, estimate, pooled_miou, pooled_ratio


def class_counts(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union of one photo's confusion matrix: both add up over photos, so the
    pooled mIoU of any set of photos is computed from them."""
    intersection = np.diag(matrix).astype(np.int64)
    return intersection, matrix.sum(axis=0) + matrix.sum(axis=1) - intersection


@dataclass(frozen=True)
class PhotoCounts:
    """What one photo adds to each pooled figure. In memory only: drift.json keeps the per-photo figures."""
    image: str
    pixels: int                       # valid pixels of its windows
    agree: int                        # final group equals the reference's
    confident: int                    # reference group decision not a near-tie
    confident_agree: int
    cosine_sum: float                 # group-embedding cosines of its windows' groups
    cosines: int
    cosine_min: float
    class_intersection: np.ndarray    # [K] candidate class map vs the reference's
    class_union: np.ndarray
    truth: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None   # vs the masks: reference
    # intersection, union; candidate intersection, union

    def figures(self) -> PhotoFigures:
        one = np.ones((1, 1))
        drop = None
        if self.truth is not None:
            drop = _figure(difference(pooled_miou([self.truth[0]], [self.truth[1]]),
                                      pooled_miou([self.truth[2]], [self.truth[3]]))(one)[0])
        return PhotoFigures(
            image=self.image, miou_vs_reference=_figure(pooled_miou([self.class_intersection],
                                                                    [self.class_union])(one)[0]),
            group_agreement=_percent(self.agree, self.pixels),
            group_agreement_confident=_percent(self.confident_agree, self.confident),
            group_embed_cosine=self.cosine_sum / self.cosines, group_embed_cosine_min=self.cosine_min,
            ground_truth_drop=drop)


def _percent(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def _figure(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True)
class PhotoFigures:
    """One photo's own gated figures (None where it has nothing to measure, e.g. no confident pixel)."""
    image: str
    miou_vs_reference: float | None
    group_agreement: float | None
    group_agreement_confident: float | None
    group_embed_cosine: float
    group_embed_cosine_min: float
    ground_truth_drop: float | None = None


@dataclass(frozen=True)
class DriftUncertainty:
    """Each gated drift figure over the photos: its 95% interval (seeded bootstrap over photos, RESAMPLES
    resamples) and its worst photo, with every photo's own figures. A budget passes only when the bound does."""
    miou_vs_reference: Estimate | None
    group_agreement: Estimate | None
    group_agreement_confident: Estimate | None
    group_embed_cosine: Estimate | None            # the mean over every group of every window
    ground_truth_drop: Estimate | None             # reference mIoU minus the candidate's, against the masks
    photos: list[PhotoFigures]
    seed: int = SEED
    resamples: int = RESAMPLES
    # The counts the estimates came from, on a report just measured (not in drift.json): a subset of the photos
    # can be estimated again from them (benchmarks/drift_interval_width.py).
    counts: tuple[PhotoCounts, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def of(cls, counts: Sequence[PhotoCounts], seed: int = SEED, resamples: int = RESAMPLES) -> DriftUncertainty:
        names = [photo.image for photo in counts]
        figures = [photo.figures() for photo in counts]

        def column(name: str) -> np.ndarray:
            return np.array([getattr(photo, name) for photo in counts])

        def over_photos(statistic, name: str, worse: str = "lower") -> Estimate | None:
            return estimate(statistic, [getattr(figure, name) for figure in figures], names, worse=worse,
                            seed=seed, resamples=resamples)

        truth = None
        if all(photo.truth is not None for photo in counts):
            sides = [np.stack([photo.truth[side] for photo in counts if photo.truth is not None])
                     for side in range(4)]
            truth = over_photos(difference(pooled_miou(sides[0], sides[1]), pooled_miou(sides[2], sides[3])),
                                "ground_truth_drop", worse="higher")
        return cls(
            miou_vs_reference=over_photos(pooled_miou(np.stack([photo.class_intersection for photo in counts]),
                                                      np.stack([photo.class_union for photo in counts])),
                                          "miou_vs_reference"),
            group_agreement=over_photos(pooled_ratio(column("agree"), column("pixels"), 100.0), "group_agreement"),
            group_agreement_confident=over_photos(pooled_ratio(column("confident_agree"), column("confident"),
                                                               100.0), "group_agreement_confident"),
            group_embed_cosine=over_photos(pooled_ratio(column("cosine_sum"), column("cosines")),
                                           "group_embed_cosine"),
            ground_truth_drop=truth, photos=figures, seed=seed, resamples=resamples, counts=tuple(counts))

    def worst_cosine_photo(self) -> PhotoFigures | None:
        """The photo holding the minimum group cosine: that minimum is its own worst case (no interval)."""
        return min(self.photos, key=lambda photo: photo.group_embed_cosine_min, default=None)

    def to_dict(self) -> dict:
        estimates = {name: (getattr(self, name).to_dict() if getattr(self, name) is not None else None)
                     for name in ESTIMATED}
        return {**estimates, "photos": [dataclasses.asdict(photo) for photo in self.photos],
                "interval": f"{round(100 * CONFIDENCE)}% percentile bootstrap over photos", "seed": self.seed,
                "resamples": self.resamples}

    @classmethod
    def from_dict(cls, data: dict) -> DriftUncertainty:
        def read(name: str) -> Estimate | None:
            return Estimate.from_dict(data[name]) if data.get(name) is not None else None
        return cls(miou_vs_reference=read("miou_vs_reference"), group_agreement=read("group_agreement"),
                   group_agreement_confident=read("group_agreement_confident"),
                   group_embed_cosine=read("group_embed_cosine"), ground_truth_drop=read("ground_truth_drop"),
                   photos=[PhotoFigures(**photo) for photo in data["photos"]], seed=int(data["seed"]),
                   resamples=int(data["resamples"]))


# The figures `DriftUncertainty` estimates, in drift.json's order.
ESTIMATED = ("miou_vs_reference", "group_agreement", "group_agreement_confident", "group_embed_cosine",
             "ground_truth_drop")
