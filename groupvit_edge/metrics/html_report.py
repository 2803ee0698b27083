"""report.html: a drift report as one self-contained page, the file a user attaches to a pull request.

Nothing is fetched when it opens: the CSS is inline, the photo panels are base64 PNGs and the per-class IoU
chart is inline SVG. No JavaScript. Every piece of text from the report or a caption goes through html.escape.

Budget verdicts are shown when the report has a budget (`DriftReport.budget`, with each candidate's failures
under it): `measure_drift(..., budget=)` gives it one, as `drift` with budget flags and `groupvit_edge.testing`
do; without a budget the page says none was applied.
"""
from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from pathlib import Path

from ..files import write_bytes_atomic
from ..segmentation.segmenter import palette

# format_figure is drift.md's rounding, so the page and the terminal table agree
from .drift_report import ESTIMATE_ROWS, CandidateDrift, Cosine, DriftReport, DriftVocabulary, format_figure

Panel = tuple[str, bytes]            # (caption, PNG bytes)
# The page's fixed outline, which the tests and benchmarks/report_in_browser.py look for.
RUN_SECTION, LEGEND_SECTION = "run", "legend"
CANDIDATE_HEADINGS = ("Summary", "Worst photos", "Per-class IoU")

# Sizes in px, all ≥ 14: the page must read at a glance once a pull request shrinks it into a column.
CSS = """
body { font-family: system-ui, "DejaVu Sans", sans-serif; font-size: 16px; line-height: 1.45; color: #1b1b1b;
       max-width: 1240px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 28px; margin: 0 0 12px; }
h2 { font-size: 22px; margin: 36px 0 8px; padding-top: 16px; border-top: 2px solid #ccc; }
h3 { font-size: 18px; margin: 24px 0 8px; }
table { border-collapse: collapse; font-size: 15px; margin: 8px 0; }
th[scope="row"] { white-space: nowrap; }
th, td { padding: 4px 12px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody th[colspan] { background: #f0f0f0; font-size: 15px; }
code { font-size: 15px; }
figure { margin: 12px 0 20px; overflow-x: auto; }   /* a wide chart scrolls rather than shrinking its text */
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 14px; color: #444; }
.failed { color: #a40000; font-weight: bold; }
.passed { color: #1d6b1d; font-weight: bold; }
.note { color: #555; }
dl.legend dt { font-weight: bold; margin-top: 8px; }
dl.legend dd { margin-left: 16px; }
"""

CHART_FONT_PX = 14
CHART_ROW_PX = 24
CHART_PLOT_PX = 420
CHART_CHAR_PX = 8.6                  # a generous average glyph width at 14 px, so labels never overlap the bars
CHART_VALUE_PX = 56                  # room right of a full bar for "100.0"


def write_html(report: DriftReport, panels: Sequence[Sequence[Panel]], path: str | Path) -> Path:
    """Write report.html for `report`; `panels[i]` are candidate i's (caption, PNG) photo panels."""
    # Bytes, not text: the page declares UTF-8 and must not depend on the locale that writes it.
    return write_bytes_atomic(path, render_html(report, panels).encode("utf-8"))


def render_html(report: DriftReport, panels: Sequence[Sequence[Panel]]) -> str:
    candidates = report.candidates
    if len(panels) != len(candidates):
        raise ValueError(f"{len(panels)} panel lists for {len(candidates)} candidates")
    sections = [_run_section(report), _legend_section(report)]
    sections += [_candidate_section(index, candidate, report, candidate_panels)
                 for index, (candidate, candidate_panels) in enumerate(zip(candidates, panels), start=1)]
    title = f"Drift vs {report.reference.source}"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>{escape(title)}</h1>\n" + "\n".join(sections) + "\n</body>\n</html>\n")


def candidate_section_id(index: int) -> str:
    """The id of candidate `index`'s section (1-based, the report's order)."""
    return f"candidate-{index}"


# ------------------------------------------------------------------------------------------------- sections

def _run_section(report: DriftReport) -> str:
    reference, images, settings, truth = report.reference, report.images, report.settings, report.ground_truth
    rows = [("Reference", f"{reference.source} ({reference.target}, {reference.backend})"),
            ("Photos", f"{images.count} photos, {images.windows} windows of "
                       f"{images.size[0]}×{images.size[1]} ({images.resize}) from " + ", ".join(images.source)),
            ("Vocabulary", _describe_vocabulary(report.vocabulary)),
            ("Settings", f"confident margin {settings.confident_margin} (relative, best vs second); "
                         f"background threshold {_or_none(settings.background_threshold)}")]
    if truth:
        rows.append(("Ground truth", f"{truth.masks} ({truth.classes})"))
    rows.append(("Time", f"{report.timing.total_s:.1f} s in total"))
    body = "".join(f'<tr><th scope="row">{escape(name)}</th><td>{escape(value)}</td></tr>' for name, value in rows)
    return f'<section id="{RUN_SECTION}">\n<h2>Run</h2>\n<table>{body}</table>\n</section>'


def _describe_vocabulary(vocabulary: DriftVocabulary) -> str:
    labels = vocabulary.labels
    if vocabulary.kind == "prototypes":
        return (f"{len(labels)} prototypes: k-means centroids (seed {vocabulary.seed}) of the reference's "
                f"group embeddings, so no class names are needed")
    return f"{len(labels)} classes ({vocabulary.kind}): " + ", ".join(labels)


def _legend_section(report: DriftReport) -> str:
    margin = report.settings.confident_margin
    return f"""<section id="{LEGEND_SECTION}">
<h2>How to read this</h2>
<dl class="legend">
<dt>Confident pixels</dt>
<dd>Pixels where the reference's best choice beats its runner-up by at least {escape(str(margin))} of the best
score (relative margin). A candidate that flips a confident pixel has really drifted.</dd>
<dt>Near-ties</dt>
<dd>All other pixels: the reference itself barely decided, so any change of arithmetic (fp16, int8, another
backend) may flip them. Random or weakly trained weights make near-ties common. Judge a candidate by its
confident figures; the near-tie share says how much of the picture that leaves out.</dd>
<dt>Class level and model level</dt>
<dd>Class level scores the candidate's class maps against the reference's, for this vocabulary. Model level
compares the final groups and the embeddings, with no vocabulary; there the near-tie decision is between
groups rather than classes.</dd>
</dl>
</section>"""


def _candidate_section(index: int, candidate: CandidateDrift, report: DriftReport, panels: Sequence[Panel]) -> str:
    heading = f"Candidate {index}: {candidate.source} ({candidate.target})"
    figures = "\n".join(_figure(caption, png) for caption, png in panels) or '<p class="note">No photos.</p>'
    budget = report.budget.describe() if report.budget is not None else None
    return (f'<section id="{candidate_section_id(index)}">\n<h2>{escape(heading)}</h2>\n'
            f'<p class="note">{escape(candidate.backend)}</p>\n'
            f"{_budget_verdict(report.verdict(candidate), budget)}\n"
            f"<h3>{CANDIDATE_HEADINGS[0]}</h3>\n{_uncertainty_table(candidate)}\n{_summary_table(candidate)}\n"
            f"<h3>{CANDIDATE_HEADINGS[1]}</h3>\n{figures}\n"
            f"<h3>{CANDIDATE_HEADINGS[2]}</h3>\n{_per_class_figure(candidate)}\n</section>")


def _per_class_figure(candidate: CandidateDrift) -> str:
    per_class = candidate.class_level.per_class_iou
    # Classes in neither map have no IoU; as one line, they do not bury the measured bars (80 COCO classes).
    absent = [name for name, value in per_class.items() if value is None]
    absent_line = (f'<p class="note absent">In neither the reference\'s nor the candidate\'s maps, so no IoU: '
                   f'{escape(", ".join(absent))}</p>' if absent else "")
    chart = iou_chart_svg(per_class, f"Per-class IoU vs reference, {candidate.source}")
    return (f"<figure>{chart}<figcaption>Worst class first. The swatch is the class's colour in the photo "
            f"panels.</figcaption></figure>\n{absent_line}")


def _budget_verdict(failures: list[str] | None, budget: str | None) -> str:
    limits = f" ({escape(budget)})" if budget else ""
    if failures is None:
        return ('<p class="note">No budget was applied: pass <code>--max-drop</code>, '
                '<code>--min-confident-agreement</code> or <code>--min-group-cosine</code> for a verdict.</p>')
    if not failures:
        return f'<p class="passed">Within the budget{limits}.</p>'
    items = "".join(f"<li>{escape(failure)}</li>" for failure in failures)
    return f'<p class="failed">Outside the budget{limits}:</p>\n<ul class="failed">{items}</ul>'


def _summary_table(candidate: CandidateDrift) -> str:
    cls, model, truth = candidate.class_level, candidate.model_level, candidate.ground_truth
    rows = [_group_row("Class level: the candidate's class maps scored against the reference's"),
            _row("mIoU vs reference (points)", format_figure(cls.miou_vs_reference),
                 format_figure(cls.miou_vs_reference_confident)),
            _row("Pixel agreement (%)", format_figure(cls.pixel_agreement),
                 format_figure(cls.pixel_agreement_confident)),
            _row("Near-tie pixels, class decision (%)", format_figure(cls.near_tie_class_share)),
            _group_row("Model level: final groups and embeddings, no vocabulary"),
            _row("Final-group agreement (%)", format_figure(model.group_agreement),
                 format_figure(model.group_agreement_confident, 3)),
            _row("Near-tie pixels, group decision (%)", format_figure(model.near_tie_share)),
            _row("Group-embedding cosine (mean / min)", _cosine(model.group_embed_cosine)),
            _row("Image-embedding cosine (mean / min)", _cosine(model.image_embed_cosine))]
    rows += [_row(f"Max abs difference, {output}", f"{value:.2e}") for output, value in model.max_abs_diff.items()]
    if truth:
        rows += [_group_row("Ground truth: each side against the masks"),
                 _row("mIoU, reference → candidate", f"{truth.reference_miou:.2f} → {truth.candidate_miou:.2f}"),
                 _row("mIoU drop (points)", f"{truth.drop:.2f}"),
                 _row("Pixel accuracy, reference → candidate (%)",
                      f"{truth.reference_pixel_accuracy:.2f} → {truth.candidate_pixel_accuracy:.2f}")]
    rows.append(_row("Candidate encoding time (s)", f"{candidate.encode_seconds:.2f}"))
    head = ('<thead><tr><th scope="col">Figure</th><th scope="col">Value</th>'
            '<th scope="col">On confident pixels</th></tr></thead>')
    return f'<table class="summary">{head}<tbody>{"".join(rows)}</tbody></table>'


def _uncertainty_table(candidate: CandidateDrift) -> str:
    """The gated figures with their 95% intervals over photos and worst photos: what a budget is judged on."""
    uncertainty = candidate.uncertainty
    if uncertainty is None:
        return ('<p class="note">No intervals over photos: this report was read from a drift.json written '
                'without them, so its figures stand alone.</p>')
    rows = []
    for name, what, digits, unit in ESTIMATE_ROWS:
        figure = getattr(uncertainty, name)
        if figure is None:
            continue
        interval = f"{figure.low:.{digits}f}–{figure.high:.{digits}f}" if figure.has_interval else "none"
        cells = [f"{figure.value:.{digits}f}{unit}", interval,
                 f"{figure.worst:.{digits}f}{unit} ({Path(figure.worst_photo).name})", str(figure.photos)]
        rows.append(f'<tr><th scope="row">{escape(what)}</th>'
                    + "".join(f'<td class="number">{escape(cell)}</td>' for cell in cells) + "</tr>")
    head = ('<thead><tr><th scope="col">Gated figure</th><th scope="col">Value</th><th scope="col">95% interval'
            '</th><th scope="col">Worst photo</th><th scope="col">Photos</th></tr></thead>')
    note = (f'<p class="note">The interval is a percentile bootstrap over photos (seed {uncertainty.seed}, '
            f'{uncertainty.resamples} resamples): a budget passes only when its bound passes. Its width says how '
            f'much these photos prove.</p>')
    return f'<table class="uncertainty">{head}<tbody>{"".join(rows)}</tbody></table>\n{note}'


def _row(name: str, value: str, confident: str | None = None) -> str:
    # A figure with no confident counterpart leaves that cell empty: a dash would read as "not measured".
    cells = f'<td class="number">{escape(value)}</td><td class="number">{escape(confident or "")}</td>'
    return f'<tr><th scope="row">{escape(name)}</th>{cells}</tr>'


def _group_row(title: str) -> str:
    return f'<tr><th colspan="3" scope="rowgroup">{escape(title)}</th></tr>'


def _cosine(cosine: Cosine) -> str:
    return f"{cosine.mean:.5f} / {cosine.min:.5f}"


def _or_none(value) -> str:
    return "none" if value is None else str(value)


def _figure(caption: str, png: bytes) -> str:
    source = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="{source}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


# ---------------------------------------------------------------------------------------------------- chart

def iou_chart_svg(per_class: dict[str, float | None], title: str) -> str:
    """Horizontal bars of IoU (0..100), worst first, with an x axis, tick labels and a value on every bar;
    classes without an IoU (absent from both maps) are left out."""
    colors = palette(len(per_class))
    color_of = {name: "#" + "".join(f"{int(c):02x}" for c in colors[i]) for i, name in enumerate(per_class)}
    rows = [(name, value) for value, name in sorted((value, name) for name, value in per_class.items()
                                                     if value is not None)]
    label_px = int(max([len(name) for name, _ in rows] + [6]) * CHART_CHAR_PX) + 28
    top, axis_px = 8, 48
    width = label_px + CHART_PLOT_PX + CHART_VALUE_PX
    height = top + CHART_ROW_PX * len(rows) + axis_px
    # The title is for screen readers and for the chart copied out of the page; the heading above names it.
    parts = _chart_axis(label_px, top, top + CHART_ROW_PX * len(rows))
    parts += [_chart_row(row, name, value, color_of[name], label_px, top) for row, (name, value) in enumerate(rows)]
    return (f'<svg class="iou-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="system-ui, DejaVu Sans, sans-serif" '
            f'font-size="{CHART_FONT_PX}" role="img" aria-label="{escape(title)}">'
            f"<title>{escape(title)}</title>{''.join(parts)}</svg>")


def _chart_x(label_px: int, value: float) -> float:
    return label_px + CHART_PLOT_PX * value / 100.0


def _chart_axis(label_px: int, top: int, bottom: int) -> list[str]:
    parts = []
    for tick in range(0, 101, 20):
        x = _chart_x(label_px, tick)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#ddd"/>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 20}" text-anchor="middle">{tick}</text>')
    parts.append(f'<line x1="{label_px}" y1="{top}" x2="{label_px}" y2="{bottom}" stroke="#333"/>')
    parts.append(f'<line x1="{label_px}" y1="{bottom}" x2="{_chart_x(label_px, 100):.1f}" y2="{bottom}" '
                 f'stroke="#333"/>')
    parts.append(f'<text x="{_chart_x(label_px, 50):.1f}" y="{bottom + 42}" text-anchor="middle">'
                 f"IoU vs reference (%)</text>")
    return parts


def _chart_row(row: int, name: str, value: float, color: str, label_px: int, top: int) -> str:
    y = top + CHART_ROW_PX * row
    baseline = y + CHART_ROW_PX / 2 + CHART_FONT_PX * 0.35
    end = _chart_x(label_px, value)
    return (f'<g class="row"><text class="label" x="{label_px - 26}" y="{baseline:.1f}" text-anchor="end">'
            f"{escape(name)}</text>"
            f'<rect x="{label_px - 20}" y="{y + 6}" width="12" height="12" fill="{color}" stroke="#666"/>'
            f'<rect class="bar" x="{label_px}" y="{y + 4}" width="{end - label_px:.1f}" '
            f'height="{CHART_ROW_PX - 8}" fill="#4a78b5"/>'
            f'<text class="value" x="{end + 6:.1f}" y="{baseline:.1f}">{value:.1f}</text></g>')
