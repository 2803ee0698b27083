"""How many held-out photos make export's drift verdict mean something: the width of the gated figures' 95%
intervals (seeded bootstrap over photos, `metrics.uncertainty`) for 8, 16, 32, 48 and 64 photos.

    python benchmarks/drift_interval_width.py [--calib-count 64] [--subsets 20] [--out DIR]

Exports random:0 as onnx (fp32) and onnx-int8 (calibrated on --calib-count COCO calibration photos, 448²),
measures the INT8 artifact against the fp32 one once on a pool of photos it was not calibrated on (the other
COCO calibration photos and the 50 COCO eval photos), then estimates the intervals again on --subsets seeded
random subsets of each size drawn from that pool, and prints the median width and how often each verdict
against the default budget comes out. The shipped sample photos are measured too, as a set of their own.
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("GROUPVIT_EDGE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SIZES = (8, 16, 32, 48, 64)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--subsets", type=int, default=20)
    parser.add_argument("--out", help="keep the artifacts here (default: a temporary directory)")
    args = parser.parse_args()
    from groupvit_edge.hardware import cpu_header
    print(cpu_header(), flush=True)   # figures from different machines are never mixed

    from groupvit_edge.assets import sample_photos
    from groupvit_edge.exporters import export
    from groupvit_edge.metrics.budget import DriftBudget
    from groupvit_edge.metrics.drift import MODEL_LEVEL_BUDGET, measure_drift
    from groupvit_edge.metrics.photo_drift import DriftUncertainty
    from groupvit_edge.metrics.uncertainty import format_estimate
    from groupvit_edge.model import load_model
    from groupvit_edge.quantization.calibration_set import CalibrationSet

    calib_dir = SHARED / "coco" / "calib2017"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out or scratch)
        loaded = load_model("random:0")
        fp32, int8 = root / "fp32", root / "int8"
        if not (fp32 / "manifest.json").is_file():
            export(loaded, fp32, "onnx", image_size=448, validation_images=sample_photos()[0], log=lambda m: None)
        if not (int8 / "manifest.json").is_file():
            export(loaded, int8, "onnx-int8", image_size=448, calib_dir=calib_dir, calib_count=args.calib_count,
                   cache_dir=root / "cache", log=print)
        preprocess = load_runtime_preprocess(fp32)
        drawn = set(CalibrationSet.resolve(calib_dir, args.calib_count, preprocess, log=lambda m: None).images)
        pool = [p for p in sorted(calib_dir.rglob("*.jpg")) if p not in drawn]
        pool += sorted((SHARED / "coco" / "eval2017" / "images").glob("*.jpg"))
        report = measure_drift(fp32, [int8], pool, labels="prototypes:16", progress=True)
        samples = measure_drift(fp32, [int8], sample_photos(), labels="prototypes:16", progress=False)

    everything = report.candidates[0].uncertainty
    print(f"\nINT8 ({args.calib_count} calibration photos) vs fp32 on {len(pool)} photos not calibrated on "
          f"({report.timing.total_s / len(pool):.2f} s per photo to measure):")
    print(f"  confident group agreement {format_estimate(everything.group_agreement_confident, 3, '%')}")
    print(f"  group cosine mean {format_estimate(everything.group_embed_cosine, 5)}")
    shipped = samples.candidates[0].uncertainty
    print(f"on the {len(sample_photos())} shipped sample photos:")
    print(f"  confident group agreement {format_estimate(shipped.group_agreement_confident, 3, '%')}")
    print(f"  group cosine mean {format_estimate(shipped.group_embed_cosine, 5)}")

    budget: DriftBudget = MODEL_LEVEL_BUDGET
    print(f"\n{args.subsets} seeded random subsets of the pool per size; verdict against {budget.describe()}\n")
    print("| photos | confident agreement: median 95% width (points) | min–max width | group cosine mean: median "
          "width | min–max width | within / not proven / outside |")
    print("|---|---|---|---|---|---|")
    counts = list(everything.counts)
    for size in SIZES:
        widths_agreement, widths_cosine, verdicts = [], [], {"within": 0, "not proven": 0, "outside": 0}
        for subset in range(args.subsets):
            chosen = random.Random(subset).sample(counts, size)
            estimated = DriftUncertainty.of(chosen)
            agreement, cosine = estimated.group_agreement_confident, estimated.group_embed_cosine
            widths_agreement.append(agreement.high - agreement.low)
            widths_cosine.append(cosine.high - cosine.low)
            failures = budget.judge(_with(report.candidates[0], estimated))
            verdicts["within" if not failures else "outside" if any(f.proven for f in failures)
                     else "not proven"] += 1
        print(f"| {size} | {np.median(widths_agreement):.3f} | {min(widths_agreement):.3f}–{max(widths_agreement):.3f} "
              f"| {np.median(widths_cosine):.5f} | {min(widths_cosine):.5f}–{max(widths_cosine):.5f} "
              f"| {verdicts['within']} / {verdicts['not proven']} / {verdicts['outside']} |")


def load_runtime_preprocess(artifact: Path):
    from groupvit_edge.artifact import read_manifest
    return read_manifest(artifact).preprocess


def _with(candidate, uncertainty):
    """The candidate as if measured on the subset alone: its pooled figures are the subset's estimates."""
    import dataclasses
    model = candidate.model_level
    cosine = dataclasses.replace(model.group_embed_cosine, mean=uncertainty.group_embed_cosine.value)
    model = dataclasses.replace(model, group_agreement=uncertainty.group_agreement.value,
                                group_agreement_confident=uncertainty.group_agreement_confident.value,
                                group_embed_cosine=cosine)
    cls = dataclasses.replace(candidate.class_level, miou_vs_reference=uncertainty.miou_vs_reference.value)
    return dataclasses.replace(candidate, model_level=model, class_level=cls, uncertainty=uncertainty)


if __name__ == "__main__":
    main()
