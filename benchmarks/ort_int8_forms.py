"""ONNX Runtime INT8 on this CPU: the fp32 graph, dynamic INT8, and the calibrated QDQ graph run with S8 and with U8
activations, with and without attention's products in INT8 — latency in interleaved rounds, so drift in the
machine's speed hits every configuration alike.

    python benchmarks/ort_int8_forms.py [--calib-count 64] [--rounds 20] [--size 448]

random:0, image graph, batch 1, 2 threads, real COCO windows. Drift of each graph is int8_routes.py's job; this
script answers only "how fast, relative to fp32, on this machine".
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size", type=int, default=448)
    args = parser.parse_args()
    from groupvit_edge.hardware import cpu_header
    print(cpu_header(), flush=True)
    with tempfile.TemporaryDirectory(prefix="ort-int8-forms-") as scratch:   # four artifacts, removed at the end
        measure(args, Path(scratch))


def measure(args, scratch: Path) -> None:
    from groupvit_edge import runtimes
    from groupvit_edge.exporters import export
    from groupvit_edge.model import load_model
    from groupvit_edge.segmentation.preprocess import load_image, prepare
    loaded = load_model("random:0")
    common = dict(image_size=args.size, cache_dir=scratch / "cache", log=lambda message: None)
    calibrated = dict(calib_dir=SHARED / "coco" / "calib2017", calib_count=args.calib_count, **common)
    export(loaded, scratch / "fp32", "onnx", **common)
    export(loaded, scratch / "dynamic", "onnx-int8-dynamic", **common)
    export(loaded, scratch / "int8", "onnx-int8", **calibrated)
    export(loaded, scratch / "int8-attn", "onnx-int8", int8_attention=True, **calibrated)
    configurations = {
        "fp32": runtimes.open(scratch / "fp32", "onnxruntime", threads=2),
        "onnx-int8-dynamic": runtimes.open(scratch / "dynamic", "onnxruntime", threads=2),
        "onnx-int8, S8 activations": runtimes.open(scratch / "int8", "onnxruntime", threads=2, int8_activations="s8"),
        "onnx-int8, U8 activations": runtimes.open(scratch / "int8", "onnxruntime", threads=2, int8_activations="u8"),
        "onnx-int8 --int8-attention, S8": runtimes.open(scratch / "int8-attn", "onnxruntime", threads=2,
                                                        int8_activations="s8"),
        "onnx-int8 --int8-attention, U8": runtimes.open(scratch / "int8-attn", "onnxruntime", threads=2,
                                                        int8_activations="u8"),
    }
    photos = sorted((SHARED / "coco" / "eval2017" / "images").glob("*.jpg"))[:4]
    preprocess = configurations["fp32"].manifest.preprocess
    windows = np.concatenate([prepare(load_image(path), preprocess).windows for path in photos])
    for runtime in configurations.values():
        runtime.encode_image(windows[:1])                      # warm up
    timings = {name: [] for name in configurations}
    for round_ in range(args.rounds):
        for name, runtime in configurations.items():
            window = windows[round_ % len(windows)][None]
            started = time.perf_counter()
            runtime.encode_image(window)
            timings[name].append((time.perf_counter() - started) * 1000)
    fp32 = float(np.median(timings["fp32"]))
    print(f"\nrandom:0, {args.size}², batch 1, 2 threads, {args.rounds} interleaved rounds over {len(windows)} real "
          f"COCO windows; INT8 calibrated on {args.calib_count} COCO images (NNCF, 7-bit weights)\n")
    print("| configuration | ran as | median ms | p10 / p90 ms | vs fp32 |")
    print("|---|---|---|---|---|")
    for name, values in timings.items():
        p10, median, p90 = np.percentile(values, [10, 50, 90])
        print(f"| {name} | {configurations[name].description} | {median:.1f} | {p10:.1f} / {p90:.1f} | "
              f"{fp32 / median:.2f}× |")


if __name__ == "__main__":
    main()
