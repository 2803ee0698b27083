"""TensorRT on this GPU, once: build trt-fp16 and trt-int8 from a fresh random:0 export, run them, and compare them
with the ONNX Runtime fp32 artifact.

    python benchmarks/tensorrt_device_check.py [--image-size 224] [--runs 50] [--out DIR] [--gpu 0]

What a machine without TensorRT cannot check (the conformance tests check the API calls against the real bindings
of 10.3, the newest 10.x and 11.x; this runs them): parsing and building the engines the installed TensorRT's plan
picks, the timing cache, the runtime's buffers, stream and batch handling on the device, and which precision each
layer really runs in (engine inspector; the engines are built with DETAILED profiling verbosity).

Prints one Markdown table: engine build time, image-graph latency (median, one window per call), drift against
the fp32 artifact in ONNX Runtime on the shipped sample photos, and the engine's layers by precision. Exits 0 when
everything ran and stayed within the bounds below, 1 on a failed bound, 2 when TensorRT or a GPU is missing; any
other error is a traceback (non-zero). Unattended well under 10 minutes on one GPU at the default 224² (both
exports share the timing cache; --image-size 448 for deployment latencies takes longer to build).

Bounds (the same as the GPU-only tests): trt-fp16 group-embedding cosine min ≥ 0.999 (fp16 rounding of
L2-normalised embeddings); trt-int8 cosine mean ≥ 0.98 (the QDQ graph's own bar in ONNX Runtime); trt-int8 not
more than 10% slower than trt-fp16 (DESIGN.md: never slower by construction, 10% for timing noise). The
LayerNorm/Softmax column is information, not a bound: TensorRT fuses whole transformer blocks into one layer
("ForeignNode[…]") whose reported type is its output's, so a fused LayerNorm can read FP16 while computing FP32.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FP16_MIN_COSINE = 0.999
INT8_MEAN_COSINE = 0.98
INT8_SLOWER_LIMIT = 1.10
TARGETS = ("trt-fp16", "trt-int8")


def layer_summary(layers) -> tuple[str, str]:
    """("INT8 ×n, FP16 ×m, FP32 ×k", "LayerNorm/Softmax in FP32: a/b") of an engine's inspected layers."""
    from groupvit_edge.runtimes.tensorrt import precision_counts
    counts = precision_counts(layers)
    by_precision = ", ".join(f"{name} ×{count}" for name, count in sorted(counts.items(), key=lambda kv: -kv[1]))
    policy = [layer for layer in layers if "LayerNormalization" in layer.name or "Softmax" in layer.name]
    in_fp32 = sum(layer.precision == "FP32" for layer in policy)
    return by_precision or "—", f"{in_fp32}/{len(policy)}"


def check_target(target: str, artifact: Path, reference, photos, windows, args) -> dict:
    from groupvit_edge.artifact import read_manifest
    from groupvit_edge.metrics.bench import median_ms
    from groupvit_edge.metrics.drift import validate_candidate
    from groupvit_edge.runtimes.tensorrt import TensorRTRuntime
    manifest = read_manifest(artifact)
    engines = manifest.data["engines"]
    with TensorRTRuntime(manifest, device=args.gpu) as runtime:
        milliseconds = median_ms(lambda: runtime.encode_image(windows[:1]), args.runs, warmup=args.warmup)
        drift = validate_candidate(reference, runtime, photos, labels="prototypes:16")
        layer_counts, policy_fp32 = layer_summary(runtime.layer_precisions("image"))
    cosine = drift.model_level.group_embed_cosine
    failures = []
    if target == "trt-fp16" and cosine.min < FP16_MIN_COSINE:
        failures.append(f"group cosine min {cosine.min:.5f} < {FP16_MIN_COSINE}")
    if target == "trt-int8" and cosine.mean < INT8_MEAN_COSINE:
        failures.append(f"group cosine mean {cosine.mean:.5f} < {INT8_MEAN_COSINE}")
    confident = drift.model_level.group_agreement_confident
    return {"target": target, "plan": manifest.data["tensorrt"]["plan"], "failures": failures,
            "build_s": engines["image"].get("build_seconds", 0) + engines["text"].get("build_seconds", 0),
            "ms": milliseconds, "cosine": cosine, "confident": confident,
            "miou": drift.class_level.miou_vs_reference, "layers": layer_counts, "policy_fp32": policy_fp32}


def table(rows: list[dict]) -> str:
    lines = ["| target | plan | engine build s (image + text) | image ms / window | group cos mean / min vs "
             "ORT fp32 | confident group agree % | mIoU vs fp32 | image-engine layers by precision | "
             "LayerNorm/Softmax in FP32 | result |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        plan = row["plan"]
        confident = "—" if row["confident"] is None else f"{row['confident']:.3f}"
        lines.append(f"| {row['target']} | {plan['typing']}ly typed from {plan['source']}"
                     f"{' (' + ', '.join(plan['builder_flags']) + ')' if plan['builder_flags'] else ''} | "
                     f"{row['build_s']:.0f} | {row['ms']:.2f} | {row['cosine'].mean:.5f} / {row['cosine'].min:.5f} | "
                     f"{confident} | {row['miou']:.2f} | {row['layers']} | {row['policy_fp32']} | "
                     f"{'; '.join(row['failures']) or 'ok'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--calib-count", type=int, default=8, help="trt-int8 calibration photos (minmax)")
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--out", type=Path, help="keep the artifacts here (default: a temporary directory)")
    args = parser.parse_args()
    from groupvit_edge.hardware import cpu_header
    from groupvit_edge.assets import sample_photos
    from groupvit_edge.errors import UserError
    from groupvit_edge.exporters import export
    from groupvit_edge.model import load_model
    from groupvit_edge.runtimes.onnxruntime import OnnxRuntime
    from groupvit_edge.artifact import read_manifest
    from groupvit_edge.runtimes.tensorrt import device_properties, import_tensorrt
    from groupvit_edge.segmentation.preprocess import load_image, prepare

    started = time.perf_counter()
    try:
        trt = import_tensorrt()
        device = device_properties(args.gpu)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(cpu_header(), flush=True)   # figures from different machines are never mixed
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        common = dict(image_size=args.image_size, cache_dir=root / "cache", log=lambda message: None, force=True)
        loaded = load_model("random:0")
        export(loaded, root / "fp32", "onnx", **common)
        for target in TARGETS:
            extra = dict(calib_count=args.calib_count, calib_method="minmax") if target == "trt-int8" else {}
            print(f"exporting {target} …", file=sys.stderr)
            export(loaded, root / target, target, **common, **extra)
        reference = OnnxRuntime(read_manifest(root / "fp32"))
        photos = [str(path) for path in sample_photos()]
        windows = np.concatenate([prepare(load_image(path), reference.manifest.preprocess).windows
                                  for path in photos[:2]])
        rows = [check_target(target, root / target, reference, photos, windows, args) for target in TARGETS]
    fp16, int8 = rows
    if int8["ms"] > INT8_SLOWER_LIMIT * fp16["ms"]:
        int8["failures"].append(f"{int8['ms']:.2f} ms per window is more than {INT8_SLOWER_LIMIT:.2f}× trt-fp16's")
    print(f"\nTensorRT {trt.__version__} on {device.gpu} (sm {device.compute_capability}), random:0 at "
          f"{args.image_size}², latency over {args.runs} calls of one window, drift on {len(photos)} sample photos "
          f"({time.perf_counter() - started:.0f} s in all)\n")
    print(table(rows))
    failed = [f"{row['target']}: {failure}" for row in rows for failure in row["failures"]]
    if failed:
        print("\nFAILED: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
