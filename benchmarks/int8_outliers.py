"""What onnx-int8 export chooses for a model with trained-like activation outliers, per outlier strength.

    python benchmarks/int8_outliers.py [--strengths 1,40,300] [--seeds 0] [--calib-count 32] [--out DIR]

Each strength S is a function-preserving copy of random:0 (tests/outliers.py: in every image-encoder layer, 4
LayerNorm channels ×S and their readers' input columns ÷S; S = 1 is random:0 itself). Each is exported with the
default settings (calibrated on --calib-count COCO calibration photos, drift measured on the 50 COCO eval photos),
and the table gives what the export chose (SmoothQuant strength, outlier readers split or kept in float), its
drift with the 95% interval and worst photo, and the image graph's latency against the fp32 graph, one window at
448² in ONNX Runtime on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
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
    parser.add_argument("--out", help="keep the artifacts here (default: a temporary directory)")
    args = parser.parse_args()
    from groupvit_edge.hardware import cpu_header
    print(cpu_header(), flush=True)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="int8-outliers-"))
    rows = []
    fp32_ms = None
    for seed in [int(s) for s in args.seeds.split(",")]:
        for strength in [float(s) for s in args.strengths.split(",")]:
            row, fp32_ms = measure(out, strength, seed, args.calib_count, fp32_ms)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| S | seed | outlier readers | chose | confident agreement % (95%, worst) | group cosine (95%, worst) | "
          "verdict (default budget) | image graph ms (fp32 " + f"{fp32_ms:.0f})" + " |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strength']:g} | {r['seed']} | {r['outlier_readers']} | {r['chose']} | {r['confident']} | "
              f"{r['cosine']} | {r['verdict']} | {r['ms']:.0f} |")


def measure(out: Path, strength: float, seed: int, calib_count: int, fp32_ms):
    from outliers import save_outlier_checkpoint

    from groupvit_edge.exporters import export
    from groupvit_edge.metrics.photo_drift import DriftUncertainty
    from groupvit_edge.metrics.uncertainty import format_estimate
    checkpoint = "random:0" if strength == 1 else str(save_outlier_checkpoint(out / "checkpoints", strength, seed))
    name = f"s{strength:g}-seed{seed}"
    common = dict(validation_images=[str(SHARED / "coco" / "eval2017" / "images")], force=True, log=lambda m: None)
    if fp32_ms is None:
        export(checkpoint, out / "fp32", "onnx", **common)
        fp32_ms = latency(out / "fp32")
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
    return {"strength": strength, "seed": seed, "outlier_readers": len(precision.get("outlier_readers", [])),
            "chose": chose, "confident": format_estimate(uncertainty.group_agreement_confident, 3),
            "cosine": format_estimate(uncertainty.group_embed_cosine, 5),
            "verdict": check["verdict"]["state"], "ms": latency(out / name)}, fp32_ms


def latency(artifact: Path) -> float:
    from groupvit_edge import runtimes
    from groupvit_edge.metrics.bench import median_ms
    with runtimes.open(artifact, backend="onnxruntime") as runtime:
        pixels = np.zeros((1, 3, 448, 448), dtype=np.float32)
        for _ in range(2):
            runtime.encode_image(pixels)
        return median_ms(lambda: runtime.encode_image(pixels), 10)


if __name__ == "__main__":
    main()
