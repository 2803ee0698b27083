"""Exact metrics on hand-made label maps whose confusion matrix and IoU are known by construction."""
from __future__ import annotations

import re

import numpy as np
import pytest

from groupvit_edge.errors import UserError
from groupvit_edge.metrics import ConfusionMatrix
from groupvit_edge.metrics.classmaps import COCO_THINGS, coco_object, from_file, resolve, voc
from groupvit_edge.metrics.comparison import GroupingComparison, decide_groups
from groupvit_edge.metrics.drift import kmeans_prototypes

from conftest import SHARED_DATA


def test_confusion_matrix_and_iou_by_hand():
    target = np.array([[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [2, 2, 2, 2]])
    prediction = np.array([[0, 1, 1, 1],
                           [0, 0, 1, 2],
                           [2, 2, 0, 2]])
    cm = ConfusionMatrix(4, ignore_index=None)
    cm.update(target, prediction)
    # rows = target, columns = prediction
    assert cm.matrix.tolist() == [[3, 1, 0, 0],
                                  [0, 3, 1, 0],
                                  [1, 0, 3, 0],
                                  [0, 0, 0, 0]]
    # IoU = TP / (TP + FP + FN): class 0: 3/(3+1+1)=0.6, class 1: 3/(3+1+1)=0.6, class 2: 3/(3+1+1)=0.6
    assert cm.iou[:3] == pytest.approx([0.6, 0.6, 0.6])
    assert np.isnan(cm.iou[3])                      # absent from both sides: not in the mean
    assert cm.mean_iou == pytest.approx(0.6)
    assert cm.pixel_accuracy == pytest.approx(9 / 12)


def test_ignore_index_and_false_positive_classes():
    target = np.array([0, 0, 255, 1, 1, 1])
    prediction = np.array([0, 2, 1, 1, 1, 0])
    cm = ConfusionMatrix(3)
    cm.update(target, prediction)
    assert cm.total == 5                                   # the ignored pixel is not counted
    # class 2 is predicted once but never true: IoU 0 (it counts, as in mmseg)
    assert cm.iou.tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert cm.mean_iou == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_accumulation_equals_one_big_matrix():
    rng = np.random.default_rng(0)
    targets, predictions = rng.integers(0, 5, (4, 30, 40)), rng.integers(0, 5, (4, 30, 40))
    whole, parts = ConfusionMatrix(5, None), ConfusionMatrix(5, None)
    whole.update(targets, predictions)
    for t, p in zip(targets, predictions):
        parts.update(t, p)
    assert np.array_equal(whole.matrix, parts.matrix)
    with pytest.raises(ValueError):
        parts.update(targets[0], np.full((30, 40), 7))


def test_coco_object_class_map():
    class_map = coco_object()
    assert len(class_map.class_names) == 81 and class_map.class_names[0] == "background"
    raw = np.array([0, 1, 90, 92, 200, 17], dtype=np.uint8)
    official, panoptic = class_map.forms
    assert panoptic.suffix == ".png"
    assert class_map.convert(raw, panoptic).tolist() == [0, 1, 80, 0, 0, class_map.class_names.index("cat")]
    # the official converter's _instanceTrainIds.png: 0 background, 1..80 the things in order
    assert official.suffix == "_instanceTrainIds.png"
    assert class_map.convert(np.array([0, 1, 80, 81], np.uint8), official).tolist() == [0, 1, 80, 255]


def test_coco_names_agree_with_the_shared_dataset():
    """Every thing id in the dataset's classes.yaml has our name for it."""
    text = (SHARED_DATA / "coco" / "eval2017" / "classes.yaml").read_text()
    listed = {int(i): n.strip() for i, n in re.findall(r"^\s+(\d+): (.+)$", text, flags=re.M)}
    things = {i: n for i, n in listed.items() if 0 < i <= 90}
    assert things and all(COCO_THINGS[i] == n for i, n in things.items())


def test_voc_and_file_class_maps(tmp_path):
    assert voc().convert(np.array([0, 20, 21, 255], dtype=np.uint8)).tolist() == [0, 20, 255, 255]
    path = tmp_path / "mine.txt"
    path.write_text("0: background\n3: road\n7: car\n")
    mine = from_file(path)
    assert mine.class_names == ("background", "road", "car")
    assert mine.convert(np.array([0, 3, 7, 5], dtype=np.uint8)).tolist() == [0, 1, 2, 255]
    (tmp_path / "bare.txt").write_text("background\nroad\n")
    assert resolve(str(tmp_path / "bare.txt")).class_names == ("background", "road")
    with pytest.raises(UserError, match="neither"):
        resolve("imagenet")
    (tmp_path / "bad.txt").write_text("5: road\n")
    with pytest.raises(UserError, match="0 = background"):
        from_file(tmp_path / "bad.txt")


def test_grouping_comparison_counts_near_ties():
    reference = np.zeros((2, 2, 2), dtype=np.float32)
    reference[0] = [[0.9, 0.505], [0.2, 0.6]]
    reference[1] = [[0.1, 0.500], [0.8, 0.4]]
    candidate = reference.copy()
    candidate[1, 0, 1] = 0.51          # flips the near-tie pixel (margin 1%: (0.505-0.5)/0.505 < 0.01)
    candidate[1, 1, 1] = 0.7           # flips a confident pixel
    comparison = GroupingComparison()
    agreement = comparison.add(decide_groups(reference, (2, 2), 0.01), decide_groups(candidate, (2, 2), None),
                               (2, 2))
    assert agreement == 0.5
    summary = comparison.summary()
    assert summary["near_tie_share"] == 25.0
    assert summary["group_agreement_confident"] == pytest.approx(100 * 2 / 3)


def test_kmeans_prototypes_recovers_clusters():
    rng = np.random.default_rng(1)
    centres = np.eye(4, 16)
    points = np.concatenate([c + 0.05 * rng.standard_normal((50, 16)) for c in centres])
    prototypes = kmeans_prototypes(points, 4, seed=0)
    assert np.allclose(np.linalg.norm(prototypes, axis=1), 1, atol=1e-5)
    assert sorted((prototypes @ centres.T).argmax(axis=1).tolist()) == [0, 1, 2, 3]
    assert np.array_equal(prototypes, kmeans_prototypes(points, 4, seed=0))      # seeded
    with pytest.raises(UserError, match="prototypes"):
        kmeans_prototypes(points, 1000)
