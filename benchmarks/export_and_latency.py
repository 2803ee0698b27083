"""Export time at 448² and image-graph latency: ONNX Runtime fp32 vs PyTorch eager (batch 1, real COCO windows).

    python benchmarks/export_and_latency.py [--runs 20] [--threads 2] [--image-size 448]

Prints a Markdown table. Targets: export ≤ 60 s; ORT fp32 within 1.3× of PyTorch eager or faster.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def latencies(encode, windows, warmup: int, runs: int) -> list[float]:
    for i in range(warmup):
        encode(windows[i % len(windows)][None])
    times = []
    for i in range(runs):
        started = time.perf_counter()
        encode(windows[i % len(windows)][None])
        times.append((time.perf_counter() - started) * 1000)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=448)
    args = parser.parse_args()
    from groupvit_edge.hardware import cpu_header
    print(cpu_header(), flush=True)   # figures from different machines are never mixed

    import torch
    from groupvit_edge import runtimes
    from groupvit_edge.exporters import export
    from groupvit_edge.model import load_model
    from groupvit_edge.segmentation.preprocess import load_image, prepare

    torch.set_num_threads(args.threads)
    images = sorted((SHARED / "coco" / "eval2017" / "images").glob("*.jpg"))[:8]
    loaded = load_model("random:0")
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        export(loaded, Path(scratch) / "fp32", "onnx", image_size=args.image_size,
                    tokenizer=SHARED / "clip" / "bpe_simple_vocab_16e6.txt.gz", validation_images=images[0],
                    log=lambda m: None)
        export_seconds = time.perf_counter() - started

        reference = runtimes.open(loaded, image_size=(args.image_size, args.image_size))
        onnx_runtime = runtimes.open(Path(scratch) / "fp32", threads=args.threads)
        windows = np.concatenate([prepare(load_image(p), reference.manifest.preprocess).windows for p in images])
        rows = []
        for runtime in (reference, onnx_runtime):
            times = latencies(runtime.encode_image, windows, args.warmup, args.runs)
            rows.append((runtime.description, statistics.median(times), np.percentile(times, 90)))

    torch_median = rows[0][1]
    print(f"\nexport (random:0 → ONNX, {args.image_size}², trace + onnxsim + ORT validation): "
          f"{export_seconds:.1f} s\n")
    print(f"image graph, batch 1, {args.image_size}², {args.threads} threads, {args.runs} runs over "
          f"{len(windows)} real COCO windows\n")
    print("| runtime | median ms | p90 ms | vs PyTorch eager |")
    print("|---|---|---|---|")
    for description, median, p90 in rows:
        print(f"| {description} | {median:.1f} | {p90:.1f} | {median / torch_median:.2f}× |")


if __name__ == "__main__":
    main()
