"""How far a figure measured on a few photos can be trusted: a seeded bootstrap over photos, in one place.

A drift figure is measured on a sample of photos and stands for the photos the artifact will see. Photos, not
pixels, are the sample: the pixels of one photo move together (one bad photo flips thousands of them), so the
interval resamples whole photos. Each figure is a statistic of per-photo sums (pixel counts, cosine sums,
per-class intersections and unions), so a resample is a vector of how often each photo was drawn and the
figure is recomputed from the weighted sums:

- a pooled ratio over pixels (group agreement, its confident-pixel form, the mean group cosine over every group
  of every window) is recomputed as the ratio of the resampled sums, not averaged over photos, so a resample
  weighs photos by their pixels exactly as the figure itself does;
- an mIoU is recomputed from the resampled per-class intersections and unions (a class in neither side of the
  resample has no IoU and is left out, as `confusion.ConfusionMatrix` does);
- a difference of two mIoUs (the ground-truth drop) is recomputed from both sides of the same resample.

The interval is the 2.5th and 97.5th percentile of RESAMPLES such figures (percentile bootstrap, seeded, so the
same photos give the same bounds). It understates the spread for very few photos; fewer than MIN_PHOTOS give no
interval at all. A minimum over photos (the worst group cosine, the largest output difference) is its own worst
case and has no interval: it is gated on the worst photo measured.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
MIN_PHOTOS = 2          # one photo has no spread to resample
# The fewest photos whose interval was measured to be informative for INT8 drift: below it, random subsets of
# the same photos gave intervals from zero width to 80 times the median, and verdicts that contradicted the
# verdict on all of them (docs/verification.md, benchmarks/drift_interval_width.py).
ENOUGH_PHOTOS = 32

Statistic = Callable[[np.ndarray], np.ndarray]     # [R, N] photo weights → [R] figures


@dataclass(frozen=True)
class Estimate:
    """A figure over photos with its 95% interval (None below MIN_PHOTOS photos) and its worst photo's own value."""
    value: float
    low: float | None
    high: float | None
    worst: float
    worst_photo: str
    photos: int

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "worst": self.worst,
                "worst_photo": self.worst_photo, "photos": self.photos}

    @classmethod
    def from_dict(cls, data: dict) -> Estimate:
        return cls(value=float(data["value"]), low=_optional(data["low"]), high=_optional(data["high"]),
                   worst=float(data["worst"]), worst_photo=str(data["worst_photo"]), photos=int(data["photos"]))


def _optional(value) -> float | None:
    return None if value is None else float(value)


def resample_weights(photos: int, *, seed: int = SEED, resamples: int = RESAMPLES) -> np.ndarray:
    """[resamples, photos]: how often each photo is drawn in each bootstrap resample (photos drawn with
    replacement, as many as there are)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(photos, np.full(photos, 1.0 / photos), size=resamples).astype(np.float64)


def estimate(statistic: Statistic, per_photo: Sequence[float | None], names: Sequence[str], *,
             worse: str = "lower", seed: int = SEED, resamples: int = RESAMPLES) -> Estimate | None:
    """The figure `statistic` computes from photo weights (all ones: the figure itself), its percentile
    interval over `resamples` seeded resamples, and the worst of `per_photo` (each photo's own figure; None where
    a photo has nothing to measure). `worse` says which direction is worse: "lower" for an "at least" figure,
    "higher" for an "at most" one. None when the figure itself is unmeasured (e.g. no confident pixel at all)."""
    if worse not in ("lower", "higher"):
        raise ValueError(f"worse is 'lower' or 'higher', not {worse!r}")
    count = len(names)
    if count == 0 or len(per_photo) != count:
        raise ValueError(f"{len(per_photo)} per-photo values for {count} photos")
    value = float(statistic(np.ones((1, count)))[0])
    if math.isnan(value):
        return None
    low = high = None
    if count >= MIN_PHOTOS:
        with np.errstate(invalid="ignore", divide="ignore"):
            figures = statistic(resample_weights(count, seed=seed, resamples=resamples))
        figures = figures[~np.isnan(figures)]       # a resample of photos with nothing to measure
        tail = 100.0 * (1.0 - CONFIDENCE) / 2.0
        low, high = (float(bound) for bound in np.percentile(figures, [tail, 100.0 - tail]))
    measured = [(float(v), name) for v, name in zip(per_photo, names) if v is not None and not math.isnan(v)]
    worst, worst_photo = (min if worse == "lower" else max)(measured) if measured else (value, names[0])
    return Estimate(value, low, high, worst, worst_photo, count)


def pooled_ratio(numerators, denominators, scale: float = 1.0) -> Statistic:
    """scale × Σ w·numerator / Σ w·denominator: a figure pooled over the pixels (or groups) of every photo."""
    numerators, denominators = np.asarray(numerators, np.float64), np.asarray(denominators, np.float64)

    def statistic(weights: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return scale * (weights @ numerators) / (weights @ denominators)
    return statistic


def pooled_miou(intersections, unions) -> Statistic:
    """100 × the mean over classes of Σ w·intersection / Σ w·union ([N, K] per-photo counts); a class with no
    union in a resample is left out of its mean."""
    intersections, unions = np.asarray(intersections, np.float64), np.asarray(unions, np.float64)

    def statistic(weights: np.ndarray) -> np.ndarray:
        inter, union = weights @ intersections, weights @ unions
        present = union > 0
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=present)
        classes = present.sum(axis=1)
        return np.where(classes > 0, 100.0 * iou.sum(axis=1) / np.maximum(classes, 1), np.nan)
    return statistic


def difference(first: Statistic, second: Statistic) -> Statistic:
    """first − second on the same resample: a paired figure such as the ground-truth mIoU drop."""
    return lambda weights: first(weights) - second(weights)


def photos_needed(figure: Estimate, limit: float, worse: str = "lower") -> int | None:
    """About how many photos in all would bring the bound to `limit` when the figure itself is within it and only
    its interval is not: the half-width shrinks as 1/√photos if further photos spread like these. None when the
    figure itself is outside the limit (more photos will not help) or has no interval."""
    if figure.low is None or figure.high is None:
        return None
    margin = figure.value - limit if worse == "lower" else limit - figure.value
    half = figure.value - figure.low if worse == "lower" else figure.high - figure.value
    if margin <= 0 or half <= margin:
        return None
    return math.ceil(figure.photos * (half / margin) ** 2)


def format_estimate(figure: Estimate | None, digits: int = 2, unit: str = "", *, compact: bool = False,
                    named: bool = False) -> str:
    """"99.03% (95%: 98.60–99.40, worst photo 93.10%, 50 photos)"; `named` adds the worst photo's file name;
    compact, for table cells: "99.03 (95%: 98.60–99.40)"; an unmeasured figure as a dash."""
    if figure is None:
        return "—"
    value = f"{figure.value:.{digits}f}{unit}"
    interval = (f"95%: {figure.low:.{digits}f}–{figure.high:.{digits}f}" if figure.has_interval
                else "no interval")
    photos = "1 photo" if figure.photos == 1 else f"{figure.photos} photos"
    if compact:
        return f"{value} ({interval})" if figure.has_interval else f"{value} ({photos}, no interval)"
    where = f" in {Path(figure.worst_photo).name}" if named else ""
    return f"{value} ({interval}, worst photo {figure.worst:.{digits}f}{unit}{where}, {photos})"
