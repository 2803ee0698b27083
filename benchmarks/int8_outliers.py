"""What onnx-int8 export chooses for a model with trained-like activation outliers, per outlier strength.

    python benchmarks/int8_outliers.py [--strengths 1,40,300] [--seeds 0] [--calib-count 32] [--out DIR]

Each strength S is a function-preserving copy of random:0 (tests/outliers.py: in every image-encoder layer, 4
LayerNorm channels ×S and their readers' input columns ÷S; S = 1 is random:0 itself). Each is exported with the
default settings (calibrated on --calib-count COCO calibration photos, drift measured on the 50 COCO eval photos),
and the table gives what the export chose (SmoothQuant strength, outlier readers split or kept in float), its
drift with the 95% interval and worst photo, and the image graph's latency against the fp32 graph, one window at
448² in ONNX Runtime on this machine (every artifact measured after all exports, interleaved; median and p10–p90).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GROUPVIT_EDGE_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO / "tests"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strengths", default="1,40,300")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--calib-count", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds of 10 runs each")
    parser.add_argument("--out", help="keep the artifacts here (default: a temporary directory)")
    args = parser.parse_args()
    from groupvit_edge.hardware import cpu_header
    print(cpu_header(), flush=True)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="int8-outliers-"))
    export_fp32(out)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for strength in [float(s) for s in args.strengths.split(",")]:
            if strength == 1 and any(r["strength"] == 1 for r in rows):
                continue                 # S = 1 is random:0 whatever the seed
            rows.append(measure(out, strength, seed, args.calib_count))
            print(json.dumps(rows[-1]), flush=True)
    times = latencies([out / "fp32"] + [out / r["name"] for r in rows], args.rounds)
    fp32 = times.pop(0)
    print()
    print("| S | seed | outlier readers | chose | confident agreement % (95%, worst) | group cosine (95%, worst) | "
          f"verdict (default budget) | image graph ms, median (p10–p90); fp32 {fp32[0]:.0f} ({fp32[1]:.0f}–"
          f"{fp32[2]:.0f}) |")
    print("|---|---|---|---|---|---|---|---|")
    for r, (median, low, high) in zip(rows, times):
        print(f"| {r['strength']:g} | {r['seed']} | {r['outlier_readers']} | {r['chose']} | {r['confident']} | "
              f"{r['cosine']} | {r['verdict']} | {median:.0f} ({low:.0f}–{high:.0f}) |")


def export_fp32(out: Path) -> None:
    from groupvit_edge.exporters import export
    export("random:0", out / "fp32", "onnx", validation_images=[str(SHARED / "coco" / "eval2017" / "images")],
           force=True, log=lambda m: None)


def measure(out: Path, strength: float, seed: int, calib_count: int) -> dict:
    from outliers import save_outlier_checkpoint

    from groupvit_edge.exporters import export
    from groupvit_edge.metrics.photo_drift import DriftUncertainty
    from groupvit_edge.metrics.uncertainty import format_estimate
    checkpoint = "random:0" if strength == 1 else str(save_outlier_checkpoint(out / "checkpoints", strength, seed))
    name = f"s{strength:g}-seed{seed}"
    common = dict(validation_images=[str(SHARED / "coco" / "eval2017" / "images")], force=True, log=lambda m: None)
    export(checkpoint, out / name, "onnx-int8", calib_dir=str(SHARED / "coco" / "calib2017"),
           calib_count=calib_count, **common)
    manifest = json.loads((out / name / "manifest.json").read_text())
    check = manifest["validation"]["drift_vs_fp32"]
    uncertainty = DriftUncertainty.from_dict(check["uncertainty"])
    precision = manifest["precision"]
    remedy = manifest["validation"].get("outlier_remedy")
    alpha = precision["method"].get("smooth_quant_alpha")
    chose = f"α={alpha}" + "".join(f", {len(precision[key])} readers {what}" for key, what in (
        ("split_readers", "split (outlier channels float)"), ("float_readers", "float")) if precision.get(key))
    if remedy is None:
        chose += " (default)"
    return {"name": name, "strength": strength, "seed": seed,
            "outlier_readers": len(precision.get("outlier_readers", [])),
            "chose": chose, "confident": format_estimate(uncertainty.group_agreement_confident, 3),
            "cosine": format_estimate(uncertainty.group_embed_cosine, 5),
            "verdict": check["verdict"]["state"]}


def latencies(artifacts: list[Path], rounds: int) -> list[tuple[float, float, float]]:
    """(median, p10, p90) ms of one 448² window through each artifact's image graph in ONNX Runtime, measured after
    every export and interleaved in rounds, so a change in the machine's load hits every artifact alike."""
    from groupvit_edge import runtimes
    pixels = np.zeros((1, 3, 448, 448), dtype=np.float32)
    opened = [runtimes.open(artifact, backend="onnxruntime") for artifact in artifacts]
    times: list[list[float]] = [[] for _ in opened]
    for runtime in opened:
        for _ in range(3):
            runtime.encode_image(pixels)
    for _ in range(rounds):
        for runtime, measured in zip(opened, times):
            for _ in range(10):
                started = time.perf_counter()
                runtime.encode_image(pixels)
                measured.append((time.perf_counter() - started) * 1000)
    for runtime in opened:
        runtime.close()
    return [(float(np.median(t)), float(np.percentile(t, 10)), float(np.percentile(t, 90))) for t in times]


if __name__ == "__main__":
    main()
