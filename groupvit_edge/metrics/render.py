"""The drift report folder: drift.json, drift.md, report.html, side-by-side PNGs of the worst photos and per-class
IoU charts, rendered from a `DriftReport` — one just measured, or one read back from a saved drift.json."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..files import all_ours, replace_directory, write_json_atomic
from ..segmentation.groups import group_image, photo_map, raw_group_map, window_groups
from ..segmentation.preprocess import load_image
from ..segmentation.segmenter import Segmentation, label_map, palette
from .drift_report import DriftReport, MeasuredPhoto, PhotoEvidence, WorstImage
from .html_report import Panel, write_html

DISAGREE = (255, 40, 40)


def write_json(data: dict, path: str | Path) -> Path:
    return write_json_atomic(path, data)


def render_drift_report(report: DriftReport, directory, photos_from=None) -> Path:
    """Write the report folder for `report` into `directory`, like an artifact: built beside it and swapped in, so
    an interrupted run leaves the previous report or the new one, never truncated PNGs or a mix.

    The worst-photo panels are drawn from `report.evidence` (a report `measure_drift` returned); a report read
    from drift.json has none, and takes the worst-photo PNGs saved beside it in `photos_from` (those missing
    there are left out of the page)."""
    panels = _worst_photos(report, photos_from)      # read before the swap: `photos_from` may be `directory`
    with replace_directory(directory, ours=_report_entries, what="drift report", announce=False) as staging:
        _write_report_files(report, panels, staging)
    return Path(directory)


def _report_entries(directory: Path):
    return all_ours(directory) if (Path(directory) / "drift.json").is_file() else None


def _worst_photos(report: DriftReport, photos_from) -> list[list[tuple[str, str, bytes]]]:
    """Per candidate, (PNG file name, caption, PNG) of each of its worst photos that can be shown."""
    evidence = report.evidence
    by_path = {str(item.path): item for item in evidence.photos} if evidence is not None else {}
    found = []
    for index, candidate in enumerate(report.candidates, start=1):
        photos = []
        for rank, worst in enumerate(candidate.class_level.worst_images, start=1):
            name = f"{_candidate_slug(index, candidate.source)}-worst{rank}-{Path(worst.image).stem}.png"
            if evidence is not None:
                photos.append((name, worst_caption(rank, worst),
                               _png(comparison(by_path[worst.image], index, evidence))))
            elif photos_from is not None and (Path(photos_from) / name).is_file():
                photos.append((name, worst_caption(rank, worst), (Path(photos_from) / name).read_bytes()))
        found.append(photos)
    return found


def _write_report_files(report: DriftReport, panels: list[list[tuple[str, str, bytes]]], directory: Path):
    write_json(report.to_dict(), directory / "drift.json")
    (directory / "drift.md").write_text(report.to_markdown() + "\n")
    for index, (candidate, photos) in enumerate(zip(report.candidates, panels), start=1):
        for name, _, png in photos:
            (directory / name).write_bytes(png)
        iou_chart(candidate.class_level.per_class_iou, f"per-class IoU vs reference: {candidate.source}"
                  ).save(directory / f"{_candidate_slug(index, candidate.source)}-per-class-iou.png")
    page_panels: list[list[Panel]] = [[(caption, png) for _, caption, png in photos] for photos in panels]
    write_html(report, page_panels, directory / "report.html")


def worst_caption(rank: int, worst: WorstImage) -> str:
    """report.html's caption for the `rank`-th worst photo."""
    return f"Worst {rank}: {Path(worst.image).name}, {worst.agreement:.2f}% of pixels agree with the reference"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _candidate_slug(index: int, source: str) -> str:
    """How candidate `index`'s files are named."""
    return f"{index:02d}-" + (re.sub(r"[^A-Za-z0-9]+", "-", Path(source).name or source).strip("-")[:40]
                              or "candidate")


NEAR_TIE = (255, 190, 0)
TITLE_SIZE = 18


def comparison(item: MeasuredPhoto, index: int, evidence: PhotoEvidence) -> Image.Image:
    """Two rows for one photo — classes: reference | candidate `index` | where they differ; groups: reference |
    candidate | where they differ — with differences on near-tie pixels (amber) told apart from confident flips
    (red)."""
    vocabulary, logit_scale = evidence.vocabularies[index], evidence.logit_scales[index]
    background, class_names = evidence.background, evidence.class_names
    image, prepared = load_image(item.path), item.prepared
    assert item.reference_cache is not None, "measure_drift compares a photo before keeping it as evidence"
    reference_decisions, reference_labels, class_confident = item.reference_cache
    encoding = item.encodings[index]
    candidate_groups = window_groups(encoding.grouping, prepared)
    candidate_labels = label_map(prepared, encoding, vocabulary.text_embeds, logit_scale, background,
                                 candidate_groups)[0]
    per_window = encoding.grouping.shape[1]
    groups = [raw_group_map(prepared, [d.groups for d in reference_decisions], per_window),
              raw_group_map(prepared, candidate_groups, per_window)]
    group_confident = photo_map(prepared, [d.confident for d in reference_decisions], True)
    rows = [[_overlay(image, labels, class_names) for labels in (reference_labels, candidate_labels)],
            [group_image(ids) for ids in groups]]
    titles = [["classes: reference", "classes: candidate"], ["groups: reference", "groups: candidate"]]
    for row, title, (ours, theirs, confident) in zip(rows, titles, ((reference_labels, candidate_labels,
                                                                     class_confident),
                                                                    (*groups, group_confident))):
        panel, caption = _differences(image, ours != theirs, confident)
        row.append(panel)
        title.append(caption)
    return _grid(rows, titles)


def _overlay(image, labels, class_names) -> Image.Image:
    return Segmentation(labels, np.zeros(labels.shape, np.float32), list(class_names), image).overlay()


def _differences(image: Image.Image, differ: np.ndarray, confident: np.ndarray) -> tuple[Image.Image, str]:
    grey = np.asarray(image.convert("L").convert("RGB"), dtype=np.float32) * 0.6
    grey[differ & confident] = DISAGREE
    grey[differ & ~confident] = NEAR_TIE
    caption = (f"differ {100 * differ.mean():.2f}%: confident {100 * (differ & confident).mean():.2f}% (red), "
               f"near-tie {100 * (differ & ~confident).mean():.2f}% (amber)")
    return Image.fromarray(grey.astype(np.uint8), "RGB"), caption


def _grid(rows: list[list[Image.Image]], titles: list[list[str]]) -> Image.Image:
    font = ImageFont.load_default(size=TITLE_SIZE)
    width, height = rows[0][0].size
    band = TITLE_SIZE + 10
    canvas = Image.new("RGB", (3 * width + 8, len(rows) * (height + band)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (row, row_titles) in enumerate(zip(rows, titles)):
        top = r * (height + band)
        for column, (panel, title) in enumerate(zip(row, row_titles)):
            canvas.paste(panel, (column * (width + 4), top + band))
            draw.text((column * (width + 4) + 4, top + 4), title, fill=(0, 0, 0), font=font)
    return canvas


def iou_chart(per_class: dict, title: str, bar_width: int = 300) -> Image.Image:
    """A horizontal bar per class (IoU 0..100); classes absent from both sides are listed as n/a."""
    rows = list(per_class.items())
    label_width = max([len(name) for name, _ in rows] + [10]) * 6 + 10
    image = Image.new("RGB", (label_width + bar_width + 60, 24 + 14 * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), title, fill=(0, 0, 0))
    colors = palette(len(rows) + 1)
    for row, (name, value) in enumerate(rows):
        y = 22 + 14 * row
        draw.text((4, y), name, fill=(0, 0, 0))
        if value is None:
            draw.text((label_width, y), "n/a", fill=(128, 128, 128))
            continue
        color = tuple(int(c) for c in colors[row + 1]) if row + 1 < len(colors) else (90, 90, 200)
        draw.rectangle([label_width, y + 2, label_width + int(bar_width * value / 100), y + 11], fill=color)
        draw.text((label_width + bar_width + 6, y), f"{value:.1f}", fill=(0, 0, 0))
    return image
