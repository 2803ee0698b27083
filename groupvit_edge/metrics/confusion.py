"""Exact segmentation metrics from confusion matrices (bincount), the way mmseg computes mIoU.

A class that appears neither in the prediction nor in the ground truth has no IoU (NaN) and is left out of the
mean; a class present in either side counts, so predicting a class that is not there costs IoU.
"""
from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Accumulates rows = ground truth (or reference), columns = prediction (or candidate)."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, target: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        """Add one image; returns that image's own matrix (for per-image figures)."""
        if target.shape != prediction.shape:
            raise ValueError(f"target {target.shape} and prediction {prediction.shape} differ in shape")
        target = target.ravel().astype(np.int64)
        prediction = prediction.ravel().astype(np.int64)
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        if np.any((prediction[keep] < 0) | (prediction[keep] >= self.num_classes)):
            raise ValueError(f"prediction holds class ids outside 0..{self.num_classes - 1}")
        image = np.bincount(target[keep] * self.num_classes + prediction[keep],
                            minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)
        self.matrix += image
        return image

    def __iadd__(self, other: ConfusionMatrix):
        self.matrix += other.matrix
        return self

    @staticmethod
    def iou_of(matrix: np.ndarray) -> np.ndarray:
        true_positive = np.diag(matrix).astype(np.float64)
        union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, true_positive / union, np.nan)

    @property
    def iou(self) -> np.ndarray:
        """Per-class IoU in [0, 1]; NaN where the class is in neither prediction nor target."""
        return self.iou_of(self.matrix)

    @property
    def mean_iou(self) -> float:
        iou = self.iou
        return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")

    @property
    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    @property
    def total(self) -> int:
        return int(self.matrix.sum())
