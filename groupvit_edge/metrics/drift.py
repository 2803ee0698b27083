"""Drift: how far a candidate artifact's segmentations are from the reference's, on the same preprocessed images.

Two levels, because random or weak weights can make class maps degenerate:
- class level: mIoU of the candidate's label maps taking the reference's as ground truth, pixel agreement,
  per-class IoU, worst images — for the user's vocabulary, or a label-free prototype vocabulary;
- model level: final-group agreement (overall and on pixels whose reference decision is not a near-tie),
  cosine of group and image embeddings, max abs difference of every graph output.
With ground-truth masks the candidate's own mIoU is compared with the reference's too.

Measuring writes nothing: `measure_drift` returns a `DriftReport` (`drift_report`), which `render` turns into
drift.json, drift.md and report.html.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..assets import samples_description
from ..errors import UserError
from ..options import check_number
from ..progress import progress_bar
from ..runtimes import Runtime, is_artifact
from ..runtimes import open as open_runtime
from ..segmentation.postprocess import BACKGROUND_THRESHOLD
from ..segmentation.preprocess import list_images, load_image, prepare
from ..segmentation.prompts import TemplateSet
from ..segmentation.segmenter import encode_windows, label_map
from ..segmentation.vocabulary import Vocabulary, parse_labels
from .classmaps import ClassMap
from .comparison import ModelLevel, decide_groups, photo_counts
from .confusion import ConfusionMatrix
from .drift_report import (
    CandidateDrift,
    ClassLevelDrift,
    ComparedModel,
    DriftBudget,
    DriftImages,
    DriftReport,
    DriftSettings,
    DriftTiming,
    DriftVocabulary,
    GroundTruthDrift,
    GroundTruthMasks,
    MeasuredPhoto,
    ModelLevelDrift,
    PhotoEvidence,
    WorstImage,
)
from .photo_drift import DriftUncertainty, PhotoCounts, class_counts

CONFIDENT_MARGIN = 0.01      # reference relative margin best vs second group below which a pixel is a near-tie
PROTOTYPE_PREFIX = "prototypes:"


def _finite(value: float) -> float | None:
    """NaN (nothing to measure) becomes null in drift.json, which must stay standard JSON."""
    return None if np.isnan(value) else float(value)


# The budget flags' ranges: mIoU points and agreement percentages in [0, 100], cosines in [-1, 1].
BUDGET_BOUNDS = {"max_drop": {"minimum": 0.0, "maximum": 100.0},
                 "min_confident_agreement": {"minimum": 0.0, "maximum": 100.0},
                 "min_group_cosine": {"minimum": -1.0, "maximum": 1.0}}


def budget_from_flags(max_drop=None, min_confident_agreement=None, min_group_cosine=None, *,
                      defaults: DriftBudget | None = None, class_level: bool = True) -> DriftBudget | None:
    """The budget that --max-drop, --min-confident-agreement and --min-group-cosine ask for, each checked against
    its range; None when none is given. Once one is, the model-level limits not given come from `defaults`.
    `class_level=False` (no vocabulary named) keeps --max-drop out of the budget it still asks for."""
    given = {"max_drop": max_drop, "min_confident_agreement": min_confident_agreement,
             "min_group_cosine": min_group_cosine}
    for name, value in given.items():
        check_number("--" + name.replace("_", "-"), value, **BUDGET_BOUNDS[name])
    if all(value is None for value in given.values()):
        return None
    defaults = defaults or DriftBudget()
    return DriftBudget(
        max_drop=max_drop if class_level else None,
        min_confident_group_agreement=(defaults.min_confident_group_agreement if min_confident_agreement is None
                                       else min_confident_agreement),
        min_group_cosine=defaults.min_group_cosine if min_group_cosine is None else min_group_cosine)


# fp32 graphs in any backend must agree with eager PyTorch up to float reassociation (measured ≤ 5e-7 on every
# output); larger gaps mean a broken graph or a backend silently computing in lower precision.
FP32_MAX_ABS_DIFF = 1e-3
# Equivalence is judged on every photo: one photo outside is a bug, not a sampling question.
FP32_TOLERANCE = DriftBudget(max_abs_diff=FP32_MAX_ABS_DIFF, min_group_agreement=99.0, every_photo=True)
# Reduced precision, judged without a vocabulary: what the drift-budget search and `tune` hold candidates to
# unless told otherwise. Confident pixels ignore near-ties, which random or weak weights make common.
MODEL_LEVEL_BUDGET = DriftBudget(min_confident_group_agreement=99.9, min_group_cosine=0.995)


# ------------------------------------------------------------------------------------------------ vocabulary

def kmeans_prototypes(vectors: np.ndarray, count: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Spherical k-means (k-means++ init, seeded) of unit vectors → `count` unit centroids."""
    if count < 1 or count > len(vectors):
        raise UserError(f"--labels prototypes:{count} needs 1..{len(vectors)} prototypes for these images: "
                        f"choose a smaller K or more images")
    rng = np.random.default_rng(seed)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    seeds = [vectors[rng.integers(len(vectors))]]
    for _ in range(1, count):
        distance = np.min(1.0 - vectors @ np.stack(seeds).T, axis=1).clip(min=0)
        probabilities = distance / distance.sum() if distance.sum() > 0 else None
        seeds.append(vectors[rng.choice(len(vectors), p=probabilities)])
    centroids = np.stack(seeds)
    for _ in range(iterations):
        assignment = (vectors @ centroids.T).argmax(axis=1)
        updated = np.stack([vectors[assignment == k].sum(axis=0) if np.any(assignment == k) else centroids[k]
                            for k in range(count)])
        updated /= np.linalg.norm(updated, axis=1, keepdims=True)
        if np.allclose(updated, centroids):
            break
        centroids = updated
    return centroids.astype(np.float32)


# Drift without class names: 16 k-means prototypes of the reference's group embeddings need no trained weights.
DEFAULT_PROBE = "prototypes:16"


def prototype_count(labels) -> int | None:
    if isinstance(labels, str) and labels.startswith(PROTOTYPE_PREFIX):
        try:
            count = int(labels[len(PROTOTYPE_PREFIX):])
        except ValueError:
            count = 0
        if count < 1:
            raise UserError(f"--labels {labels!r}: write prototypes:K with a whole K ≥ 1, e.g. prototypes:16")
        return count
    return None


def check_vocabulary(labels) -> None:
    """Refuse a bad --labels (class names, or prototypes:K) before any photo is encoded; None is the default one."""
    if labels is not None and prototype_count(labels) is None:
        parse_labels(labels)


# ---------------------------------------------------------------------------------------------- the harness

def validate_candidate(reference, candidate, images, *, labels=DEFAULT_PROBE,
                       margin: float = CONFIDENT_MARGIN, **options) -> CandidateDrift:
    """The one comparison of a candidate with a reference on `images`: export validation, `bench`, `tune` and
    `groupvit_edge.testing` all use it. Options are `measure_drift`'s."""
    return measure_drift(reference, [candidate], images, labels=labels, confident_margin=margin,
                         progress=False, **options).candidates[0]


def measure_drift(reference, candidates: Sequence, images, *, labels=None, templates=None, masks_dir=None,
                  class_map: ClassMap | None = None, confident_margin: float = CONFIDENT_MARGIN,
                  worst: int = 5, seed: int = 0, batch_size: int = 4,
                  budget: DriftBudget | None = None, progress: bool = True) -> DriftReport:
    """Run the reference and every candidate on the same windows of `images` and compare them.

    `reference`/`candidates` are artifact directories, checkpoints/model specs (PyTorch reference) or Runtimes.
    `labels`: class names, "prototypes:K" (K k-means centroids of the reference's group embeddings), or None
    for the artifacts' vocabulary (the class map's names when masks are given; DEFAULT_PROBE when a reference or
    candidate has no vocabulary, as a checkpoint or an artifact exported without --labels); `templates` their
    prompt template set (segmentation.prompts; default the official `simple`). With `budget`, the
    report judges each candidate by it too, on the bounds of the gated figures' 95% intervals over photos
    (`photo_drift.DriftUncertainty`). `seed` seeds both the prototypes' k-means and that bootstrap, so a run
    is repeatable. Nothing is written: `render.render_drift_report` writes the report
    folder, its worst-photo panels drawn from the report's `evidence`.
    """
    started = time.perf_counter()
    if not candidates:
        raise UserError("no --candidate given: pass at least one artifact to compare with the reference")
    check_number("confident margin", confident_margin, minimum=0.0, maximum=0.999)
    check_vocabulary(labels)
    paths = list_images(images)
    candidate_runtimes = [_open(source) for source in candidates]
    size = (candidate_runtimes[0].manifest.preprocess.height, candidate_runtimes[0].manifest.preprocess.width)
    reference_runtime = _open(reference, image_size=size)
    runtimes_ = [reference_runtime, *candidate_runtimes]
    if labels is None and class_map is None and any(r.manifest.vocabulary_path() is None for r in runtimes_):
        labels = DEFAULT_PROBE
    preprocess = reference_runtime.manifest.preprocess
    for source, runtime in zip(candidates, candidate_runtimes):
        theirs = runtime.manifest.preprocess
        if (theirs.height, theirs.width) != (preprocess.height, preprocess.width):
            raise UserError(f"{source} was exported at {theirs.height}x{theirs.width} but the reference runs at "
                            f"{preprocess.height}x{preprocess.width}: compare artifacts of the same size")

    encode_seconds = [0.0] * len(runtimes_)
    encoded: list[MeasuredPhoto] = []
    for path in progress_bar(paths, progress, "encoding"):
        prepared = prepare(load_image(path), preprocess)
        encodings = []
        for index, runtime in enumerate(runtimes_):
            tick = time.perf_counter()
            encodings.append(encode_windows(runtime, prepared.windows, batch_size))
            encode_seconds[index] += time.perf_counter() - tick
        truth = _ground_truth(masks_dir, path, class_map, prepared.original_size) if masks_dir and class_map else None
        encoded.append(MeasuredPhoto(path, prepared.without_pixels(), encodings, truth))

    tick = time.perf_counter()
    vocabularies, vocabulary, background = _vocabularies(labels, templates, class_map, runtimes_, encoded, seed)
    text_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    class_names = (["background"] if background is not None else []) + vocabulary.labels
    logit_scales = [runtime.manifest.logit_scale for runtime in runtimes_]
    results = [_compare(encoded, index, vocabularies, logit_scales, background, class_names, confident_margin,
                        worst, class_map is not None and masks_dir is not None, seed)
               for index in range(1, len(runtimes_))]
    postprocess_seconds = time.perf_counter() - tick

    candidate_drifts = [CandidateDrift(**dataclasses.asdict(_describe(source, runtime)), **result._asdict(),
                                       encode_seconds=encode_seconds[index])
                        for index, (source, runtime, result) in enumerate(zip(candidates, candidate_runtimes, results),
                                                                          start=1)]
    report = DriftReport(
        reference=_describe(reference, reference_runtime),
        images=DriftImages(count=len(paths), source=_sources(images),
                           windows=sum(len(e.prepared.boxes) for e in encoded),
                           size=[preprocess.height, preprocess.width], resize=preprocess.resize),
        vocabulary=vocabulary,
        settings=DriftSettings(confident_margin=confident_margin, background_threshold=background),
        ground_truth=GroundTruthMasks(str(masks_dir), class_map.name) if masks_dir and class_map else None,
        candidates=candidate_drifts,
        timing=DriftTiming(reference_encode_s=encode_seconds[0], vocabulary_s=text_seconds,
                           postprocess_and_metrics_s=postprocess_seconds,
                           total_s=time.perf_counter() - started),
        budget=budget, evidence=_evidence(candidate_drifts, encoded, vocabularies, logit_scales, background,
                                          class_names))
    return report


def _evidence(candidates: list[CandidateDrift], encoded: list[MeasuredPhoto], vocabularies, logit_scales,
              background, class_names) -> PhotoEvidence:
    """What the worst-photo panels need, kept for the worst photos only."""
    worst = {image.image for candidate in candidates for image in candidate.class_level.worst_images}
    return PhotoEvidence([item for item in encoded if str(item.path) in worst], vocabularies, logit_scales,
                         background, class_names)


def _sources(images) -> list[str]:
    if not images:
        return [samples_description()]
    return [str(p) for p in (images if isinstance(images, (list, tuple)) else [images])]


def _open(source, image_size=None) -> Runtime:
    if isinstance(source, Runtime):
        return source
    # A checkpoint reference runs at the candidates' export size; an artifact has its own.
    if image_size and not is_artifact(source):
        return open_runtime(source, image_size=image_size)
    return open_runtime(source)


def _describe(source, runtime: Runtime) -> ComparedModel:
    manifest = runtime.manifest
    return ComparedModel(
        source=str(getattr(source, "model_id", source)) if not isinstance(source, Runtime) else runtime.name,
        backend=runtime.description, target=manifest.target,
        model_sha256=manifest.model.weights_sha256)


def _ground_truth(masks_dir, image_path: Path, class_map: ClassMap, size) -> np.ndarray:
    mask_path, mask = class_map.truth(Path(masks_dir), image_path)
    if mask.shape != tuple(size):
        raise UserError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{size[1]}x{size[0]}: masks must have the image's size")
    return mask


def _vocabularies(labels, templates, class_map, runtimes_, encoded, seed) -> tuple[list[Vocabulary], DriftVocabulary,
                                                                        float | None]:
    """Text embeddings per runtime (each through its own text graph, as deployed), and what they are."""
    count = prototype_count(labels)
    if count is not None:
        first = [e.encodings[0].group_embeds for e in encoded]
        reference_groups = np.concatenate([groups.reshape(-1, groups.shape[-1]) for groups in first])
        prototypes = kmeans_prototypes(reference_groups, count, seed)
        prototype_names = [f"prototype {k}" for k in range(count)]
        shared = Vocabulary(prototype_names, TemplateSet("prototypes", ()), prototypes)
        # Prototypes are groups, not things on a background: every pixel takes its nearest prototype.
        return [shared] * len(runtimes_), DriftVocabulary("prototypes", prototype_names, seed=seed), None
    if labels is None and class_map is not None:
        labels = class_map.foreground
    names = parse_labels(labels) if labels is not None else None
    built = {}      # the same text graph (by sha256) encodes a vocabulary once
    vocabularies = []
    for runtime in runtimes_:
        text = runtime.manifest.graphs.get("text")
        key = (text.sha256 if text else None) or id(runtime)
        if key not in built:
            built[key] = Vocabulary.build(runtime, names, templates)
        vocabularies.append(built[key])
    kind = "labels" if names is not None else "artifact"
    return vocabularies, DriftVocabulary(kind, list(vocabularies[0].labels),
                                         templates=list(vocabularies[0].templates.templates)), BACKGROUND_THRESHOLD


class _Comparison(NamedTuple):
    """The measured parts of a CandidateDrift."""
    class_level: ClassLevelDrift
    model_level: ModelLevelDrift
    ground_truth: GroundTruthDrift | None
    uncertainty: DriftUncertainty


def _compare(encoded, index, vocabularies, logit_scales, background, class_names, margin, worst,
             with_truth, seed) -> _Comparison:
    """The class-level, model-level and ground-truth parts of candidate `index`'s CandidateDrift."""
    reference_vocab, candidate_vocab = vocabularies[0], vocabularies[index]
    versus_reference = ConfusionMatrix(len(class_names), ignore_index=None)
    # Pixels whose reference class decision is a near-tie (relative margin < `margin`) flip under any change of
    # arithmetic; with weak or random weights they can be most of the image.
    confident_versus_reference = ConfusionMatrix(len(class_names), ignore_index=None)
    # Each side's class maps against the ground truth: reference, candidate.
    truth = (ConfusionMatrix(len(class_names)), ConfusionMatrix(len(class_names))) if with_truth else None
    model_level = ModelLevel()
    per_image = []
    photos: list[PhotoCounts] = []
    for item in encoded:
        reference, candidate = item.encodings[0], item.encodings[index]
        if item.reference_cache is None:      # the reference side is the same for every candidate
            groups = [decide_groups(g, item.prepared.window_size, margin) for g in reference.grouping]
            labels, _, class_margin = label_map(item.prepared, reference, reference_vocab.text_embeds,
                                                logit_scales[0], background, [d.groups for d in groups],
                                                with_margin=True)
            item.reference_cache = (groups, labels, class_margin >= margin)
        ref_groups, ref_labels, ref_confident = item.reference_cache
        cand_groups = [decide_groups(g, item.prepared.window_size, None) for g in candidate.grouping]
        photo_model = model_level.add(reference, candidate, item.prepared, ref_groups, cand_groups)
        cand_labels = label_map(item.prepared, candidate, candidate_vocab.text_embeds, logit_scales[index],
                                background, [d.groups for d in cand_groups])[0]
        photo_classes = versus_reference.update(ref_labels, cand_labels)
        confident_versus_reference.update(ref_labels[ref_confident], cand_labels[ref_confident])
        per_image.append((float(np.mean(ref_labels == cand_labels)), str(item.path)))
        photo_truth = None
        if truth is not None:
            photo_truth = (*class_counts(truth[0].update(item.ground_truth, ref_labels)),
                           *class_counts(truth[1].update(item.ground_truth, cand_labels)))
        photos.append(photo_counts(str(item.path), photo_model, class_counts(photo_classes), photo_truth))
    iou = versus_reference.iou
    class_level = ClassLevelDrift(
        miou_vs_reference=100.0 * versus_reference.mean_iou,
        pixel_agreement=100.0 * versus_reference.pixel_accuracy,
        miou_vs_reference_confident=_finite(100.0 * confident_versus_reference.mean_iou),
        pixel_agreement_confident=_finite(100.0 * confident_versus_reference.pixel_accuracy),
        near_tie_class_share=100.0 * (1 - confident_versus_reference.total / max(versus_reference.total, 1)),
        per_class_iou={name: (None if np.isnan(value) else 100.0 * value) for name, value in zip(class_names, iou)},
        worst_images=[WorstImage(path, 100.0 * agreement) for agreement, path in sorted(per_image)[:worst]])
    ground_truth = None
    if truth is not None:
        truth_reference, truth_candidate = truth
        ground_truth = GroundTruthDrift(
            reference_miou=100.0 * truth_reference.mean_iou, candidate_miou=100.0 * truth_candidate.mean_iou,
            drop=100.0 * (truth_reference.mean_iou - truth_candidate.mean_iou),
            reference_pixel_accuracy=100.0 * truth_reference.pixel_accuracy,
            candidate_pixel_accuracy=100.0 * truth_candidate.pixel_accuracy)
    return _Comparison(class_level, model_level.summary(), ground_truth, DriftUncertainty.of(photos, seed))
