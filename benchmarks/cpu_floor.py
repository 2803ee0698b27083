"""How close each CPU route comes to this CPU's floor, and where its time goes.

    python benchmarks/cpu_floor.py [--calib-count 64] [--eval-count 16] [--rounds 12] [--threads 2] [--out DIR]

random:0 at 448², batch 1. Prints, under the CPU model and flags:
1. every route in interleaved rounds, one backend's routes at a time (median ms, speed-up over ONNX Runtime fp32)
   with its drift against the fp32
   graph in ONNX Runtime on `--eval-count` held-out COCO photos: ONNX Runtime fp32, the calibrated INT8 graph in
   its U8 form with attention products float and INT8, dynamic INT8; OpenVINO fp32 IR in f32 and bf16, the
   default `openvino-int8` IR with its float remainder in f32 and in bf16;
2. the roofline: a 2048² matrix product in fp32, bf16 and INT8 in OpenVINO (GOP/s), and the floor each gives the
   image graph (its multiply-accumulates counted from the fp32 ONNX graph);
3. the per-node breakdown (OpenVINO's performance counters, ONNX Runtime's profiler) of the fastest OpenVINO INT8
   configuration and of ONNX Runtime's INT8 graph: milliseconds by node type and kernel;
4. the targets: the fastest OpenVINO INT8 within the default budget ≤ 20 ms per window (an AMX CPU's target:
   other CPUs print their figure and say so), ONNX Runtime INT8 ≥ 1.5× ONNX Runtime fp32.
Artifacts go to --out (kept, reused on the next run) or a temporary directory.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CALIB = SHARED / "coco" / "calib2017"
EVAL = SHARED / "coco" / "eval2017" / "images"
SIZE = 448
ROOFLINE_N = 2048
OPENVINO_INT8_TARGET_MS = 20.0
ORT_INT8_TARGET_SPEEDUP = 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--eval-count", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from groupvit_edge.hardware import cpu_header
    print(cpu_header(), flush=True)
    if args.out:
        run(args, args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="cpu-floor-") as scratch:
            run(args, Path(scratch))


def run(args, out: Path) -> None:
    artifacts = export_all(args, out)
    rows = measure(args, artifacts)
    print_routes(rows, args)
    roofline(args.threads, graph_gmacs(artifacts["onnx"] / "image.onnx"))
    openvino_int8 = [row for row in rows if row.name.startswith("openvino-int8")]
    best = min(openvino_int8, key=lambda row: row.median_ms)
    breakdown_openvino(artifacts["openvino-int8"], best.options, args.threads)
    breakdown_onnxruntime(artifacts["onnx-int8"] / "image.int8.onnx", args.threads, out)
    verdict(rows)


# ------------------------------------------------------------------------------------------------ artifacts

def export_all(args, out: Path) -> dict[str, Path]:
    from groupvit_edge.exporters import export
    calibrated = {"calib_dir": CALIB, "calib_count": args.calib_count, "cache_dir": out / "cache"}
    plan = {"onnx": ("onnx", {}), "onnx-int8": ("onnx-int8", calibrated),
            "onnx-int8-attention": ("onnx-int8", {**calibrated, "int8_attention": True}),
            "onnx-int8-dynamic": ("onnx-int8-dynamic", {}), "openvino-fp32": ("openvino-fp32", {}),
            "openvino-int8": ("openvino-int8", calibrated)}
    artifacts = {}
    for name, (target, options) in plan.items():
        artifacts[name] = out / name
        if (artifacts[name] / "manifest.json").is_file():
            continue
        started = time.perf_counter()
        export("random:0", artifacts[name], target, image_size=SIZE, log=lambda message: None, **options)
        print(f"exported {name} in {time.perf_counter() - started:.0f} s", flush=True)
    return artifacts


def graph_gmacs(path: Path) -> float:
    """Multiply-accumulates of the image graph's MatMul, Gemm and Conv nodes, in billions, from inferred shapes."""
    import onnx
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {value.name: [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
              for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    macs = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.output[0] in shapes and node.input[0] in shapes:
            inner = shapes[node.input[0]][-1]
            macs += int(np.prod(shapes[node.output[0]])) * inner
        elif node.op_type == "Conv" and node.input[1] in shapes:
            kernel = shapes[node.input[1]]
            macs += int(np.prod(shapes[node.output[0]])) * int(np.prod(kernel[1:]))
    return macs / 1e9


# ------------------------------------------------------------------------------------------------ roofline

def roofline(threads: int, gmacs: float) -> None:
    import openvino as ov
    from openvino import opset13 as ops
    rng = np.random.default_rng(0)

    def product(int8: bool):
        parameter = activations = ops.parameter([ROOFLINE_N, ROOFLINE_N], np.float32, name="a")
        weights = ops.constant(rng.standard_normal((ROOFLINE_N, ROOFLINE_N)).astype(np.float32) * 0.02)
        if int8:
            low, high = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
            activations = ops.fake_quantize(activations, low, high, low, high, 256)
            low, high = ops.constant(np.float32(-0.1)), ops.constant(np.float32(0.1))
            weights = ops.fake_quantize(weights, low, high, low, high, 255)
        return ov.Model([ops.matmul(activations, weights, False, True)], [parameter])

    core = ov.Core()
    offered = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    print(f"\nroofline: {ROOFLINE_N}² matrix product in OpenVINO, {threads} threads; the image graph is "
          f"{2 * gmacs:.1f} GOP ({gmacs:.1f} G multiply-accumulates)\n")
    print("| arithmetic | GOP/s | image-graph floor ms |")
    print("|---|---|---|")
    for label, int8, precision in (("fp32", False, "f32"), ("bf16", False, "bf16"), ("int8", True, "f32")):
        if precision == "bf16" and "BF16" not in offered:
            print("| bf16 | — (this CPU has no bf16) | — |")
            continue
        compiled = core.compile_model(product(int8), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                              "INFERENCE_NUM_THREADS": threads})
        request = compiled.create_infer_request()
        matrix = rng.standard_normal((ROOFLINE_N, ROOFLINE_N)).astype(np.float32)
        seconds = _median_seconds(lambda: request.infer({"a": matrix}), runs=10)
        rate = 2 * ROOFLINE_N ** 3 / seconds / 1e9
        print(f"| {label} | {rate:.0f} | {2 * gmacs / rate * 1000:.1f} |")


# ------------------------------------------------------------------------------------------------ routes

class Row:
    def __init__(self, name: str, artifact: Path, backend: str, options: dict):
        self.name, self.artifact, self.backend, self.options = name, artifact, backend, options
        self.runtime = None
        self.timings: list[float] = []
        self.drift = None

    @property
    def median_ms(self) -> float:
        return float(np.median(self.timings))


def routes(artifacts: dict[str, Path]) -> list[Row]:
    found = [Row("onnxruntime fp32", artifacts["onnx"], "onnxruntime", {}),
             Row("onnxruntime onnx-int8 (U8)", artifacts["onnx-int8"], "onnxruntime", {"int8_activations": "u8"}),
             Row("onnxruntime onnx-int8 --int8-attention (U8)", artifacts["onnx-int8-attention"], "onnxruntime",
                 {"int8_activations": "u8"}),
             Row("onnxruntime onnx-int8-dynamic", artifacts["onnx-int8-dynamic"], "onnxruntime", {}),
             Row("openvino-fp32, f32", artifacts["openvino-fp32"], "openvino", {"inference_precision": "f32"})]
    import openvino as ov
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if bf16:
        found.append(Row("openvino-fp32, bf16", artifacts["openvino-fp32"], "openvino",
                         {"inference_precision": "bf16"}))
    found.append(Row("openvino-int8, f32 remainder", artifacts["openvino-int8"], "openvino",
                     {"inference_precision": "f32"}))
    if bf16:
        found.append(Row("openvino-int8, bf16 remainder", artifacts["openvino-int8"], "openvino",
                         {"inference_precision": "bf16"}))
    return found


def measure(args, artifacts: dict[str, Path]) -> list[Row]:
    from groupvit_edge import runtimes
    from groupvit_edge.metrics.drift import validate_candidate
    from groupvit_edge.segmentation.preprocess import load_image, prepare
    rows = routes(artifacts)
    photos = sorted(EVAL.glob("*.jpg"))[:args.eval_count]
    preprocess = runtimes.open(artifacts["onnx"], "onnxruntime").manifest.preprocess
    windows = np.concatenate([prepare(load_image(p), preprocess).windows for p in photos[:4]])
    # One backend's rows at a time, ONNX Runtime's before OpenVINO starts its threads: interleaving rounds across
    # backends in one process let each one's idle worker threads slow the other's calls.
    for backend in ("onnxruntime", "openvino"):
        group = [row for row in rows if row.backend == backend]
        for row in group:
            options = {**row.options, "threads": args.threads, **({"cache_dir": ""} if backend == "openvino" else {})}
            row.runtime = runtimes.open(row.artifact, row.backend, **options)
            row.runtime.encode_image(windows[:1])
        for round_ in range(args.rounds):
            for row in group:
                window = windows[round_ % len(windows)][None]
                started = time.perf_counter()
                row.runtime.encode_image(window)
                row.timings.append((time.perf_counter() - started) * 1000)
    reference = rows[0].runtime
    for row in rows[1:]:
        row.drift = validate_candidate(reference, row.runtime, photos).model_level
    return rows


def print_routes(rows: list[Row], args) -> None:
    fp32 = rows[0].median_ms
    print(f"\nroutes: {args.rounds} interleaved rounds, batch 1, {args.threads} threads; drift against ONNX Runtime "
          f"fp32 on {args.eval_count} COCO eval photos (INT8 calibrated on {args.calib_count} COCO images)\n")
    print("| route | ran as | median ms | vs ORT fp32 | confident group agree % | group cos mean / min |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        drift = row.drift
        figures = "100 | 1 / 1" if drift is None else \
            f"{drift.group_agreement_confident:.3f} | {drift.group_embed_cosine.mean:.5f} / " \
            f"{drift.group_embed_cosine.min:.5f}"
        print(f"| {row.name} | {row.runtime.description} | {row.median_ms:.1f} | {fp32 / row.median_ms:.2f}× | "
              f"{figures} |")


# ------------------------------------------------------------------------------------------------ breakdown

def breakdown_openvino(artifact: Path, options: dict, threads: int) -> None:
    import openvino as ov
    from groupvit_edge.runtimes.openvino import compile_config
    core = ov.Core()
    model = core.read_model(str(artifact / "image.xml"))
    model.reshape({"pixels": [1, 3, SIZE, SIZE]})
    config = {**compile_config("CPU", {"CPU": options["inference_precision"]}, "LATENCY", threads=threads),
              "PERF_COUNT": True}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    pixels = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    for _ in range(3):
        request.infer({"pixels": pixels})
    totals, counts = collections.Counter(), collections.Counter()
    for node in request.profiling_info:
        if node.status.name == "EXECUTED":
            key = (node.node_type, node.exec_type)
            totals[key] += node.real_time.total_seconds() * 1000
            counts[key] += 1
    _print_breakdown(f"openvino-int8, {options['inference_precision']} remainder (OpenVINO performance counters, "
                     f"one inference)", totals, counts, "node type / kernel")


def breakdown_onnxruntime(graph: Path, threads: int, scratch: Path, runs: int = 4) -> None:
    import onnx
    import onnxruntime as ort
    from groupvit_edge.quantization.form import unsigned_activations
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(scratch / "onnxruntime_profile")   # not in the working directory
    options.log_severity_level = 3
    model = unsigned_activations(onnx.load(str(graph)))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    for _ in range(runs):
        session.run(None, {"pixels": pixels})
    totals, counts = collections.Counter(), collections.Counter()
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1000 / runs
            counts[event["args"]["op_name"]] += 1 / runs
    _print_breakdown("ONNX Runtime onnx-int8, U8 activations (its profiler, mean of 4 runs)", totals, counts,
                     "operator")


def _print_breakdown(title: str, totals, counts, what: str, rows: int = 10) -> None:
    total = sum(totals.values())
    print(f"\n{title}: {total:.1f} ms counted\n")
    print(f"| {what} | nodes | ms | share |")
    print("|---|---|---|---|")
    for key, value in totals.most_common(rows):
        label = " / ".join(key) if isinstance(key, tuple) else key
        print(f"| {label} | {round(counts[key])} | {value:.1f} | {100 * value / total:.1f}% |")


# ------------------------------------------------------------------------------------------------ verdict

def verdict(rows: list[Row]) -> None:
    from groupvit_edge.hardware import cpu_flags
    from groupvit_edge.metrics.drift import MODEL_LEVEL_BUDGET
    budget = MODEL_LEVEL_BUDGET
    fp32 = rows[0].median_ms

    def fits(row):
        return row.drift.group_agreement_confident >= budget.min_confident_group_agreement and \
            row.drift.group_embed_cosine.mean >= budget.min_group_cosine

    openvino_int8 = [row for row in rows if row.name.startswith("openvino-int8") and fits(row)]
    amx = "amx_int8" in cpu_flags()
    print("\ntargets:")
    if openvino_int8:
        best = min(openvino_int8, key=lambda row: row.median_ms)
        met = "met" if best.median_ms <= OPENVINO_INT8_TARGET_MS else "NOT met"
        print(f"- OpenVINO INT8 within the default budget ≤ {OPENVINO_INT8_TARGET_MS:.0f} ms: {best.name} "
              f"{best.median_ms:.1f} ms — {met}" + ("" if amx else " (the target is an AMX CPU's; this CPU has no "
                                                        "AMX, so this figure does not decide it)"))
    else:
        print(f"- OpenVINO INT8 within the default budget ({budget.describe()}): no configuration fits on these "
              f"weights and photos")
    ort_int8 = [row for row in rows if row.name.startswith("onnxruntime onnx-int8")]
    best = min(ort_int8, key=lambda row: row.median_ms)
    speedup = fp32 / best.median_ms
    print(f"- ONNX Runtime INT8 ≥ {ORT_INT8_TARGET_SPEEDUP}× ONNX Runtime fp32: {best.name} {speedup:.2f}× — "
          f"{'met' if speedup >= ORT_INT8_TARGET_SPEEDUP else 'NOT met'}")


def _median_seconds(call, runs: int) -> float:
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


if __name__ == "__main__":
    main()
