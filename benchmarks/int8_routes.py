"""INT8/FP16 routes side by side: our QDQ graph against what users get from today's tools.

    python benchmarks/int8_routes.py [--calib-count 128] [--eval-count 24] [--runs 20] [--routes ...]

Every route starts from the same random:0 fp32 export at 448² and is judged on the same held-out COCO eval
images against the fp32 graph in ONNX Runtime: final-group agreement (all / confident pixels), group-embedding
cosine (mean / min), prototype-vocabulary mIoU (prototypes:16), and image-graph median latency (batch 1,
2 threads). Calibration: --calib-count images of ../shared/data/coco/calib2017.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BPE = SHARED / "clip" / "bpe_simple_vocab_16e6.txt.gz"
# A route ending in -attn also quantizes attention's q·k and attention·v products (--int8-attention); our ONNX
# Runtime routes run the symmetric graph as written (S8 activations) and, with -u8, in the U8 form ORT runs on x86.
ROUTES = ("ort-fp32", "ort-defaults", "ort-preprocessed", "ort-minmax", "ort-minmax-u8", "ort-u8s8", "ort-u8s8-attn",
          "ort-percentile", "ort-entropy", "ort-dynamic", "nncf-onnx", "nncf-onnx-u8", "nncf-onnx-attn",
          "nncf-onnx-attn-u8", "nncf-onnx-w8", "nncf-onnx-w8-u8", "openvino-qdq", "openvino-qdq-attn",
          "openvino-nncf", "openvino-nncf-bf16", "openvino-fp32-bf16", "openvino-nncf-defaults", "onnx-fp16")


def latency(runtime, size, runs: int) -> float:
    from groupvit_edge.metrics.bench import median_ms
    pixels = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    return median_ms(lambda: runtime.encode_image(pixels), runs, warmup=3)


def replace_image_graph(fp32_dir: Path, out: Path, onnx_model, compute: str) -> Path:
    """A copy of the fp32 artifact whose image graph is `onnx_model` (for routes our exporter does not make)."""
    import json
    import onnx
    from groupvit_edge.artifact import sha256_file
    shutil.copytree(fp32_dir, out)
    onnx.save(onnx_model, str(out / "image.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["precision"].update(target=f"bench-{compute}", compute=compute)
    manifest["graphs"]["image"].update(precision=compute, sha256=sha256_file(out / "image.onnx"))
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def off_the_shelf_openvino(fp32_dir: Path, windows: np.ndarray, threads: int = 2):
    """NNCF on the IR exactly as its documentation's basic call, compiled with OpenVINO's defaults (no ignored
    scope, no inference-precision hint: on a bf16 CPU the plugin runs the rest in bf16)."""
    import nncf
    import openvino as ov
    from groupvit_edge.artifact import read_manifest
    from groupvit_edge.runtimes.base import ImageEncoding, Runtime
    from groupvit_edge.runtimes.onnxruntime import OnnxRuntime
    model = ov.convert_model(str(fp32_dir / "image.onnx"))
    model.reshape({"pixels": [1, 3, *windows.shape[2:]]})
    quantized = nncf.quantize(model, nncf.Dataset(list(windows), lambda w: w[None]), subset_size=len(windows))
    compiled = ov.Core().compile_model(quantized, "CPU", {"INFERENCE_NUM_THREADS": threads})
    manifest = read_manifest(fp32_dir)
    ran = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    class Compiled(Runtime):
        name = "openvino"

        def __init__(self):
            self.manifest, self.request = manifest, compiled.create_infer_request()
            self.text = OnnxRuntime(manifest, threads=threads)    # the route quantizes the image graph only

        def encode_image(self, pixels):
            parts = [self.request.infer({"pixels": window[None]}) for window in pixels]
            return ImageEncoding(*(np.concatenate([part[compiled.output(name)] for part in parts])
                                   for name in ("group_embeds", "image_embed", "grouping")))

        def encode_text(self, token_ids):
            return self.text.encode_text(token_ids)

        @property
        def description(self):
            return f"openvino {ov.__version__.split('-')[0]} (CPU, NNCF defaults, inference precision {ran})"

    return Compiled()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calib-count", type=int, default=128)
    parser.add_argument("--eval-count", type=int, default=24)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--routes", nargs="*", default=list(ROUTES))
    args = parser.parse_args()
    from groupvit_edge.hardware import cpu_header
    print(cpu_header(), flush=True)   # figures from different machines are never mixed

    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static
    from groupvit_edge import runtimes
    from groupvit_edge.quantization.calibration_set import CalibrationSet
    from groupvit_edge.quantization.statistics import WindowReader, minmax_stride
    from groupvit_edge.errors import UserError
    from groupvit_edge.runtimes.base import Runtime
    from groupvit_edge.exporters import export
    from groupvit_edge.metrics.drift import validate_candidate
    from groupvit_edge.model import load_model

    images = sorted((SHARED / "coco" / "eval2017" / "images").glob("*.jpg"))[: args.eval_count]
    loaded = load_model("random:0")
    scratch = Path(tempfile.mkdtemp(prefix="int8-routes-"))
    common = dict(image_size=args.size, tokenizer=BPE, validation_images=images[0], log=lambda m: None)
    fp32 = scratch / "fp32"
    export(loaded, fp32, "onnx", **common)
    reference = runtimes.open(fp32, backend="onnxruntime", threads=2)
    calibration = CalibrationSet.resolve(SHARED / "coco" / "calib2017", args.calib_count,
                                         reference.manifest.preprocess, log=lambda m: None)
    rows = []

    def judge(name, artifact, backend="onnxruntime", built_s=None, note="", options=None):
        runtime = artifact if isinstance(artifact, Runtime) else \
            runtimes.open(artifact, backend=backend, threads=2, **(options or {}))
        drift = validate_candidate(reference, runtime, images, labels="prototypes:16")
        m = drift.model_level
        rows.append((name, runtime.description, latency(runtime, args.size, args.runs), m.group_agreement,
                     m.group_agreement_confident, m.group_embed_cosine.mean, m.group_embed_cosine.min,
                     drift.class_level.miou_vs_reference, built_s, note))
        print(f"done {name}", flush=True)

    fp32_model = onnx.load(str(fp32 / "image.onnx"))
    windows = None
    for route in args.routes:
        started = time.perf_counter()
        if route == "ort-fp32":
            judge(route, fp32)
        elif route == "ort-defaults":
            windows = windows if windows is not None else calibration.windows(progress=False)
            source = scratch / "fp32-image.onnx"
            onnx.save(fp32_model, str(source))
            quantize_static(str(source), str(scratch / "defaults.onnx"), WindowReader(windows),
                            quant_format=QuantFormat.QDQ,
                            extra_options={"CalibStridedMinMax": minmax_stride(len(windows))})
            judge(route, replace_image_graph(fp32, scratch / route, onnx.load(str(scratch / "defaults.onnx")),
                                             "int8"), built_s=time.perf_counter() - started,
                  note="quantize_static defaults: asymmetric U8, every op")
        elif route == "ort-preprocessed":
            from onnxruntime.quantization.shape_inference import quant_pre_process
            windows = windows if windows is not None else calibration.windows(progress=False)
            source, prepared = scratch / "fp32-image.onnx", scratch / "preprocessed.onnx"
            onnx.save(fp32_model, str(source))
            quant_pre_process(str(source), str(prepared))
            quantize_static(str(prepared), str(scratch / "preprocessed-int8.onnx"), WindowReader(windows),
                            extra_options={"CalibStridedMinMax": minmax_stride(len(windows))})
            judge(route, replace_image_graph(fp32, scratch / route, onnx.load(str(scratch / "preprocessed-int8.onnx")),
                                             "int8"), built_s=time.perf_counter() - started,
                  note="ORT's documented flow: quant_pre_process, then quantize_static with its defaults")
        elif route in ("ort-u8s8", "ort-u8s8-attn"):
            from onnxruntime.quantization import QuantType
            from groupvit_edge.quantization.policy import image_graph_policy
            from groupvit_edge.quantization.form import float_outside_policy
            windows = windows if windows is not None else calibration.windows(progress=False)
            source = scratch / "fp32-image.onnx"
            onnx.save(fp32_model, str(source))
            policy = image_graph_policy(fp32_model, attention_products=route.endswith("-attn"))
            quantize_static(str(source), str(scratch / "u8s8.onnx"), WindowReader(windows),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                            nodes_to_quantize=list(policy.quantizable), per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            extra_options={"WeightSymmetric": True, "QuantizeBias": False,
                                           "CalibStridedMinMax": minmax_stride(len(windows))})
            u8s8 = float_outside_policy(onnx.load(str(scratch / "u8s8.onnx")), policy.quantizable)
            judge(route, replace_image_graph(fp32, scratch / route, u8s8, "int8"), built_s=time.perf_counter() - started,
                  note="our policy, U8 activations (asymmetric), S8 per-channel weights: ONNX Runtime only")
        elif route in ("openvino-nncf-bf16", "openvino-fp32-bf16"):
            out = scratch / route
            if route == "openvino-fp32-bf16":
                export(loaded, out, "openvino-fp32", **common)
            else:
                export(loaded, out, "openvino-int8", calib_dir=SHARED / "coco" / "calib2017",
                       calib_count=args.calib_count, cache_dir=scratch / "cache", **common)
            try:
                judge(route, out, backend="openvino", options={"inference_precision": "bf16"},
                      note="explicit bf16 for everything not INT8")
            except UserError as error:
                print(f"skipped {route}: {error}")
        elif route == "openvino-nncf-defaults":
            windows = windows if windows is not None else calibration.windows(progress=False)
            judge(route, off_the_shelf_openvino(fp32, windows), built_s=time.perf_counter() - started,
                  note="what a user gets without us: nncf.quantize(ir, dataset), OpenVINO's default precision")
        elif route == "ort-dynamic":
            out = scratch / route
            export(loaded, out, "onnx-int8-dynamic", **common)
            judge(route, out, built_s=time.perf_counter() - started,
                  note="ours: onnx-int8-dynamic, weights 7-bit per channel, activations at run time (ORT CPU only)")
        elif route.startswith("ort-") or route.startswith("nncf-onnx"):
            graph = route.removesuffix("-u8")
            form = "u8" if route.endswith("-u8") else "s8"
            method = "nncf" if graph.startswith("nncf-onnx") else graph[4:].removesuffix("-attn")
            bits = 8 if graph.endswith("-w8") else 7
            attention = graph.endswith("-attn")
            out = scratch / graph
            if not out.exists():       # the -u8 route runs the graph its S8 route exported
                export(loaded, out, "onnx-int8", calib_dir=SHARED / "coco" / "calib2017",
                       calib_count=args.calib_count, calib_method=method, int8_weight_bits=bits,
                       int8_attention=attention, cache_dir=scratch / "cache", **common)
            seconds = runtimes.open(out).manifest.data["calibration"]["seconds"]
            judge(route, out, built_s=seconds, options={"int8_activations": form},
                  note=f"ours: symmetric QDQ, policy, {method}, {bits}-bit weights"
                       + (", attention products INT8" if attention else "") + f", run with {form.upper()} activations")
        elif route in ("openvino-qdq", "openvino-qdq-attn", "openvino-nncf"):
            out = scratch / route
            qdq = route.startswith("openvino-qdq")
            export(loaded, out, "openvino-int8", calib_dir=SHARED / "coco" / "calib2017",
                   calib_count=args.calib_count, cache_dir=scratch / "cache",
                   openvino_int8_route="qdq" if qdq else "nncf-ir", int8_attention=route.endswith("-attn"), **common)
            judge(route, out, backend="openvino",
                  note=("OpenVINO reading our QDQ ONNX" + (", attention products INT8" if route.endswith("-attn")
                                                            else "")) if qdq
                  else "NNCF on the OpenVINO IR (TRANSFORMER, policy as ignored scope, attention products INT8)")
        elif route == "onnx-fp16":
            out = scratch / route
            export(loaded, out, "onnx-fp16", **common)
            judge(route, out, note="onnxconverter-common, keep-float32 list")

    print(f"\n{len(images)} held-out COCO eval images, {args.size}², batch 1, 2 threads, calibration "
          f"{len(calibration.images)} COCO train images; vs the fp32 graph in ONNX Runtime; peak RSS of this "
          f"process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB\n")
    print("| route | backend | median ms | group agree % all / confident | group cos mean / min "
          "| prototype mIoU | calibration s | note |")
    print("|---|---|---|---|---|---|---|---|")
    for name, backend, ms, agree, confident, cos_mean, cos_min, miou, built, note in rows:
        print(f"| {name} | {backend} | {ms:.1f} | {agree:.2f} / {confident:.3f} | {cos_mean:.4f} / {cos_min:.4f} "
              f"| {miou:.2f} | {'—' if built is None else f'{built:.0f}'} | {note} |")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
