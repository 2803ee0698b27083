"""`groupvit-edge`: a thin shell over the Python API. Every command is one API call plus printing.

Export options and runtime options are generated from their declarations (cli_options.py), so a flag, its help and
its checks live in one place.
"""
from __future__ import annotations

import errno
import os
import signal
import sys

import click

from .cli_options import export_option_kinds, given, options_from, runtime_options, runtime_values, threads_callback
from .doctor import report as doctor_report
from .errors import UserError, ValidationFailed
from .exporters import export as export_artifact
from .exporters.plan import readiness_report, readiness_targets, targets
from .files import exit_on_signal
from .info import describe
from .listing import listed
from .metrics.bench import BenchSettings, benchmark
from .metrics.blocks import TOLERANCE_DB, per_block_divergence
from .metrics.classmaps import resolve
from .metrics.drift import CONFIDENT_MARGIN, DEFAULT_PROBE, MODEL_LEVEL_BUDGET, budget_from_flags, measure_drift
from .metrics.drift_report import read_drift_report
from .metrics.evaluate import evaluate
from .metrics.render import render_drift_report, write_json
from .metrics.tune import tune as tune_artifact
from .options import check_number
from .segmentation import Segmenter
from .segmentation.postprocess import BACKGROUND_THRESHOLD
from .segmentation.preprocess import find_images, list_images, output_names
from .segmentation.segmenter import check_label_count
from .segmentation.vocabulary import parse_labels

# Conditions of the machine rather than bugs: a full disk or a directory we may not write.
ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "free some space or choose another output directory",
    errno.EDQUOT: "free some space or choose another output directory",
    errno.EACCES: "choose a directory you can write to, or fix its permissions",
    errno.EPERM: "choose a directory you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only: choose another output directory",
}
RESAMPLE_HELP = ("How photos are shrunk to the export size: pillow (anti-aliased) or opencv (mmseg's own resize, "
                 "as the paper evaluated; pip install groupvit-edge[opencv]).")
TEMPLATES_HELP = ("Prompt templates: simple (GroupViT's own 'a photo of a {}.', the default), full (CLIP's 80) or a "
                  "file, one per line.")
IMAGES_HELP = ("Photos: files or directories, searched recursively (repeatable). Default: the sample photos "
               "shipped with groupvit-edge.")


def main(argv=None) -> int:
    """Console entry point: user errors are one sentence and exit 2, failed checks exit 1, bugs stay tracebacks."""
    signal.signal(signal.SIGTERM, exit_on_signal)      # staging directories and locks go with the process
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="groupvit-edge")
    except UserError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except ValidationFailed as error:
        click.echo(f"failed: {error}", err=True)
        sys.exit(1)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(130)
    except OSError as error:
        hint = ENVIRONMENT_ERRORS.get(error.errno) if error.errno is not None else None
        if hint is None:
            raise
        click.echo(f"error: {error.filename or 'a file'}: {error.strerror}: {hint}", err=True)
        sys.exit(2)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    return 0


# --------------------------------------------------------------------------------------------- commands

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="groupvit-edge")
def cli():
    """Export GroupViT to edge runtimes, run it, and prove it still segments like the original."""


def _targets_help() -> str:
    return "One of: " + ", ".join(targets()) + "."


@cli.command(epilog="Examples:\n\n\b\n  groupvit-edge export --model random:0 --target onnx --out artifacts/fp32\n"
             "  groupvit-edge export --model ./groupvit-gcc-yfcc --target onnx-int8 --calib-dir coco/val2017 "
             "--max-drop 1.0 --out artifacts/int8")
@click.option("--model", "model_spec", required=True,
              help="Checkpoint directory, .pth file, HuggingFace Hub id, or random:SEED.")
@click.option("--target", default="onnx", show_default=True, help=_targets_help())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Artifact directory.")
@options_from(*export_option_kinds())
def export(model_spec, target, out_dir, **values):
    """Export a GroupViT checkpoint to an artifact directory (checked before anything slow starts)."""
    export_artifact(model_spec, out_dir, target, log=click.echo, **given(values))


@cli.command(epilog="Examples:\n\n\b\n  groupvit-edge segment artifacts/fp32 photo.jpg --labels cat,dog,grass\n"
             "  groupvit-edge segment artifacts/fp32 --images photos/ --out out/")
@click.argument("source")
@click.argument("images", nargs=-1)
@click.option("--images", "more_images", multiple=True, help=IMAGES_HELP + " Photos may also follow SOURCE.")
@click.option("--labels", help="Comma-separated class names (default: the artifact's precomputed vocabulary, else "
              "the 80 COCO object classes).")
@click.option("--out", "out_dir", default="segmented", show_default=True, type=click.Path(file_okay=False),
              help="Where the overlay and label PNGs go.")
@click.option("--backend", help="Force a backend: onnxruntime, openvino, tensorrt or torch.")
@click.option("--tokenizer", type=click.Path(), help="Tokenizer vocabulary, if the artifact has none.")
@click.option("--templates", help=TEMPLATES_HELP)
@click.option("--resize", type=click.Choice(["slide", "letterbox"]), help="Override the artifact's resize mode.")
@click.option("--no-background", is_flag=True, help="No background class (every pixel gets a label).")
@click.option("--resample", type=click.Choice(["pillow", "opencv"]), default="pillow", show_default=True,
              help=RESAMPLE_HELP)
@click.option("--show", type=click.Choice(["classes", "groups"]), default="classes", show_default=True,
              help="What the line per photo lists: class shares, or GroupViT's groups with the class each scores best.")
@runtime_options
def segment(source, images, more_images, labels, out_dir, backend, tokenizer, templates, resize, no_background,
            resample, show, **values):
    """Segment photos with an artifact or checkpoint SOURCE; writes overlay, label and group PNGs per photo."""
    found = find_images(list(images) + list(more_images))
    if not images and not more_images:
        click.echo(f"no photos given: segmenting the {len(found)} sample photos shipped with groupvit-edge")
    if labels is not None:      # given names are counted before their text is encoded
        check_label_count(len(parse_labels(labels)) + (0 if no_background else 1))
    unreadable = []
    with Segmenter.open(source, labels, backend=backend, tokenizer=tokenizer, templates=templates, resize=resize,
                        resample=resample,
                        background_threshold=None if no_background else BACKGROUND_THRESHOLD,
                        **runtime_values(values)) as segmenter:
        if labels is None:                  # the artifact's vocabulary; given labels were counted above
            segmenter.check_label_image()
        if labels is None and segmenter.manifest.vocabulary_path() is None:
            click.echo("no --labels and no vocabulary in the artifact: segmenting with the 80 COCO object classes")
        click.echo(f"{segmenter.runtime.description}; classes: {listed(segmenter.class_names, 12)}")
        if segmenter.weights_warning:        # once, not per photo: it holds for every photo
            click.echo(f"warning: {segmenter.weights_warning}", err=True)
        for image, name in zip(found, output_names(found)):
            try:
                result = segmenter.segment(image.path)
            except UserError as error:      # one bad photo does not stop the others
                unreadable.append(str(error))
                click.echo(f"skipped: {error}")
                continue
            overlay = result.save(out_dir, name)[0]
            click.echo(f"{image.path}: {_summary(result, show)} → {overlay}")
    if unreadable:
        raise UserError(f"{len(unreadable)} of {len(found)} photos could not be segmented (first: {unreadable[0]}); "
                        f"the other {len(found) - len(unreadable)} were written to {out_dir}")


def _summary(result, show: str) -> str:
    if show == "groups":
        return ", ".join(f"group {group.id} {group.share:.0%} ({group.best_class})"
                         for group in sorted(result.group_info, key=lambda group: -group.share))
    return ", ".join(f"{label} {share:.0%}" for label, share in
                     sorted(result.class_fractions().items(), key=lambda item: -item[1]))


@cli.command(epilog="Example:\n\n  groupvit-edge drift --ref random:0 --candidate artifacts/int8 "
             "--images photos/ --max-drop 1.0 --report report/")
@click.option("--ref", "reference", required=True, help="Reference: an fp32 artifact or a checkpoint (PyTorch).")
@click.option("--candidate", "candidates", required=True, multiple=True, help="Artifact to judge (repeatable).")
@click.option("--images", multiple=True, help=IMAGES_HELP)
@click.option("--labels", help="Class names 'a,b,c', or prototypes:K for a label-free probe "
              "(default: the artifacts' vocabulary; prototypes:16 when one has none; the --classes names with "
              "--masks).")
@click.option("--masks", "masks_dir", type=click.Path(), help="Ground-truth masks (a PNG per photo, same name) to "
              "compare each candidate's own mIoU with the reference's.")
@click.option("--templates", help=TEMPLATES_HELP)
@click.option("--classes", default="coco-object", show_default=True, help="Class map of --masks: coco-object, "
              "voc, pascal-context or a file of 'id: name' lines.")
@click.option("--max-drop", type=float, help="Exit 1 when a candidate loses more than this many mIoU points.")
@click.option("--min-confident-agreement", type=float, help="Exit 1 when a candidate's confident-pixel group "
              "agreement (percent) is below this.")
@click.option("--min-group-cosine", type=float, help="Exit 1 when a candidate's mean group-embedding cosine is "
              "below this.")
@click.option("--margin", type=float, default=CONFIDENT_MARGIN, show_default=True,
              help="Relative best-vs-second group margin below which a reference pixel is a near-tie.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Write report.html here (one self-contained page: tables, per-class chart, the worst photos; "
                   "the file to attach to a pull request), beside drift.json, drift.md and the PNGs it shows.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write drift.json here.")
def drift(reference, candidates, images, labels, masks_dir, templates, classes, max_drop, min_confident_agreement,
          min_group_cosine, margin, report_dir, json_path):
    """Compare candidate artifacts with a reference on the same photos: class-level and model-level drift."""
    check_number("--margin", margin, minimum=0.0, maximum=0.999)
    budget = budget_from_flags(max_drop, min_confident_agreement, min_group_cosine)
    report = measure_drift(reference, list(candidates), list(images) or None, labels=labels, templates=templates,
                           masks_dir=masks_dir,
                           class_map=resolve(classes) if masks_dir else None, confident_margin=margin,
                           budget=budget)
    if report_dir:
        render_drift_report(report, report_dir)
    click.echo(report.to_markdown())
    if json_path:
        write_json(report.to_dict(), json_path)
    written = [json_path] if json_path else []
    if report_dir:      # the page is what a user opens; its folder also holds drift.json, drift.md and the PNGs
        written.append(f"{os.path.join(report_dir, 'report.html')} (and its folder)")
    if written:
        click.echo(f"\nwrote {' and '.join(written)}")
    if budget is None:
        return
    failures = report.failures(budget)
    if failures:
        raise ValidationFailed("; ".join(failures))
    click.echo(f"every candidate is within the budget ({budget.describe()})")


@cli.command("report", epilog="Example:\n\n  groupvit-edge report report/drift.json --out report-again/")
@click.argument("drift_json")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where report.html goes, beside drift.json, drift.md and the PNGs it shows.")
def report_command(drift_json, out_dir):
    """Re-render report.html from a saved drift.json (the worst-photo PNGs are taken from its folder)."""
    render_drift_report(read_drift_report(drift_json), out_dir, photos_from=os.path.dirname(drift_json) or ".")
    click.echo(f"wrote {os.path.join(out_dir, 'report.html')} (and its folder)")


@cli.command("eval", epilog="Example:\n\n  groupvit-edge eval artifacts/fp32 --images coco/eval2017/images "
             "--masks coco/eval2017/masks --classes coco-object")
@click.argument("source")
@click.option("--images", required=True, multiple=True, help="Labelled photos: files or directories (repeatable).")
@click.option("--masks", "masks_dir", required=True, type=click.Path(), help="Single-channel PNG masks named like "
              "the photos.")
@click.option("--classes", default="coco-object", show_default=True, help="The dataset: coco-object, voc, "
              "pascal-context (its official settings apply), or a file of 'id: name' lines.")
@click.option("--backend", help="Force a backend.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N photos.")
@click.option("--templates", help=TEMPLATES_HELP + " Anything but simple deviates from the official protocol.")
@click.option("--background-threshold", type=click.FloatRange(0, 1), help="Replace the dataset's official "
              "threshold (0.95 VOC and COCO-Object, 0.35 PASCAL Context).")
@click.option("--resample", type=click.Choice(["pillow", "opencv"]), help=RESAMPLE_HELP + " Default: opencv, as "
              "the official evaluation.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the report as JSON here.")
@runtime_options
def evaluate_command(source, images, masks_dir, classes, backend, limit, templates, background_threshold, resample,
                     json_path, **values):
    """mIoU, per-class IoU and pixel accuracy of SOURCE on labelled photos, by GroupViT's official protocol."""
    report = evaluate(source, list(images), masks_dir, classes, backend=backend, limit=limit, resample=resample,
                      templates=templates, background_threshold=background_threshold, **runtime_values(values))
    click.echo(report.to_markdown())
    if json_path:
        write_json(report.to_dict(), json_path)


@cli.command(epilog="Example:\n\n  groupvit-edge bench artifacts/fp32 artifacts/int8 --images photos/ --limit 8")
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--images", multiple=True, help=IMAGES_HELP)
@click.option("--limit", type=click.IntRange(min=1), default=8, show_default=True, help="Use the first N photos.")
@click.option("--ref", "reference", help="Reference for drift (default: the first fp32 artifact).")
@click.option("--labels", default=DEFAULT_PROBE, show_default=True, help="Vocabulary for mIoU vs the reference.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed calls first.")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True, help="Timed calls.")
@click.option("--threads", type=int, callback=threads_callback, help="CPU threads per backend (at most the CPU count).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Windows per image-graph call.")
@click.option("--streams", type=click.IntRange(min=1), help="Throughput mode: OpenVINO's THROUGHPUT hint with N "
              "streams, and a windows/s column over a stream of windows (async requests where the backend has them).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the table as JSON here.")
def bench(artifacts, images, limit, reference, labels, warmup, runs, threads, batch, streams, json_path):
    """Speed, size, memory and drift of each artifact, one row each; exits 1 when an artifact could not be
    measured (its row says why)."""
    paths = list_images(list(images) or None)[:limit]
    report = benchmark(list(artifacts), paths, reference=reference, settings=BenchSettings(
        warmup=warmup, runs=runs, threads=threads, batch=batch, streams=streams, labels=labels), log=click.echo)
    click.echo(report.to_markdown())
    if json_path:
        write_json(report.to_dict(), json_path)
        click.echo(f"\nwrote {json_path}")
    failures = report.failures()
    if failures:
        raise ValidationFailed(f"{len(failures)} of {len(report.rows)} artifacts could not be measured "
                               f"({'; '.join(failures)})")


@cli.command(epilog="Example:\n\n  groupvit-edge tune artifacts/ov-int8 --images photos/ --max-drop 1.0 "
             "--labels cat,dog,grass")
@click.argument("artifact")
@click.option("--images", multiple=True, help=IMAGES_HELP)
@click.option("--ref", "reference", help="fp32 reference: an artifact or the checkpoint (default: the artifact's own "
              "fp32 ONNX, else the model it was exported from).")
@click.option("--labels", help="Vocabulary for class-level drift (default prototypes:16, reported but not gated).")
@click.option("--max-drop", type=float, help="Largest mIoU drop (points) vs the reference; needs --labels, the "
              "vocabulary that mIoU is measured with.")
@click.option("--min-confident-agreement", type=float, help="Least confident-pixel group agreement, percent "
              "[default: 99.9].")
@click.option("--min-group-cosine", type=float, help="Least mean group-embedding cosine [default: 0.995].")
@click.option("--runs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed calls per configuration.")
@click.option("--threads", type=int, callback=threads_callback, help="CPU threads (at most the CPU count).")
@click.option("--dry-run", is_flag=True, help="Measure and print, but record nothing in the artifact.")
def tune(artifact, images, reference, labels, max_drop, min_confident_agreement, min_group_cosine, runs, threads,
         dry_run):
    """Measure every backend × precision this device offers for ARTIFACT and record the fastest within the drift
    budget; `segment` and the Python API then use it on this device."""
    budget = budget_from_flags(max_drop, min_confident_agreement, min_group_cosine, defaults=MODEL_LEVEL_BUDGET)
    report = tune_artifact(artifact, list(images) or None, reference=reference, budget=budget, labels=labels,
                           threads=threads, runs=runs, record=not dry_run, log=click.echo)
    click.echo(report.to_markdown())
    if report.chosen is None:
        raise ValidationFailed(f"no configuration measured ran within the budget ({report.budget.describe()}): "
                               f"nothing is recorded")
    if not dry_run:
        click.echo(f"recorded in {artifact}/tuned.json for this device")


@cli.command(epilog="Example:\n\n  groupvit-edge diagnose --ref artifacts/fp32 --candidate artifacts/int8 "
                     "--images photos/ "
             "--suggest --report diagnose/")
@click.option("--ref", "reference", required=True,
              help="The fp32 artifact (its image.onnx runs in ONNX Runtime, as at export).")
@click.option("--candidate", required=True, help="The artifact to diagnose: INT8, FP16, or fp32 on another backend.")
@click.option("--images", multiple=True, help=IMAGES_HELP)
@click.option("--backend", help="Run the candidate on onnxruntime, openvino or tensorrt (default: the best one "
              "installed for it).")
@click.option("--tolerance-db", type=float, default=TOLERANCE_DB, show_default=True,
              help="Block outputs below this SQNR leave tolerance (30 dB: a tenth of the default drift budget's "
                   "noise, group cosine 0.995).")
@click.option("--suggest", is_flag=True, help="End with the --keep-float flag for the next INT8 export.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Write blocks.json, blocks.md and the chart blocks.svg here.")
@runtime_options
def diagnose(reference, candidate, images, backend, tolerance_db, suggest, report_dir, **values):
    """Where a candidate departs from the fp32 reference, block by block, and which blocks put the error there."""
    report = per_block_divergence(reference, candidate, list(images) or None, backend=backend,
                                  tolerance_db=tolerance_db, progress=True, **runtime_values(values))
    click.echo(report.to_markdown())
    if report_dir:
        click.echo(f"\nwrote {', '.join(str(path) for path in report.write(report_dir))}")
    if suggest:
        blocks = report.suggest()
        click.echo(f"\n--keep-float {','.join(blocks)}" if blocks else
                   "\nnothing to keep float: every block output stays within tolerance")


@cli.command(epilog="Example:\n\n  groupvit-edge info artifacts/int8")
@click.argument("artifact")
def info(artifact):
    """What ARTIFACT holds and how it was proven: target, precision, files, calibration, drift at export, the
    configuration tune chose."""
    click.echo(describe(artifact))


READINESS_TARGETS = list(readiness_targets())


@cli.command(epilog="Examples:\n\n\b\n  groupvit-edge doctor\n"
             f"  groupvit-edge doctor --artifact artifacts/int8 --target {READINESS_TARGETS[-1]}")
@click.option("--artifact", type=click.Path(), help="Also check whether this artifact's graphs will build for "
              "--target, without that target's backend installed; exits 1 when they are not ready.")
@click.option("--target", type=click.Choice(READINESS_TARGETS), default=READINESS_TARGETS[0],
              show_default=True, help="Target to check --artifact for.")
def doctor(artifact, target):
    """Show which backends this machine has and which targets it can build and run."""
    click.echo(doctor_report())
    if artifact is not None:
        readiness = readiness_report(artifact, target)
        click.echo("\n" + readiness.format(limit=50))
        if not readiness.ok:
            raise ValidationFailed(f"{readiness.summary()}; the errors above say what to change")


if __name__ == "__main__":
    main()
