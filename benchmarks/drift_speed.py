"""Drift of the fp32 ONNX artifact against the PyTorch reference on the 50 COCO eval images at 448².

    python benchmarks/drift_speed.py [--labels prototypes:16] [--limit 50]

Target: the whole run under 3 minutes on 2 cores, post-processing + metrics ≤ 10% of it.
Exports random:0 first (not counted), then times `measure_drift` and prints its table and timing breakdown.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", default="prototypes:16")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--report", help="also write the report (PNGs) here")
    args = parser.parse_args()
    from groupvit_edge.hardware import cpu_header
    print(cpu_header(), flush=True)   # figures from different machines are never mixed

    from groupvit_edge.exporters import export
    from groupvit_edge.metrics.drift import measure_drift
    from groupvit_edge.metrics.render import render_drift_report
    from groupvit_edge.model import load_model

    images = sorted((SHARED / "coco" / "eval2017" / "images").glob("*.jpg"))[: args.limit]
    loaded = load_model("random:0")
    with tempfile.TemporaryDirectory() as scratch:
        artifact = Path(scratch) / "fp32"
        export(loaded, artifact, "onnx", tokenizer=SHARED / "clip" / "bpe_simple_vocab_16e6.txt.gz",
                    validation_images=images[0], log=lambda m: None)
        started = time.perf_counter()
        report = measure_drift(loaded, [artifact], images, labels=args.labels)
        if args.report:
            render_drift_report(report, args.report)
        wall = time.perf_counter() - started
    timing = report.timing
    print(report.to_markdown())
    print(f"\n| drift of fp32 ONNX vs PyTorch, {len(images)} images, {report.images.windows} windows "
          f"| seconds | share |\n|---|---|---|")
    candidate_encode = report.candidates[0].encode_seconds
    for name, seconds in (("reference encoding (PyTorch)", timing.reference_encode_s),
                          ("candidate encoding (ONNX Runtime)", candidate_encode),
                          ("vocabulary", timing.vocabulary_s),
                          ("post-processing + metrics", timing.postprocess_and_metrics_s),
                          ("total", wall)):
        print(f"| {name} | {seconds:.1f} | {100 * seconds / wall:.1f}% |")


if __name__ == "__main__":
    main()
