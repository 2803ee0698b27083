"""Model-level comparison of a candidate's encodings with the reference's: final-group agreement (overall and on
pixels whose reference decision is not a near-tie), group and image embedding cosines, max abs differences —
pooled over every photo, and each photo's own counts for the figures' uncertainty over photos."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..runtimes.base import ImageEncoding
from ..segmentation.postprocess import resize_bilinear, top_two
from ..segmentation.preprocess import Prepared
from .drift_report import Cosine, ModelLevelDrift
from .photo_drift import PhotoCounts

OUTPUTS = ("group_embeds", "image_embed", "grouping")


@dataclass
class WindowDecision:
    """A window's final group per pixel and, for the reference, which pixels are not near-ties."""
    groups: np.ndarray                 # [H, W] int
    confident: np.ndarray | None       # [H, W] bool


def decide_groups(grouping: np.ndarray, window_size: tuple[int, int], margin: float | None) -> WindowDecision:
    """Upsample one window's soft maps once; argmax, and the relative best-vs-second margin when asked."""
    maps = resize_bilinear(grouping, *window_size)
    if margin is None:
        return WindowDecision(maps.argmax(axis=0), None)
    groups, best, second = top_two(maps)
    return WindowDecision(groups, (best - second) >= margin * np.maximum(best, np.finfo(np.float32).tiny))


@dataclass
class GroupingComparison:
    """Pixel counts over the valid (unpadded) pixels of windows, accumulated."""
    pixels: int = 0
    agree: int = 0
    confident: int = 0
    confident_agree: int = 0

    def add(self, reference: WindowDecision, candidate: WindowDecision, valid: tuple[int, int]) -> float:
        """Compare one window's final groups; returns that window's agreement."""
        rows, columns = valid
        assert reference.confident is not None, "the reference's decisions carry their margins"
        same = reference.groups[:rows, :columns] == candidate.groups[:rows, :columns]
        confident = reference.confident[:rows, :columns]
        self.pixels += same.size
        self.agree += int(same.sum())
        self.confident += int(confident.sum())
        self.confident_agree += int((same & confident).sum())
        return float(same.mean())

    def summary(self) -> dict:
        return {"group_agreement": _percent(self.agree, self.pixels),
                "group_agreement_confident": _percent(self.confident_agree, self.confident),
                "near_tie_share": _percent(self.pixels - self.confident, self.pixels)}


def _percent(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def _cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Row-wise cosine of [..., D] arrays (renormalised: quantized outputs need not be unit length)."""
    ref = reference / np.linalg.norm(reference, axis=-1, keepdims=True)
    cand = candidate / np.linalg.norm(candidate, axis=-1, keepdims=True)
    return (ref * cand).sum(axis=-1).ravel()


@dataclass(frozen=True)
class PhotoModelLevel:
    """One photo's share of the model-level figures."""
    grouping: GroupingComparison
    group_cosines: np.ndarray


@dataclass
class ModelLevel:
    grouping: GroupingComparison = field(default_factory=GroupingComparison)
    group_cosines: list = field(default_factory=list)
    image_cosines: list = field(default_factory=list)
    max_abs_diff: dict = field(default_factory=lambda: {name: 0.0 for name in OUTPUTS})

    def add(self, reference: ImageEncoding, candidate: ImageEncoding, prepared: Prepared,
            reference_groups: list[WindowDecision], candidate_groups: list[WindowDecision]) -> PhotoModelLevel:
        """Add one photo; returns what it added."""
        photo = GroupingComparison()
        for (_, _, box_h, box_w), ref, cand in zip(prepared.boxes, reference_groups, candidate_groups):
            photo.add(ref, cand, (box_h, box_w))
        for name in ("pixels", "agree", "confident", "confident_agree"):
            setattr(self.grouping, name, getattr(self.grouping, name) + getattr(photo, name))
        group_cosines = _cosines(reference.group_embeds, candidate.group_embeds)
        self.group_cosines.append(group_cosines)
        self.image_cosines.append(_cosines(reference.image_embed, candidate.image_embed))
        for name in OUTPUTS:
            difference = np.abs(getattr(reference, name) - getattr(candidate, name)).max()
            self.max_abs_diff[name] = max(self.max_abs_diff[name], float(difference))
        return PhotoModelLevel(photo, group_cosines)

    def summary(self) -> ModelLevelDrift:
        # float64: the mean equals the pooled ratio the figure's interval is computed from
        groups = np.concatenate(self.group_cosines).astype(np.float64)
        images = np.concatenate(self.image_cosines)
        return ModelLevelDrift(**self.grouping.summary(),
                               group_embed_cosine=Cosine(float(groups.mean()), float(groups.min())),
                               image_embed_cosine=Cosine(float(images.mean()), float(images.min())),
                               max_abs_diff=dict(self.max_abs_diff))


def photo_counts(image: str, model_level: PhotoModelLevel, classes: tuple[np.ndarray, np.ndarray],
                 truth: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None) -> PhotoCounts:
    """One photo's counts behind the gated figures, from what it added to the model level and its class counts."""
    grouping, cosines = model_level.grouping, model_level.group_cosines.astype(np.float64)
    return PhotoCounts(image, grouping.pixels, grouping.agree, grouping.confident, grouping.confident_agree,
                       float(cosines.sum()), int(cosines.size), float(cosines.min()), *classes, truth=truth)
