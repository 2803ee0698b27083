"""Why INT8 weights are 7-bit by default: the same QDQ graph in ONNX Runtime's integer kernels vs computed exactly.

    python benchmarks/int8_saturation.py [--calib-count 128] [--eval-count 8] [--cache DIR]

Exports random:0 as onnx-int8 (NNCF, COCO calib2017) with 8-bit and with 7-bit weights, then runs each image
graph on real COCO eval windows in ONNX Runtime twice: with its default graph optimisations (Q/DQ fused into
integer kernels — what a deployment runs) and with optimisations off (Q/DQ executed as ops, products in float —
the graph's own accuracy). Prints group-embedding cosine against the fp32 graph and median latency, plus the
CPU's INT8 dot-product extensions. On a CPU without VNNI the integer kernels multiply u8×s8 pairs into int16
with saturation (vpmaddubsw), which full-range weights overflow: the 8-bit rows then differ between the two
columns, the 7-bit rows do not.
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
BPE = SHARED / "clip" / "bpe_simple_vocab_16e6.txt.gz"
EVAL = SHARED / "coco" / "eval2017" / "images"
INT8_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")


def cpu_flags() -> str:
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    return ", ".join(f"{flag} {'yes' if flag in words else 'no'}" for flag in INT8_FLAGS)


def session(path: Path, optimized: bool, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def group_embeds(graph, windows: np.ndarray) -> tuple[np.ndarray, float]:
    outputs, times = [], []
    for window in windows:
        started = time.perf_counter()
        outputs.append(graph.run(["group_embeds"], {"pixels": window[None]})[0][0])
        times.append((time.perf_counter() - started) * 1000)
    return np.stack(outputs), statistics.median(times)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-count", type=int, default=128)
    parser.add_argument("--eval-count", type=int, default=8, help="COCO eval images (their windows are used)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="calibration cache directory (default: the toolkit's)")
    args = parser.parse_args()
    from groupvit_edge.hardware import cpu_header
    print(cpu_header(), flush=True)   # figures from different machines are never mixed

    from groupvit_edge.exporters import export
    from groupvit_edge.model import load_model
    from groupvit_edge.segmentation.preprocess import load_image, prepare

    images = sorted(EVAL.glob("*.jpg"))[:args.eval_count]
    loaded = load_model("random:0")
    scratch = Path(tempfile.mkdtemp(prefix="int8-saturation-"))
    artifacts = {}
    for bits in (8, 7):
        artifacts[bits] = export(loaded, scratch / f"w{bits}", "onnx-int8", image_size=448, tokenizer=BPE,
                                 calib_dir=SHARED / "coco" / "calib2017", calib_count=args.calib_count,
                                 int8_weight_bits=bits, validation_images=images[0], cache_dir=args.cache,
                                 log=lambda message: None).directory
    fp32 = export(loaded, scratch / "fp32", "onnx", image_size=448, tokenizer=BPE, validation_images=images[0],
                  log=lambda message: None).directory
    from groupvit_edge.artifact import read_manifest
    preprocess = read_manifest(fp32).preprocess
    windows = np.concatenate([prepare(load_image(p), preprocess).windows for p in images])
    reference, fp32_ms = group_embeds(session(fp32 / "image.onnx", True, args.threads), windows)

    print(f"\nCPU: {cpu_flags()}")
    print(f"random:0, 448², {len(windows)} windows of {len(images)} COCO eval images, {args.threads} threads; "
          f"NNCF calibration on {args.calib_count} COCO images; fp32 graph {fp32_ms:.1f} ms median\n")
    print("| weights | ORT integer kernels: group cos mean / min | ms | exact (optimisations off): cos mean / min "
          "| ms |")
    print("|---|---|---|---|---|")
    for bits, directory in artifacts.items():
        graph = directory / "image.int8.onnx"
        cells = []
        for optimized in (True, False):
            embeds, ms = group_embeds(session(graph, optimized, args.threads), windows)
            similarity = cosine(embeds, reference)
            cells.append(f"{similarity.mean():.4f} / {similarity.min():.4f} | {ms:.1f}")
        print(f"| {bits}-bit | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
