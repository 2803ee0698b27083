"""The base of every target: trace GroupViT into image.onnx + text.onnx, simplify, validate in ONNX Runtime.

Targets add steps (FP16, INT8, IR, engines) that transform these graphs inside the same staging directory; the
artifact appears only when every step passed: it is built in a temporary sibling directory and renamed.
"""
from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..artifact import GraphRecord, Manifest, atomic_directory, sha256_file, write_json_atomic, MANIFEST_NAME
from ..errors import UserError, ValidationFailed
from ..segmentation.preprocess import load_image, prepare
from ..segmentation.vocabulary import Vocabulary, load_tokenizer

OPSET = 17   # ≥ 17 so LayerNorm is one LayerNormalization op (DESIGN.md precision policy)
TEXT_CONTEXT = 77
# fp32 ONNX must agree with eager PyTorch up to float reassociation; larger gaps mean a broken graph.
FP32_MAX_ABS_DIFF = 1e-3
FP32_MIN_GROUP_AGREEMENT = 0.99


@dataclass
class ExportOptions:
    """Everything a target may need; each step reads only its own fields."""
    image_size: tuple[int, int] = (448, 448)
    tokenizer: str | Path | None = None
    labels: list[str] | None = None
    templates: tuple[str, ...] | None = None
    validation_image: str | Path | None = None
    validation_images: str | Path | None = None     # held-out images for drift of fp16/int8 targets
    resize: str = "slide"
    simplify: bool = True
    calib_dir: str | Path | None = None
    calib_count: int = 128
    calib_method: str = "nncf"
    int8_weight_bits: int = 7                       # 7: no int16 saturation on CPUs without VNNI (quantizers.py)
    seed: int = 0
    max_drop: float | None = None                   # drift budget (mIoU points) for the int8 search
    drift_labels: str = "prototypes:16"             # vocabulary the drift budget is measured with
    cache_dir: str | Path | None = None
    openvino_int8_route: str | None = None          # openvino-int8: "qdq" or "nncf-ir" (default: the better)
    batch_min: int = 1                              # TensorRT optimization profile of the batch axis
    batch_opt: int = 1
    batch_max: int = 8
    workspace_mb: int = 2048                        # TensorRT builder workspace limit
    classes_min: int = 1                            # TensorRT optimization profile of the text graph's prompts
    classes_opt: int = 64
    classes_max: int = 256                          # vocabulary.TEXT_BATCH
    timing_cache: str | Path | None = None          # default: per TensorRT version and GPU in the cache dir
    tensorrt_typing: str = "auto"                   # "auto" | "weak" | "strong" (exporters.tensorrt.plan_build)
    int8_route: str = "explicit"                    # trt-int8: "explicit" (QDQ) | "implicit" (entropy calibrator)


@dataclass
class ExportContext:
    """What the steps of a target share while the artifact is being built in `staging`."""
    staging: Path
    data: dict
    loaded: object              # LoadedModel
    reference: object           # TorchRuntime over the same weights
    options: ExportOptions
    log: Callable[[str], None]

    @property
    def manifest(self) -> Manifest:
        return Manifest(self.data, self.staging)


@dataclass
class ExportResult:
    directory: Path
    manifest: Manifest
    seconds: float


def export_onnx(model, out_dir: str | Path, **options) -> ExportResult:
    """The fp32 ONNX artifact (target `onnx`)."""
    from . import export
    return export(model, out_dir, "onnx", **options)


def build_artifact(model, out_dir: str | Path, steps, target: str, *, image_size=448,
                   log: Callable[[str], None] = print, **option_values) -> ExportResult:
    """Trace and validate the fp32 graphs, run the target's steps on them, then move the artifact into place.

    `model` is a spec like "random:0", a checkpoint path, or a LoadedModel.
    """
    import torch
    from ..model import LoadedModel, load_model
    from ..runtimes.pytorch import TorchRuntime, check_image_size

    started = time.perf_counter()
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    options = ExportOptions(image_size=(height, width), **option_values)
    loaded = model if isinstance(model, LoadedModel) else load_model(str(model))
    check_image_size(height, width, loaded.model.config.vision.patch_size)
    tokenizer_source = _tokenizer_source(options.tokenizer, loaded)
    validation_name = str(options.validation_image) if options.validation_image is not None else "<test card>"
    validation_image = load_image(options.validation_image) if options.validation_image is not None \
        else _test_card()
    reference = TorchRuntime(loaded, image_size=(height, width), resize=options.resize)

    with atomic_directory(out_dir) as staging:
        log(f"tracing image graph at {height}x{width} (opset {OPSET})")
        with torch.inference_mode(False), torch.no_grad():
            _export_graph(reference.image_graph, torch.zeros(1, 3, height, width), staging / "image.onnx",
                          "pixels", ("group_embeds", "image_embed", "grouping"), "batch", options.simplify)
            log("tracing text graph")
            _export_graph(reference.text_graph, torch.zeros(2, TEXT_CONTEXT, dtype=torch.int32), staging / "text.onnx",
                          "token_ids", ("text_embeds",), "classes", options.simplify)
        data = dict(reference.manifest.data)
        data["graphs"] = {"image": onnx_record(staging, "image.onnx"), "text": onnx_record(staging, "text.onnx")}
        data["precision"] = {"target": "onnx", "compute": "fp32", "kept_float": ["*"], "quantized_nodes": []}
        tokenizer_files = _copy_tokenizer(tokenizer_source, staging / "tokenizer")
        data["tokenizer"] = {"dir": "tokenizer", "files": tokenizer_files,
                             "sha256": {name: sha256_file(staging / "tokenizer" / name) for name in tokenizer_files}}
        context = ExportContext(staging, data, loaded, reference, options, log)
        if options.labels:
            vocabulary = Vocabulary.encode(reference, options.labels, options.templates or None,
                                           load_tokenizer(tokenizer_source))
            vocabulary.save(staging / "vocab.npz")
            data["vocabulary"] = {"file": "vocab.npz", "sha256": sha256_file(staging / "vocab.npz"),
                                  "labels": vocabulary.labels,
                                  "templates": list(vocabulary.templates)}
        log("validating in ONNX Runtime against PyTorch")
        data["validation"] = validate_against_reference(context.manifest, reference, validation_image,
                                                        validation_name)
        _report(data["validation"], log)
        _enforce_fp32_tolerance(data["validation"])
        for step in steps:
            step(context)
        data["precision"]["target"] = target
        write_json_atomic(staging / MANIFEST_NAME, context.manifest.to_json())
    seconds = time.perf_counter() - started
    log(f"wrote {Path(out_dir)} ({target}) in {seconds:.1f} s")
    return ExportResult(Path(out_dir), Manifest(data, Path(out_dir)), seconds)


def _export_graph(module, example, path: Path, input_name: str, output_names, batch_axis: str, simplify: bool):
    import onnx
    import torch
    dynamic = {name: {0: batch_axis} for name in (input_name, *output_names)}
    raw = path.with_suffix(".raw.onnx")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript; it remains the
        # one that gives clean static graphs with named dynamic batch axes on every torch ≥ 2.1.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(raw), dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=list(output_names), dynamic_axes=dynamic,
                          do_constant_folding=True)
    graph = onnx.load(str(raw))
    if simplify:
        import onnxsim
        # Constant folding and shape inference only: onnxsim's fusion passes rename nodes (Gemm_12) and merge
        # identical initializers, which loses the module paths the precision policy and the manifest's list
        # of quantized nodes are written in. Every runtime fuses MatMul+Add itself.
        graph, ok = onnxsim.simplify(graph, perform_optimization=False)
        if not ok:
            raise RuntimeError(f"onnxsim could not verify the simplified {path.name}")
    _drop_unused_initializers(graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    raw.unlink()


def _drop_unused_initializers(model) -> None:
    """Constant folding leaves dead constants behind (without onnxsim's optimizer passes); runtimes warn on them."""
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    dead = [init for init in model.graph.initializer if init.name not in used]
    for init in dead:
        model.graph.initializer.remove(init)


def onnx_record(directory: Path, file: str, precision: str = "fp32") -> dict:
    import onnx
    graph = onnx.load(str(directory / file), load_external_data=False)

    def specs(values):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return GraphRecord(file=file, format="onnx", precision=precision, inputs=specs(graph.graph.input),
                       outputs=specs(graph.graph.output), extra={"opset": OPSET}).to_dict(directory)


def _tokenizer_source(tokenizer, loaded) -> Path:
    source = tokenizer or loaded.tokenizer_dir
    if source is None:
        raise UserError("no CLIP tokenizer vocabulary: pass --tokenizer PATH/bpe_simple_vocab_16e6.txt.gz "
                        "(or a checkpoint directory with vocab.json + merges.txt)")
    path = Path(source)
    if not path.exists():
        raise UserError(f"tokenizer {path} does not exist: pass bpe_simple_vocab_16e6.txt.gz or a directory "
                        f"with vocab.json + merges.txt")
    load_tokenizer(path)   # fail now, with the tokenizer's own sentence, rather than on a device later
    return path


def _copy_tokenizer(source: Path, destination: Path) -> list[str]:
    destination.mkdir()
    if source.is_file():
        files = [source]
    elif (source / "vocab.json").is_file():
        files = [source / "vocab.json", source / "merges.txt"]
    else:
        files = sorted(source.glob("bpe*.txt.gz"))[:1]
    for file in files:
        shutil.copyfile(file, destination / file.name)
    return [file.name for file in files]


def _test_card():
    """A deterministic stand-in photo when no --validation-image is given: smooth gradients and shapes."""
    from PIL import Image, ImageDraw
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    pixels = np.stack([x / 640 * 255, y / 480 * 255, (x + y) / 1120 * 255], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse([80, 60, 300, 280], fill=(200, 40, 40))
    draw.rectangle([360, 200, 600, 440], fill=(30, 160, 60))
    return image


def validate_against_reference(manifest: Manifest, reference, image, image_name: str) -> dict:
    """Run the artifact's graphs in ONNX Runtime and PyTorch on one image's windows and compare them.

    Class-level agreement uses a label-free vocabulary: the reference's own group embeddings of the first
    window act as class prototypes, which gives rich label maps even with random weights.
    """
    from ..metrics.drift import CONFIDENT_MARGIN, ModelLevel, decide_groups
    from ..runtimes.onnxruntime import OnnxRuntime
    from ..segmentation.segmenter import label_map

    candidate = OnnxRuntime(manifest)
    prepared = prepare(image, manifest.preprocess)
    ours, theirs = candidate.encode_image(prepared.windows), reference.encode_image(prepared.windows)
    their_groups = [decide_groups(g, prepared.window_size, CONFIDENT_MARGIN) for g in theirs.grouping]
    our_groups = [decide_groups(g, prepared.window_size, None) for g in ours.grouping]
    comparison = ModelLevel()
    comparison.add(theirs, ours, prepared, their_groups, our_groups)
    summary = comparison.summary()
    prototypes = theirs.group_embeds[0]
    labels = [label_map(prepared, encoding, prototypes, manifest.logit_scale, None, [d.groups for d in groups])[0]
              for encoding, groups in ((ours, our_groups), (theirs, their_groups))]
    tokens = np.zeros((2, TEXT_CONTEXT), dtype=np.int32)
    tokens[:, :3] = [[49406, 320, 49407], [49406, 1125, 49407]]
    diffs = dict(summary["max_abs_diff"])
    diffs["text_embeds"] = float(np.abs(candidate.encode_text(tokens) - reference.encode_text(tokens)).max())
    return {"image": image_name, "windows": len(prepared.boxes), "max_abs_diff": diffs,
            "group_agreement": summary["group_agreement"] / 100,
            "group_agreement_confident": summary["group_agreement_confident"] / 100,
            "group_embed_cosine_min": summary["group_embed_cosine"]["min"],
            "label_agreement": float(np.mean(labels[0] == labels[1])),
            "label_vocabulary": "prototypes:reference-groups"}


def _report(validation: dict, log) -> None:
    diffs = ", ".join(f"{name} {value:.2e}" for name, value in validation["max_abs_diff"].items())
    log(f"  max abs diff vs PyTorch: {diffs}")
    log(f"  group agreement {validation['group_agreement']:.4%}, label agreement "
        f"{validation['label_agreement']:.4%} ({validation['windows']} windows)")


def _enforce_fp32_tolerance(validation: dict) -> None:
    worst = max(validation["max_abs_diff"].items(), key=lambda item: item[1])
    if worst[1] > FP32_MAX_ABS_DIFF or validation["group_agreement"] < FP32_MIN_GROUP_AGREEMENT:
        raise ValidationFailed(
            f"ONNX graphs disagree with PyTorch (max abs diff {worst[1]:.2e} in {worst[0]}, tolerance "
            f"{FP32_MAX_ABS_DIFF:.0e}; group agreement {validation['group_agreement']:.2%}, needed "
            f"{FP32_MIN_GROUP_AGREEMENT:.0%}); the artifact was not written")
