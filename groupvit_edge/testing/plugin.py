"""pytest plugin (auto-loaded through the `pytest11` entry point): drift checks that report into tmp_path.

    def test_int8(assert_drift):
        assert_drift("artifacts/fp32", "artifacts/int8", images="data/val", max_drop=1.0)

The reference comes first and the candidate judged against it second, as in `assert_drift_within`; both may be
passed by name: `assert_drift(reference="artifacts/fp32", candidate="artifacts/int8", ...)`.
"""
from __future__ import annotations

import functools

import pytest

from . import assert_drift_within


@pytest.fixture
def assert_drift(tmp_path):
    """`assert_drift_within(reference, candidate, ...)` whose report (drift.json + PNGs) goes into this test's
    tmp_path."""
    return functools.partial(assert_drift_within, report_dir=tmp_path / "drift-report")
