"""`groupvit-edge`: a thin shell over the Python API. Every command is one API call plus printing."""
from __future__ import annotations

import sys

import click

from .errors import UserError, ValidationFailed
from .exporters import TARGETS as EXPORT_TARGETS


def main(argv=None) -> int:
    """Console entry point: user errors are one sentence and exit 2, failed checks exit 1, bugs stay tracebacks."""
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="groupvit-edge")
    except UserError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except ValidationFailed as error:
        click.echo(f"failed: {error}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    return 0


def _image_size(value: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in str(value).lower().split("x")]
    except ValueError:
        raise UserError(f"--image-size {value!r} is not a size: use 448 or HEIGHTxWIDTH like 448x672") from None
    if len(parts) not in (1, 2):
        raise UserError(f"--image-size {value!r} is not a size: use 448 or HEIGHTxWIDTH like 448x672")
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="groupvit-edge")
def cli():
    """Export GroupViT to edge runtimes, run it, and prove it still segments like the original."""


@cli.command(epilog="Examples:\n\n\b\n  groupvit-edge export --model random:0 --target onnx --image-size 448 "
             "--tokenizer ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz --out artifacts/fp32\n"
             "  groupvit-edge export --model random:0 --target onnx-int8 --calib-dir ../shared/data/coco/calib2017 "
             "--calib-count 128 --tokenizer ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz --out artifacts/int8")
@click.option("--model", "model_spec", required=True,
              help="Checkpoint dir, .pth file, HuggingFace Hub id, or random:SEED.")
@click.option("--target", default="onnx", show_default=True, help=f"One of: {', '.join(EXPORT_TARGETS)}.")
@click.option("--image-size", default="448", show_default=True, help="Export size: 448 or HEIGHTxWIDTH.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Artifact directory.")
@click.option("--labels", help="Comma-separated class names to precompute a vocabulary for (optional).")
@click.option("--tokenizer", type=click.Path(), help="bpe_simple_vocab_16e6.txt.gz or a dir with vocab.json + "
              "merges.txt (default: the checkpoint's own).")
@click.option("--validation-image", type=click.Path(), help="Real image to validate the fp32 graphs on "
              "(default: a synthetic test card).")
@click.option("--validation-images", type=click.Path(), help="Held-out images to measure fp16/int8 drift on "
              "(default: held out from --calib-dir).")
@click.option("--resize", type=click.Choice(["slide", "letterbox"]), default="slide", show_default=True,
              help="Default way runtimes fit images to the export size.")
@click.option("--calib-dir", type=click.Path(), help="Calibration images for INT8 (searched recursively).")
@click.option("--calib-count", type=int, default=128, show_default=True)
@click.option("--calib-method", default="nncf", show_default=True, help="nncf, minmax, entropy or percentile.")
@click.option("--int8-weight-bits", type=click.Choice(["7", "8"]), default="7", show_default=True,
              help="INT8 weight range: 7 avoids int16 saturation on CPUs without VNNI; 8 for VNNI CPUs and GPUs only.")
@click.option("--openvino-int8-route", type=click.Choice(["nncf-ir", "qdq"]), help="openvino-int8: NNCF on the "
              "IR, or the shared QDQ ONNX converted to IR (default: nncf-ir).")
@click.option("--max-drop", type=float, help="INT8 drift budget in mIoU points: blocks return to float, most "
              "harmful first, until it fits.")
@click.option("--seed", type=int, default=0, show_default=True, help="Calibration sampling seed.")
@click.option("--batch-min", type=int, default=1, show_default=True, help="trt-*: smallest windows per call.")
@click.option("--batch-opt", type=int, default=1, show_default=True, help="trt-*: windows per call tuned for.")
@click.option("--batch-max", type=int, default=8, show_default=True, help="trt-*: largest windows per call.")
@click.option("--workspace-mb", type=int, default=2048, show_default=True, help="trt-*: builder workspace limit.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="trt-*: timing cache file (default: one "
              "per TensorRT version and GPU in the cache directory).")
@click.option("--tensorrt-typing", type=click.Choice(["auto", "weak", "strong"]), default="auto",
              show_default=True, help="trt-*: auto = weak (FP16 flag) before TensorRT 10.12, strong from 10.12.")
@click.option("--int8-route", type=click.Choice(["explicit", "implicit"]), default="explicit", show_default=True,
              help="trt-int8: explicit = the QDQ graph; implicit = IInt8EntropyCalibrator2 (TensorRT 10 only).")
def export(model_spec, target, image_size, out_dir, labels, tokenizer, validation_image, validation_images,
           resize, calib_dir, calib_count, calib_method, int8_weight_bits, openvino_int8_route, max_drop, seed,
           batch_min, batch_opt, batch_max, workspace_mb, timing_cache, tensorrt_typing, int8_route):
    """Export a GroupViT checkpoint to an artifact directory."""
    from .exporters import export as export_artifact
    from .segmentation import parse_labels
    export_artifact(model_spec, out_dir, target, image_size=_image_size(image_size), tokenizer=tokenizer,
                    labels=parse_labels(labels) if labels is not None else None, validation_image=validation_image,
                    validation_images=validation_images, resize=resize, calib_dir=calib_dir,
                    calib_count=calib_count, calib_method=calib_method, int8_weight_bits=int(int8_weight_bits),
                    openvino_int8_route=openvino_int8_route, max_drop=max_drop, seed=seed,
                    batch_min=batch_min, batch_opt=batch_opt, batch_max=batch_max, workspace_mb=workspace_mb,
                    timing_cache=timing_cache, tensorrt_typing=tensorrt_typing, int8_route=int8_route,
                    log=click.echo)


@cli.command(epilog="Example:\n\n  groupvit-edge segment artifacts/fp32 photo.jpg --labels cat,dog,grass --out out/")
@click.argument("source")
@click.argument("images", nargs=-1, required=True)
@click.option("--labels", help="Comma-separated class names (default: the artifact's precomputed vocabulary).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--backend", help="Force a backend: onnxruntime, openvino, tensorrt or torch.")
@click.option("--tokenizer", type=click.Path(), help="Tokenizer vocabulary, if the artifact has none.")
@click.option("--resize", type=click.Choice(["slide", "letterbox"]), help="Override the artifact's resize mode.")
@click.option("--no-background", is_flag=True, help="No background class (every pixel gets a label).")
@click.option("--threads", type=int, help="CPU threads for the backend.")
def segment(source, images, labels, out_dir, backend, tokenizer, resize, no_background, threads):
    """Segment IMAGES (files or directories) with an artifact or checkpoint SOURCE; writes overlay and label PNGs."""
    from .segmentation import Segmenter
    from .segmentation.postprocess import BACKGROUND_THRESHOLD
    from .segmentation.preprocess import list_images
    paths = list_images(images)
    options = {"threads": threads} if threads else {}
    with Segmenter.open(source, labels, backend=backend, tokenizer=tokenizer, resize=resize,
                        background_threshold=None if no_background else BACKGROUND_THRESHOLD, **options) as seg:
        click.echo(f"{seg.runtime.description}; classes: {', '.join(seg.class_names)}")
        for path in paths:
            result = seg.segment(path)
            overlay, _ = result.save(out_dir, path.stem)
            shares = ", ".join(f"{name} {share:.0%}" for name, share in
                               sorted(result.class_fractions().items(), key=lambda item: -item[1]))
            click.echo(f"{path.name}: {shares} → {overlay}")


@cli.command(epilog="Example:\n\n  groupvit-edge drift --ref random:0 --candidate artifacts/fp32 "
             "--images ../shared/data/coco/eval2017/images --labels prototypes:16 --max-drop 1.0 --report report/")
@click.option("--ref", "reference", required=True, help="Reference: an fp32 artifact or a checkpoint (PyTorch).")
@click.option("--candidate", "candidates", required=True, multiple=True, help="Artifact to judge (repeatable).")
@click.option("--images", required=True, multiple=True, help="Image files or directories (repeatable).")
@click.option("--labels", help="Class names 'a,b,c', or prototypes:K for a label-free probe "
              "(default: the reference's vocabulary, or the --classes names with --masks).")
@click.option("--masks", "masks_dir", type=click.Path(), help="Ground-truth masks (PNG per image) to compare "
              "each candidate's own mIoU with the reference's.")
@click.option("--classes", default="coco-object", show_default=True, help="Class map of --masks: coco-object, "
              "voc or a file.")
@click.option("--max-drop", type=float, help="Exit 1 when a candidate loses more than this many mIoU points.")
@click.option("--margin", type=float, default=0.01, show_default=True,
              help="Relative best-vs-second group margin below which a reference pixel is a near-tie.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Also write drift.md and PNGs of the worst images and per-class IoU here.")
@click.option("--json", "json_path", default="drift.json", show_default=True, type=click.Path(dir_okay=False))
def drift(reference, candidates, images, labels, masks_dir, classes, max_drop, margin, report_dir, json_path):
    """Compare candidate artifacts with a reference on the same images: class-level and model-level drift."""
    from .metrics.classmaps import resolve
    from .metrics.drift import measure_drift
    from .metrics.report import write_json
    report = measure_drift(reference, list(candidates), list(images), labels=labels, masks_dir=masks_dir,
                           class_map=resolve(classes) if masks_dir else None, confident_margin=margin,
                           report_dir=report_dir)
    write_json(report.data, json_path)
    click.echo(report.to_markdown())
    click.echo(f"\nwrote {json_path}" + (f" and {report_dir}/" if report_dir else ""))
    if max_drop is not None:
        failures = report.failures(max_drop)
        if failures:
            raise ValidationFailed("; ".join(failures))
        click.echo(f"every candidate is within --max-drop {max_drop}")


@cli.command("eval", epilog="Example:\n\n  groupvit-edge eval artifacts/fp32 --dataset "
             "../shared/data/coco/eval2017 --classes coco-object")
@click.argument("source")
@click.option("--dataset", required=True, type=click.Path(), help="A directory with images/ and masks/.")
@click.option("--classes", default="coco-object", show_default=True, help="coco-object, voc, or a class file.")
@click.option("--backend", help="Force a backend.")
@click.option("--limit", type=int, help="Evaluate only the first N images.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the report as JSON here.")
def evaluate_command(source, dataset, classes, backend, limit, json_path):
    """mIoU, per-class IoU and pixel accuracy of SOURCE on a labelled dataset (the paper's protocol)."""
    from .metrics.evaluate import evaluate
    from .metrics.report import write_json
    report = evaluate(source, dataset, classes, backend=backend, limit=limit)
    click.echo(report.to_markdown())
    if json_path:
        write_json(report.data, json_path)


@cli.command(epilog="Example:\n\n  groupvit-edge bench artifacts/fp32 artifacts/int8 "
             "--images ../shared/data/coco/eval2017/images --limit 8")
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--images", required=True, multiple=True, help="Image files or directories.")
@click.option("--limit", type=int, default=8, show_default=True, help="Use the first N images.")
@click.option("--ref", "reference", help="Reference for mIoU (default: the first fp32 artifact).")
@click.option("--labels", default="prototypes:16", show_default=True, help="Vocabulary for mIoU vs the reference.")
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--runs", type=int, default=20, show_default=True)
@click.option("--threads", type=int, help="CPU threads per backend.")
@click.option("--batch", type=int, default=1, show_default=True, help="Windows per image-graph call.")
@click.option("--streams", type=int, help="Throughput mode: OpenVINO's THROUGHPUT hint with N streams, and a "
              "windows/s column over a stream of windows (async requests where the backend has them).")
@click.option("--json", "json_path", default="bench.json", show_default=True, type=click.Path(dir_okay=False))
def bench(artifacts, images, limit, reference, labels, warmup, runs, threads, batch, streams, json_path):
    """Speed, size, memory and accuracy of each artifact, one row each."""
    from .metrics.bench import BenchSettings, benchmark
    from .metrics.report import write_json
    from .segmentation.preprocess import list_images
    paths = list_images(list(images))[:limit]
    report = benchmark(list(artifacts), paths, reference=reference, settings=BenchSettings(
        warmup=warmup, runs=runs, threads=threads, batch=batch, streams=streams, labels=labels), log=click.echo)
    click.echo(report.to_markdown())
    write_json(report.data, json_path)
    click.echo(f"\nwrote {json_path}")


@cli.command(epilog="Examples:\n\n\b\n  groupvit-edge doctor\n"
             "  groupvit-edge doctor --artifact artifacts/int8 --target trt-int8")
@click.option("--artifact", type=click.Path(), help="Also check this artifact's ONNX graphs for TensorRT 10.3 "
              "(no TensorRT needed); exits 1 when they are not ready.")
@click.option("--target", type=click.Choice(["trt-fp16", "trt-int8"]), default="trt-fp16", show_default=True,
              help="TensorRT target to check --artifact for.")
def doctor(artifact, target):
    """Show which backends this machine has and which targets it can build and run."""
    from .doctor import report
    click.echo(report())
    if artifact is not None:
        from .checks.tensorrt import check_artifact
        readiness = check_artifact(artifact, target)
        click.echo("\n" + readiness.format(limit=50))
        if not readiness.ok:
            raise ValidationFailed(f"{readiness.summary()}; the errors above say what to change")


if __name__ == "__main__":
    main()
