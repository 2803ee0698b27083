"""Accuracy-regression assertions for users' own test suites (pytest fixtures live in `.plugin`).

    from groupvit_edge.testing import assert_drift_within
    def test_int8_still_segments_like_fp32():
        assert_drift_within("artifacts/fp32", "artifacts/int8", images="data/val", labels="prototypes:16",
                            max_drop=1.0, min_confident_group_agreement=99.9)

Reference first, candidate second: the order of `groupvit-edge drift --ref R --candidate C`. Both may be passed by
name (`reference=`, `candidate=`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..metrics.budget import BudgetFailure
from ..metrics.drift import DriftBudget, DriftReport, measure_drift
from ..metrics.render import render_drift_report, write_json


def assert_drift_within(reference, candidate, *, images=None, labels="prototypes:16", max_drop: float | None = 1.0,
                        min_confident_group_agreement: float | None = None,
                        min_group_cosine: float | None = None, min_group_cosine_worst: float | None = None,
                        report_dir=None, **options) -> DriftReport:
    """Fail with the figures, the worst photos and the report's path when `candidate` drifts from `reference`
    beyond the budget. Each limit is checked on the bound of its figure's 95% interval over the photos (the
    lower bound of an "at least" figure, the upper bound of the mIoU drop): a figure that passes on average but
    not across the photos fails as "not proven", with about how many photos would prove it.

    `reference`: the artifact, checkpoint or runtime whose outputs count as right (usually fp32); `candidate`: the
    one judged against it (e.g. the INT8 artifact).

    `images`: files or directories (default: the sample photos shipped with groupvit-edge). `max_drop`: mIoU
    points below 100 (vs the reference's label maps) or, with ground truth, below the reference's own mIoU.
    The model-level bounds are in percent (agreement) and cosine units (group embeddings: mean, worst).
    """
    budget = DriftBudget(max_drop=max_drop, min_confident_group_agreement=min_confident_group_agreement,
                         min_group_cosine=min_group_cosine, min_group_cosine_worst=min_group_cosine_worst)
    report_dir = Path(report_dir or tempfile.mkdtemp(prefix="groupvit-drift-"))
    report = measure_drift(reference, [candidate], images, labels=labels, progress=False, budget=budget, **options)
    render_drift_report(report, report_dir)
    failures = [failure for candidate in report.candidates for failure in budget.judge(candidate)]
    if failures:
        raise AssertionError("\n".join(["drift budget exceeded:", *map(str, failures), "",
                                        *_worst_photos(report, failures), "", report.to_markdown(), "",
                                        f"report: {report_dir} (report.html, drift.json, worst-photo PNGs)"]))
    return report


def _worst_photos(report: DriftReport, failures: list[BudgetFailure]) -> list[str]:
    """The photos to look at first: each failed figure's worst photo, then the worst photos by class agreement."""
    lines = ["worst photos:"]
    lines += [f"  {failure.worst_photo} (worst for {failure.figure})" for failure in failures if failure.worst_photo]
    lines += [f"  {worst.image} ({worst.agreement:.2f}% of pixels agree with the reference's classes)"
              for candidate in report.candidates for worst in candidate.class_level.worst_images[:3]]
    return lines


__all__ = ["assert_drift_within", "measure_drift", "DriftBudget", "DriftReport", "write_json"]
