"""GroupViT's groups in every output: the group map a segmentation exposes, the groups PNG `segment` writes, the
terminal listing, and the drift report's group panels."""
from __future__ import annotations

import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from groupvit_edge import runtimes
from groupvit_edge.segmentation import Segmenter
from groupvit_edge.segmentation.groups import BOUNDARY
from groupvit_edge.segmentation.postprocess import final_groups
from groupvit_edge.segmentation.preprocess import load_image, prepare

from conftest import EVAL_IMAGES


def _expected_groups(runtime, photo):
    """The runtime's own final-group argmax of the one letterboxed window, cropped and taken to the photo size."""
    image = load_image(photo)
    prepared = prepare(image, runtime.manifest.preprocess, "letterbox")
    encoding = runtime.encode_image(prepared.windows)
    groups = final_groups(encoding.grouping[0], *prepared.window_size)
    top, left, box_h, box_w = prepared.boxes[0]
    groups = groups[top:top + box_h, left:left + box_w]
    height, width = prepared.original_size
    rows = np.minimum(((np.arange(height) + 0.5) * box_h / height).astype(int), box_h - 1)
    columns = np.minimum(((np.arange(width) + 0.5) * box_w / width).astype(int), box_w - 1)
    return groups[rows][:, columns]


@pytest.mark.parametrize("photo", sorted(EVAL_IMAGES.glob("*.jpg"))[:3], ids=lambda p: p.stem)
def test_the_group_map_is_the_runtimes_final_group_argmax(onnx_artifact, photo):
    runtime = runtimes.open(onnx_artifact)
    result = Segmenter(runtime, ["person", "dog", "grass"], resize="letterbox").segment(photo)
    by_id = np.array([group.group for group in result.group_info])
    np.testing.assert_array_equal(by_id[result.groups], _expected_groups(runtime, photo))
    assert sum(group.share for group in result.group_info) == pytest.approx(1.0)
    assert all(group.best_class in ("person", "dog", "grass") for group in result.group_info)
    stage1 = result.stage1_groups
    assert stage1 is not None and stage1.shape == result.groups.shape
    assert len(np.unique(stage1)) >= len(result.group_info)     # 64 first-stage groups merge into 8


def test_segment_writes_a_groups_png_with_a_colour_per_group(onnx_artifact, tmp_path):
    photos = sorted(EVAL_IMAGES.glob("*.jpg"))[:3]
    done = subprocess.run([sys.executable, "-m", "groupvit_edge.cli", "segment", str(onnx_artifact), *map(str, photos),
                           "--labels", "person,dog,grass", "--show", "groups", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with Segmenter.open(onnx_artifact, ["person", "dog", "grass"]) as segmenter:
        for photo in photos:
            written = np.asarray(Image.open(tmp_path / f"{photo.stem}.groups.png").convert("RGB"))
            colours = {tuple(c) for c in written.reshape(-1, 3)} - {BOUNDARY}
            groups = segmenter.segment(photo).group_info
            assert len(colours) == len(groups)
            assert "group 0" in done.stdout and f"({groups[0].best_class})" in done.stdout


@pytest.mark.slow
def test_segment_writes_group_maps_for_all_50_coco_photos(onnx_artifact, tmp_path):
    done = subprocess.run([sys.executable, "-m", "groupvit_edge.cli", "segment", str(onnx_artifact), str(EVAL_IMAGES),
                           "--labels", "person,dog,grass", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    assert len(list(tmp_path.glob("*.groups.png"))) == len(list(EVAL_IMAGES.glob("*.jpg"))) == 50


def test_the_drift_report_shows_both_sides_groups_and_tells_near_ties_from_flips(onnx_artifact, tmp_path):
    import json
    from groupvit_edge.metrics.drift import DriftBudget, measure_drift
    from groupvit_edge.metrics.render import render_drift_report
    # Two photos: one gives no interval over photos, so a budget could not be proven on it.
    photos = sorted(EVAL_IMAGES.glob("*.jpg"))[:2]
    render_drift_report(measure_drift(onnx_artifact, [onnx_artifact], photos, labels="prototypes:4",
                                      budget=DriftBudget(min_group_cosine=0.999), progress=False), tmp_path / "r")
    data = json.loads((tmp_path / "r" / "drift.json").read_text())
    photo = Path(data["candidates"][0]["class_level"]["worst_images"][0]["image"])
    assert data["budget"] == "group cosine mean ≥ 0.999" and data["candidates"][0]["failures"] == []
    assert "Within the budget (group cosine mean ≥ 0.999)" in (tmp_path / "r" / "report.html").read_text()
    panel = Image.open(next((tmp_path / "r").glob("01-*-worst1-*.png")))
    width, _ = Image.open(photo).size
    assert panel.size[0] == 3 * width + 8 and panel.size[1] > 2 * Image.open(photo).size[1]    # two rows of three
