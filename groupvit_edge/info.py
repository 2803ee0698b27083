"""`groupvit-edge info ARTIFACT`: what an artifact holds and how it was proven, in one screen (the manifest is
kilobytes of JSON; this is what a user looks for in it)."""
from __future__ import annotations

from pathlib import Path

from .artifact import PrecisionInfo, read_manifest
from .errors import UserError
from .listing import listed
from .metrics.uncertainty import Estimate, format_estimate
from .runtimes import choose_backend, tuned_choice


def describe(artifact) -> str:
    manifest = read_manifest(artifact)
    directory = Path(artifact)
    model, preprocess = manifest.model, manifest.preprocess
    lines = [f"{directory}: {manifest.target}, made by groupvit-edge {manifest.toolkit_version} on {manifest.created} "
             f"from {model.id} (weights {model.weights_sha256[:12]}…)",
             f"  {preprocess.height}×{preprocess.width} windows ({preprocess.resize}, stride "
             f"{preprocess.stride[0]}), {manifest.num_groups} groups, {manifest.embed_dim}-d embeddings", "",
             "files:"]
    for what, relative, _ in manifest.files():
        size = (directory / relative).stat().st_size / 1e6
        lines.append(f"  {relative:<40} {size:8.1f} MB  {what}")
    lines += ["", f"precision: {_precision(manifest.precision)}"]
    calibration = manifest.calibration
    if calibration:
        lines.append(f"calibration: {calibration.get('source') or calibration.get('count')} "
                     f"({calibration.get('method')}, {calibration.get('seconds', '?')} s, cache reused: "
                     f"{'yes' if calibration.get('reused_cache') else 'no'}); drift measured on "
                     f"{calibration.get('held_out_source') or len(calibration.get('held_out', []))}")
    lines += ["", "measured at export:"]
    for name, check in (manifest.validation or {}).items():
        if isinstance(check, dict) and "model_level" in check:
            lines.append(f"  {name}: {_check_line(check)}")
        elif name == "outlier_remedy" and isinstance(check, dict):
            lines += _remedy_lines(check, len(manifest.precision.outliers))
        elif isinstance(check, dict) and "budget" in check:
            kept = check.get("kept_float_blocks") or []
            lines.append(f"  {name}: budget {check['budget']}, {'met' if check.get('fits') else 'not met'} with "
                         f"{len(kept)} block(s) in float")
    vocabulary = manifest.vocabulary
    lines += ["", f"vocabulary: {', '.join(vocabulary.labels)}" if vocabulary else
              "vocabulary: none precomputed (labels are encoded on the fly)"]
    lines.append(f"runs here on: {_runs_here(directory)}")
    return "\n".join(lines)


def _remedy_lines(remedy: dict, readers: int) -> list[str]:
    """What the export did about activation outliers (quantization.records.OutlierRemedy), and each step's drift."""
    method = remedy.get("method") or {}
    kept = [f"SmoothQuant α={method['smooth_quant_alpha']}" if "smooth_quant_alpha" in method
            else str(method.get("method"))]
    for key, what in (("split_readers", "split"), ("float_readers", "in float")):
        if remedy.get(key):
            kept.append(f"{len(remedy[key])} reader(s) {what}")
    lines = [f"  activation outliers in {readers} INT8 reader(s): kept {', '.join(kept)}; tried:"]
    for step in remedy.get("steps") or []:
        confident = step.get("group_agreement_confident")
        figure = "—" if confident is None else f"{confident:.3f}%"
        lines.append(f"    {step.get('remedy')}: {figure} / {step['group_embed_cosine']['mean']:.5f}, "
                     f"{'fits' if step.get('fits') else 'exceeds'}")
    return lines


def _precision(precision: PrecisionInfo) -> str:
    parts = [precision.compute]
    quantized = precision.quantized_nodes
    if isinstance(quantized, str):
        parts.append(quantized)
    elif quantized:
        parts.append(f"{len(quantized)} nodes in INT8")
    if precision.inference_precision:
        parts.append(f"inference precision {precision.inference_precision}")
    kept = precision.kept_float
    if kept and kept != ("*",):
        parts.append(f"kept float: {listed(list(kept), 8)}")
    return "; ".join(parts)


def _check_line(check: dict) -> str:
    """One export check: its gated figures with their 95% intervals over photos (figures alone for an artifact
    exported before they were measured) and its verdict."""
    model = check["model_level"]
    confident = model.get("group_agreement_confident")
    cosine = model["group_embed_cosine"]
    confident_text = "—" if confident is None else f"{confident:.3f}%"
    cosine_text = f"{cosine['mean']:.5f}"
    uncertainty = check.get("uncertainty")
    if uncertainty:
        confident_text = format_estimate(_estimate(uncertainty, "group_agreement_confident"), 3, "%", named=True)
        cosine_text = format_estimate(_estimate(uncertainty, "group_embed_cosine"), 5, named=True)
    verdict = check.get("verdict")
    if verdict:
        which = "" if verdict.get("given") else "the default budget "
        needed = verdict.get("photos_needed")
        more = f", about {needed - verdict['photos']} more photos needed" if needed else ""
        ending = f" — {verdict['state'].upper() if verdict['state'] == 'outside' else verdict['state']} " \
                 f"{which}({verdict['budget']}){more}"
    else:
        ending = "" if not check.get("budget") else (" — within " if not check.get("failures") else " — OUTSIDE ") \
            + check["budget"]
    return (f"{check.get('candidate')} vs {check.get('reference')} on {len(check.get('images', []))} photos: "
            f"confident group agreement {confident_text}, group cosine {cosine_text} / {cosine['min']:.5f}, "
            f"max abs diff {max(model['max_abs_diff'].values()):.1e}{ending}")


def _estimate(uncertainty: dict, name: str) -> Estimate | None:
    return Estimate.from_dict(uncertainty[name]) if uncertainty.get(name) else None


def _runs_here(directory: Path) -> str:
    tuned = tuned_choice(directory)
    try:
        backend, _ = choose_backend(directory, tuned[0] if tuned else None)
    except UserError as error:
        return f"nothing here ({error})"
    options = tuned[1] if tuned else {}
    detail = ", ".join(f"{key} {value}" for key, value in options.items())
    return f"{backend}{f' ({detail})' if detail else ''}{' — chosen by tune on this device' if tuned else ''}"
