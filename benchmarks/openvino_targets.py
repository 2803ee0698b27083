"""OpenVINO targets against PyTorch eager and ONNX Runtime: image-graph latency, drift, throughput, cached start.

    python benchmarks/openvino_targets.py [--calib-count 128] [--runs 20] [--threads 2] [--image-size 448]
                                          [--eval-count 50] [--out DIR [--reuse]]

Exports random:0 as openvino-fp32, openvino-fp16 and openvino-int8 by both routes (QDQ ONNX → IR, NNCF on the
IR) with calibration images from ../shared/data/coco/calib2017, then prints Markdown tables:
- image graph, batch 1, 2 threads: median / p90 ms, measured in interleaved rounds (every runtime once per round)
  so that load from other processes on the machine falls on all rows alike; drift of each row against the fp32
  ONNX graph in ONNX Runtime on the held-out COCO eval images (prototypes:16 vocabulary);
- THROUGHPUT hint with 1 and 2 streams on a stream of windows (async infer requests): windows/s;
- time to first inference in a fresh process, first start (empty model cache) and second start (cache filled).
Targets: OpenVINO INT8 ≤ 50 ms median; fp32 (f32) no slower than ONNX Runtime; second start ≤ 1 s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CALIB = SHARED / "coco" / "calib2017"
EVAL = SHARED / "coco" / "eval2017" / "images"
BPE = SHARED / "clip" / "bpe_simple_vocab_16e6.txt.gz"

SETTLE_SECONDS = 0.1
# Run in a fresh interpreter: what a device pays from `open` to the first encoded window.
FIRST_INFERENCE = """
import json, sys, time
started = time.perf_counter()
import numpy as np
from groupvit_edge import runtimes
runtime = runtimes.open(sys.argv[1], backend="openvino", threads=int(sys.argv[3]), cache_dir=sys.argv[2])
size = runtime.manifest.preprocess
runtime.encode_image(np.zeros((1, 3, size.height, size.width), np.float32))
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def export_targets(loaded, out: Path, args, log) -> tuple[dict[str, Path], dict[str, float]]:
    from groupvit_edge.exporters import export
    common = dict(image_size=args.image_size, tokenizer=BPE, validation_images=sorted(EVAL.glob("*.jpg"))[0],
                  log=log)
    drift_images = sorted(EVAL.glob("*.jpg"))[:4]     # export-time drift; the table's drift uses --eval-count
    artifacts, seconds = {}, {}
    # (artifact, target, options, int8 route)
    plan = [("fp32", "openvino-fp32", {}, None), ("fp16", "openvino-fp16", {}, None),
            ("int8-qdq", "openvino-int8", {"calib_dir": CALIB, "calib_count": args.calib_count}, "qdq"),
            ("int8-nncf-ir", "openvino-int8", {"calib_dir": CALIB, "calib_count": args.calib_count}, "nncf-ir")]
    for name, target, extra, route in plan:
        if args.reuse and (out / name / "manifest.json").is_file():
            artifacts[name], seconds[name] = out / name, float("nan")
            continue
        if route is not None:
            extra = {**extra, "openvino_int8_route": route}
        started = time.perf_counter()
        if target != "openvino-fp32":
            extra = {**extra, "validation_images": _link_dir(out, drift_images)}
        result = export(loaded, out / name, target, **{**common, **extra})
        seconds[name] = time.perf_counter() - started
        artifacts[name] = result.directory
    return artifacts, seconds


def _link_dir(out: Path, images: list[Path]) -> Path:
    directory = out / "export-drift-images"
    directory.mkdir(exist_ok=True)
    for image in images:
        link = directory / image.name
        if not link.exists():
            link.symlink_to(image)
    return directory


def interleaved_latencies(encoders: dict, windows: np.ndarray, warmup: int, runs: int) -> dict[str, list[float]]:
    for encode in encoders.values():
        for index in range(warmup):
            encode(windows[index % len(windows)][None])
    times = {name: [] for name in encoders}
    for index in range(runs):
        window = windows[index % len(windows)][None]
        for name, encode in encoders.items():
            # ONNX Runtime's and PyTorch's thread pools spin for a while after a run; without a pause they take
            # the cores from whichever runtime comes next (measured: +40 ms on OpenVINO fp32 right after ORT).
            time.sleep(SETTLE_SECONDS)
            started = time.perf_counter()
            encode(window)
            times[name].append((time.perf_counter() - started) * 1000)
    return times


def throughput(artifact: Path, streams: int, threads: int, windows: np.ndarray, repeats: int) -> float:
    """Windows/s over a stream of windows fed through async infer requests (the median of `repeats` passes)."""
    from groupvit_edge import runtimes
    runtime = runtimes.open(artifact, backend="openvino", hint="THROUGHPUT", streams=streams, threads=threads,
                            cache_dir="")
    list(runtime.encode_images_async(windows[:4]))
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        count = sum(1 for _ in runtime.encode_images_async(windows))
        rates.append(count / (time.perf_counter() - started))
    requests = runtime.infer_requests
    runtime.close()
    return statistics.median(rates), requests


def first_inference(artifact: Path, cache: Path, threads: int) -> float:
    output = subprocess.run([sys.executable, "-c", FIRST_INFERENCE, str(artifact), str(cache), str(threads)],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])["seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-count", type=int, default=128)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--eval-count", type=int, default=50, help="held-out COCO eval images for drift")
    parser.add_argument("--stream-windows", type=int, default=24, help="windows per throughput pass")
    parser.add_argument("--out", type=Path, help="keep the artifacts here (default: a temporary directory)")
    parser.add_argument("--reuse", action="store_true", help="use the artifacts already in --out")
    args = parser.parse_args()
    from groupvit_edge.hardware import cpu_header
    print(cpu_header(), flush=True)   # figures from different machines are never mixed

    import torch
    from groupvit_edge import runtimes
    from groupvit_edge.errors import UserError
    from groupvit_edge.metrics.drift import measure_drift
    from groupvit_edge.model import load_model
    from groupvit_edge.segmentation.preprocess import load_image, prepare

    torch.set_num_threads(args.threads)
    log_lines = []
    scratch = tempfile.TemporaryDirectory()
    out = args.out or Path(scratch.name)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model("random:0")
    artifacts, export_seconds = export_targets(loaded, out, args, log_lines.append)

    eval_images = sorted(EVAL.glob("*.jpg"))[:args.eval_count]
    size = (args.image_size, args.image_size)
    reference = runtimes.open(loaded, image_size=size, threads=args.threads)
    onnx_fp32 = runtimes.open(artifacts["fp32"], backend="onnxruntime", threads=args.threads)
    ov = dict(backend="openvino", threads=args.threads, cache_dir="")
    rows = {   # label → (runtime, artifact key for the precision/notes)
        "PyTorch eager fp32": reference,
        "ONNX Runtime fp32": onnx_fp32,
        "OpenVINO fp32 IR (f32 hint)": runtimes.open(artifacts["fp32"], **ov),
        "OpenVINO fp16 IR": runtimes.open(artifacts["fp16"], **ov),
        "OpenVINO int8 (a) QDQ ONNX → IR": runtimes.open(artifacts["int8-qdq"], **ov),
        "OpenVINO int8 (b) NNCF on IR": runtimes.open(artifacts["int8-nncf-ir"], **ov),
    }
    # bf16 is offered only where the CPU computes it (AVX-512 BF16 / AMX); elsewhere the runtime refuses it.
    try:
        rows["OpenVINO fp32 IR (bf16, explicit)"] = runtimes.open(artifacts["fp32"], inference_precision="bf16", **ov)
    except UserError as refused:
        print(f"bf16 row skipped: {refused}")
    windows = np.concatenate([prepare(load_image(p), reference.manifest.preprocess).windows
                              for p in eval_images[:8]])
    times = interleaved_latencies({name: runtime.encode_image for name, runtime in rows.items()}, windows,
                                  args.warmup, args.runs)

    drifted = [name for name in rows if name not in ("PyTorch eager fp32", "ONNX Runtime fp32")]
    report = measure_drift(onnx_fp32, [rows[name] for name in drifted], eval_images, labels="prototypes:16",
                           progress=False)
    drift = dict(zip(drifted, report.candidates))

    stream = np.concatenate([prepare(load_image(p), reference.manifest.preprocess).windows
                             for p in eval_images[8:20]])[:args.stream_windows]
    flows = {}
    for name in ("fp32", "int8-qdq", "int8-nncf-ir"):
        for streams in (1, 2):
            flows[(name, streams)] = throughput(artifacts[name], streams, args.threads, stream, repeats=3)

    starts = {}
    for name in ("fp32", "int8-qdq"):
        cache = out / f"model-cache-{name}"
        starts[name] = (first_inference(artifacts[name], cache, args.threads),
                        first_inference(artifacts[name], cache, args.threads),
                        first_inference(artifacts[name], cache, args.threads))

    torch_median = statistics.median(times["PyTorch eager fp32"])
    print(f"\nrandom:0, image graph batch 1 at {args.image_size}², {args.threads} threads, {args.runs} interleaved "
          f"rounds over {len(windows)} real COCO windows; drift vs the fp32 ONNX graph in ONNX Runtime on "
          f"{len(eval_images)} held-out COCO eval images ({report.images.windows} windows, "
          f"prototypes:16); int8 calibrated on {args.calib_count} COCO calib2017 images\n")
    print("| runtime | precision that ran | median ms | p90 ms | speed-up vs PyTorch | confident group agree % "
          "| group agree % (all) | group cos mean / min | mIoU vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, runtime in rows.items():
        median, p90 = statistics.median(times[name]), float(np.percentile(times[name], 90))
        ran = getattr(runtime, "inference_precision", "f32")
        if name in drift:
            model, classes = drift[name].model_level, drift[name].class_level
            figures = (f"{model.group_agreement_confident:.3f} | {model.group_agreement:.2f} | "
                       f"{model.group_embed_cosine.mean:.5f} / {model.group_embed_cosine.min:.5f} | "
                       f"{classes.miou_vs_reference:.2f}")
        else:
            figures = "reference | — | — | —" if name == "ONNX Runtime fp32" else "(≈ reference) | — | — | —"
        print(f"| {name} | {ran} | {median:.1f} | {p90:.1f} | {torch_median / median:.2f}× | {figures} |")

    print(f"\nTHROUGHPUT hint, async infer requests over a stream of {len(stream)} windows, {args.threads} threads\n")
    print("| artifact | 1 stream windows/s (requests) | 2 streams windows/s (requests) |")
    print("|---|---|---|")
    for name in ("fp32", "int8-qdq", "int8-nncf-ir"):
        one, two = flows[(name, 1)], flows[(name, 2)]
        print(f"| {name} | {one[0]:.2f} ({one[1]}) | {two[0]:.2f} ({two[1]}) |")

    print("\nTime to first inference in a fresh process (import + open + compile + one window)\n")
    print("| artifact | first start, empty cache s | second start, cached s | third start s |")
    print("|---|---|---|---|")
    for name, (cold, warm, third) in starts.items():
        print(f"| {name} | {cold:.2f} | {warm:.2f} | {third:.2f} |")

    print("\nexports (s, nan = reused): " + ", ".join(f"{name} {seconds:.0f}"
                                                  for name, seconds in export_seconds.items()))
    for name in ("int8-qdq", "int8-nncf-ir"):
        manifest = json.loads((artifacts[name] / "manifest.json").read_text())
        calibration = manifest["calibration"]
        print(f"{name}: {len(manifest['precision']['quantized_nodes'])} quantized nodes, calibration "
              f"{calibration['count']} images in {calibration['seconds']:.0f} s "
              f"(reused cache: {calibration['reused_cache']}), image IR "
              f"{(artifacts[name] / 'image.bin').stat().st_size / 1e6:.1f} MB")
    scratch.cleanup()


if __name__ == "__main__":
    main()
