"""Every gated drift figure carries its 95% interval over photos, and a budget passes only when the bound does.

The candidate with a few bad photos is real: the fp32 artifact run in ONNX Runtime, with its group embeddings
perturbed on two of the photos only, so its mean still passes a limit that its lower bound does not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from groupvit_edge import runtimes
from groupvit_edge.metrics.budget import DriftBudget
from groupvit_edge.metrics.drift import FP32_TOLERANCE, measure_drift
from groupvit_edge.metrics.drift_report import DriftReport, read_drift_report
from groupvit_edge.metrics.photo_drift import DriftUncertainty
from groupvit_edge.metrics.uncertainty import (
    Estimate,
    estimate,
    format_estimate,
    photos_needed,
    pooled_ratio,
)
from groupvit_edge.runtimes.base import ImageEncoding, Runtime
from groupvit_edge.segmentation.preprocess import load_image, prepare
from groupvit_edge.testing import assert_drift_within

PHOTOS = 8
BAD_PHOTOS = 2


def _digest(window: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(window).tobytes()).hexdigest()


class _BadOnSomePhotos(Runtime):
    """The inner runtime, with noise on the group embeddings of the windows of `bad` photos only."""
    name = "bad-on-some-photos"

    def __init__(self, inner: Runtime, bad):
        self.inner, self.manifest = inner, inner.manifest
        self.bad = {_digest(window) for photo in bad
                    for window in prepare(load_image(photo), inner.manifest.preprocess).windows}

    def encode_image(self, pixels):
        encoding = self.inner.encode_image(pixels)
        embeds = encoding.group_embeds.copy()
        for row, window in enumerate(pixels):
            if _digest(window) in self.bad:
                noise = np.random.default_rng(row).standard_normal(embeds[row].shape).astype(embeds.dtype)
                embeds[row] = embeds[row] + 0.02 * noise
                embeds[row] /= np.linalg.norm(embeds[row], axis=-1, keepdims=True)
        return ImageEncoding(embeds, encoding.image_embed, encoding.grouping)

    def encode_text(self, token_ids):
        return self.inner.encode_text(token_ids)


@pytest.fixture(scope="module")
def photos(coco_images):
    return coco_images[:PHOTOS]


@pytest.fixture(scope="module")
def bad_candidate(onnx_artifact, photos):
    inner = runtimes.open(onnx_artifact)
    return inner, _BadOnSomePhotos(inner, photos[:BAD_PHOTOS])


@pytest.fixture(scope="module")
def report(bad_candidate, photos) -> DriftReport:
    reference, candidate = bad_candidate
    return measure_drift(reference, [candidate], photos, labels="prototypes:8", progress=False)


def test_the_estimates_are_the_reported_figures_and_the_bad_photos_are_the_worst(report, photos):
    candidate = report.candidates[0]
    uncertainty, model = candidate.uncertainty, candidate.model_level
    cosine = uncertainty.group_embed_cosine
    assert cosine.value == pytest.approx(model.group_embed_cosine.mean, abs=1e-12)
    assert uncertainty.group_agreement.value == pytest.approx(model.group_agreement, abs=1e-9)
    assert uncertainty.miou_vs_reference.value == pytest.approx(candidate.class_level.miou_vs_reference, abs=1e-9)
    assert cosine.photos == PHOTOS and [p.image for p in uncertainty.photos] == [str(p) for p in photos]
    assert cosine.worst_photo in {str(p) for p in photos[:BAD_PHOTOS]}
    # The good photos are the artifact itself: their own cosines are 1, the bad ones' are not.
    own = {p.image: p.group_embed_cosine for p in uncertainty.photos}
    assert all(own[str(p)] > 0.999999 for p in photos[BAD_PHOTOS:])
    assert all(own[str(p)] < 0.99 for p in photos[:BAD_PHOTOS])
    assert cosine.low < cosine.value - 0.002, "two bad photos in eight make the interval wide"


def test_a_candidate_with_a_few_bad_photos_fails_the_bound_while_its_mean_passes(bad_candidate, report, photos,
                                                                                 tmp_path):
    cosine = report.candidates[0].uncertainty.group_embed_cosine
    between = round((cosine.low + cosine.value) / 2, 6)      # the mean passes it; the lower bound does not
    failures = DriftBudget(min_group_cosine=between).judge(report.candidates[0])
    assert len(failures) == 1 and not failures[0].proven and failures[0].figure == "mean group-embedding cosine"
    assert failures[0].photos_needed > PHOTOS
    reference, candidate = bad_candidate
    with pytest.raises(AssertionError) as failure:
        assert_drift_within(reference, candidate, images=photos, labels="prototypes:8", max_drop=None,
                            min_group_cosine=between, report_dir=tmp_path / "report")
    message = str(failure.value)
    assert "mean group-embedding cosine" in message and "not proven on 8 photos" in message
    assert f"{cosine.worst_photo} (worst for mean group-embedding cosine)" in message
    # Below the lower bound, the same candidate passes: the gate is the bound, not a fixed refusal.
    below = round(cosine.low - 0.0005, 6)
    assert DriftBudget(min_group_cosine=below).judge(report.candidates[0]) == []


def test_the_bound_is_deterministic_for_a_seed(report):
    counts = report.candidates[0].uncertainty.counts
    first, again = DriftUncertainty.of(counts, seed=0), DriftUncertainty.of(counts, seed=0)
    assert first == again and first == report.candidates[0].uncertainty
    other = DriftUncertainty.of(counts, seed=1)
    assert other.group_embed_cosine.value == first.group_embed_cosine.value
    assert other.group_embed_cosine.worst == first.group_embed_cosine.worst
    assert other.group_embed_cosine.low != first.group_embed_cosine.low     # the seed is what fixes the bound


def test_drift_json_round_trips_the_intervals_and_the_report_command_renders_them(report, tmp_path):
    path = tmp_path / "drift.json"
    path.write_text(json.dumps(report.to_dict()))
    saved = read_drift_report(path)
    assert saved.candidates[0].uncertainty == report.candidates[0].uncertainty
    assert saved.to_dict() == report.to_dict()
    done = subprocess.run([sys.executable, "-m", "groupvit_edge.cli", "report", str(path), "--out",
                           str(tmp_path / "again")], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    cosine = report.candidates[0].uncertainty.group_embed_cosine
    interval = f"{cosine.low:.5f}–{cosine.high:.5f}"
    assert interval in (tmp_path / "again" / "report.html").read_text(encoding="utf-8")
    assert format_estimate(cosine, 5, named=True) in (tmp_path / "again" / "drift.md").read_text()


def test_a_drift_json_without_intervals_reads_and_renders_its_figures_alone(report, tmp_path):
    data = report.to_dict()
    for entry in data["candidates"]:
        del entry["uncertainty"]
    data["budget"] = DriftBudget(min_group_cosine=0.5).describe()
    old = DriftReport.from_dict(data)
    assert old.candidates[0].uncertainty is None
    assert "no intervals (this drift.json was written without them)" in old.to_markdown()
    assert old.verdict(old.candidates[0]) == []           # judged on the figure alone
    strict = dataclasses.replace(old, budget=DriftBudget(min_group_cosine=0.99999))
    assert strict.verdict(strict.candidates[0]) and "interval" not in strict.verdict(strict.candidates[0])[0]


def test_an_every_photo_budget_judges_the_worst_photo(report):
    """Equivalence (FP32_TOLERANCE) is a bug check, not a sample: one photo outside fails it where the interval's
    bound passes."""
    candidate = report.candidates[0]
    cosine = candidate.uncertainty.group_embed_cosine
    limit = round((cosine.worst + cosine.low) / 2, 6)
    assert DriftBudget(min_group_cosine=limit).judge(candidate) == []
    (failure,) = DriftBudget(min_group_cosine=limit, every_photo=True).judge(candidate)
    assert failure.proven and f"of photo {cosine.worst_photo}" in failure.sentence
    assert FP32_TOLERANCE.every_photo
    assert DriftBudget.from_description(FP32_TOLERANCE.describe()) == FP32_TOLERANCE


def test_one_photo_gives_no_interval_and_the_gate_says_not_proven():
    names = ["only.jpg"]
    figure = estimate(pooled_ratio([990], [1000], 100.0), [99.0], names)
    assert figure == Estimate(99.0, None, None, 99.0, "only.jpg", 1)
    assert format_estimate(figure, 1, "%") == "99.0% (no interval, worst photo 99.0%, 1 photo)"


def test_a_pooled_ratio_weighs_photos_by_their_pixels():
    """Resampled sums, not a mean of per-photo ratios: a photo with few pixels moves the figure little."""
    counts = np.array([1000] * 9 + [10])
    agree = counts.copy()
    agree[-1] = 0                                       # the small photo disagrees everywhere
    names = [f"{i}.jpg" for i in range(10)]
    figure = estimate(pooled_ratio(agree, counts, 100.0), list(100.0 * agree / counts), names)
    assert figure.value == pytest.approx(100.0 * 9000 / 9010)
    assert figure.worst == 0.0 and figure.worst_photo == "9.jpg"
    assert 99.5 < figure.low <= figure.value <= figure.high == 100.0


def test_photos_needed_follows_the_half_width():
    figure = Estimate(value=99.5, low=99.0, high=99.8, worst=97.0, worst_photo="a.jpg", photos=8)
    assert photos_needed(figure, 99.25) == 32           # half-width 0.5 must shrink to 0.25: 4× the photos
    assert photos_needed(figure, 99.6) is None           # the figure itself fails: more photos will not help
    drop = Estimate(value=0.4, low=0.1, high=1.2, worst=3.0, worst_photo="a.jpg", photos=10)
    assert photos_needed(drop, 0.8, worse="higher") == 40
