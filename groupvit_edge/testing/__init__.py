"""Accuracy-regression assertions for users' own test suites (pytest fixtures live in `.plugin`).

    from groupvit_edge.testing import assert_drift_within
    def test_int8_still_segments_like_fp32():
        assert_drift_within("artifacts/int8", "artifacts/fp32", images="data/val", labels="prototypes:16",
                            max_drop=1.0)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..metrics.drift import DriftReport, measure_drift
from ..metrics.report import write_json


def assert_drift_within(candidate, reference, *, images, labels="prototypes:16", max_drop: float = 1.0,
                        min_confident_group_agreement: float | None = None,
                        min_group_cosine: float | None = None, report_dir=None, **options) -> DriftReport:
    """Fail with the figures and the report's path when `candidate` drifts from `reference` beyond the budget.

    `max_drop`: mIoU points below 100 (vs the reference's label maps) or, with ground truth, below the
    reference's own mIoU. The optional model-level bounds are in percent and cosine units.
    """
    report_dir = Path(report_dir or tempfile.mkdtemp(prefix="groupvit-drift-"))
    report = measure_drift(reference, [candidate], images, labels=labels, report_dir=report_dir, progress=False,
                           **options)
    failures = report.failures(max_drop)
    model = report.data["candidates"][0]["model_level"]
    confident = model["group_agreement_confident"]
    if min_confident_group_agreement is not None and (confident is None or confident < min_confident_group_agreement):
        failures.append(f"{candidate}: confident-pixel group agreement {confident:.3f}% is below "
                        f"{min_confident_group_agreement}%")
    cosine = model["group_embed_cosine"]["min"]
    if min_group_cosine is not None and cosine < min_group_cosine:
        failures.append(f"{candidate}: minimum group-embedding cosine {cosine:.5f} is below {min_group_cosine}")
    if failures:
        raise AssertionError("\n".join(["drift budget exceeded:", *failures, "", report.to_markdown(), "",
                                        f"report: {report_dir} (drift.json, worst-image PNGs)"]))
    return report


__all__ = ["assert_drift_within", "measure_drift", "DriftReport", "write_json"]
