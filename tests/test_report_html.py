"""report.html: one self-contained page per drift report, built here from a real drift run on COCO photos at 224².

The fast tests read the HTML with html.parser; the slow ones open it in headless Chromium
(benchmarks/report_in_browser.py) and skip, saying why, where /usr/bin/chromium is not installed.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from groupvit_edge import runtimes
from groupvit_edge.metrics.drift import measure_drift
from groupvit_edge.metrics.drift_report import DriftBudget, DriftReport
from groupvit_edge.metrics.html_report import (CANDIDATE_HEADINGS, LEGEND_SECTION, RUN_SECTION,
                                               candidate_section_id, render_html)
from groupvit_edge.metrics.render import render_drift_report
from groupvit_edge.runtimes.base import ImageEncoding, Runtime

REPO = Path(__file__).resolve().parents[1]
BROWSER_CHECK = REPO / "benchmarks" / "report_in_browser.py"
CHROMIUM = Path("/usr/bin/chromium")
MIN_FONT_PX = 14
VOID_TAGS = {"meta", "img", "br", "hr", "input", "link", "source", "wbr", "col", "area", "base", "embed", "track"}
SVG_EMPTY_TAGS = {"line", "rect", "path", "circle"}      # written as <line .../>, which html.parser reports as one


class _NoisyGroupEmbeddings(Runtime):
    """The fp32 artifact with seeded noise on its group embeddings: a candidate whose classes drift unevenly,
    so the per-class chart has distinct values to sort."""
    name = "noisy-groups"

    def __init__(self, inner: Runtime, scale: float):
        self.inner, self.manifest, self.scale = inner, inner.manifest, scale
        self.rng = np.random.default_rng(0)

    def encode_image(self, pixels):
        encoding = self.inner.encode_image(pixels)
        noisy = encoding.group_embeds + self.scale * self.rng.standard_normal(encoding.group_embeds.shape)
        noisy = (noisy / np.linalg.norm(noisy, axis=-1, keepdims=True)).astype(np.float32)
        return ImageEncoding(noisy, encoding.image_embed, encoding.grouping)

    def encode_text(self, token_ids):
        return self.inner.encode_text(token_ids)


@pytest.fixture(scope="module")
def drift_run(tmp_path_factory, coco_images) -> tuple[DriftReport, Path]:
    """A drift report and its folder: the fp32 artifact against itself (no drift) and against a noisy copy,
    2 photos."""
    from groupvit_edge.exporters import export
    scratch = tmp_path_factory.mktemp("html-report")
    # one validation photo instead of four: the export's own check is not what these tests are about
    artifact = export("random:0", scratch / "fp32", "onnx", image_size=224, validation_images=coco_images[0],
                      log=lambda message: None).directory
    noisy = _NoisyGroupEmbeddings(runtimes.open(artifact), scale=0.1)
    directory = scratch / "report"
    report = measure_drift(artifact, [artifact, noisy], coco_images[:2], labels="prototypes:8", worst=2,
                           progress=False)
    render_drift_report(report, directory)
    return report, directory


@pytest.fixture(scope="module")
def report(drift_run) -> DriftReport:
    return drift_run[0]


@pytest.fixture(scope="module")
def report_dir(drift_run) -> Path:
    return drift_run[1]


@pytest.fixture(scope="module")
def data(report_dir) -> dict:
    return json.loads((report_dir / "drift.json").read_text())


@pytest.fixture(scope="module")
def page(report_dir) -> str:
    return (report_dir / "report.html").read_text(encoding="utf-8")


class _Outline(HTMLParser):
    """What the tests look for: nesting errors, section ids, headings per section, images, chart rows."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.errors: list[str] = []
        self.sections: dict[str, list[str]] = {}
        self.images: list[dict] = []
        self.charts: dict[str, list[tuple[str, str]]] = {}     # section → [(label, value text)] in order
        self._section = self._text_of = None
        self._text = ""
        self._label = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in VOID_TAGS:
            if tag == "img":
                self.images.append(attrs)
            return
        self.open.append(tag)
        if tag == "section":
            self._section = attrs.get("id")
            self.sections[self._section] = []
        if tag == "svg" and "iou-chart" in attrs.get("class", ""):
            self.charts[self._section] = []
        if tag in ("h2", "h3") or (tag == "text" and attrs.get("class") in ("label", "value")):
            self._text_of, self._text = (tag, attrs.get("class")), ""

    def handle_startendtag(self, tag, attrs):
        if tag not in VOID_TAGS | SVG_EMPTY_TAGS:
            self.errors.append(f"self-closed <{tag}/>")

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
            return
        self.open.pop()
        if self._text_of and self._text_of[0] == tag:
            self._finish_text(*self._text_of)
            self._text_of = None

    def handle_data(self, data):
        if self._text_of:
            self._text += data

    def _finish_text(self, tag, kind):
        text = self._text.strip()
        if tag in ("h2", "h3"):
            self.sections[self._section].append(text)
        elif kind == "label":
            self._label = text
        else:
            self.charts[self._section].append((self._label, text))


@pytest.fixture(scope="module")
def outline(page) -> _Outline:
    parser = _Outline()
    parser.feed(page)
    parser.close()
    return parser


def test_page_parses_with_balanced_tags(outline):
    assert outline.errors == [] and outline.open == []


def test_page_is_self_contained(page):
    for forbidden in ("http://", "https://", 'src="/', "<link", "@import", "<script", "url("):
        # the SVG namespace is an identifier, never fetched
        assert forbidden not in page.replace('xmlns="http://www.w3.org/2000/svg"', ""), forbidden


def test_every_photo_panel_is_inline_and_byte_identical(report_dir, data, outline):
    expected = [path.read_bytes() for index in range(1, len(data["candidates"]) + 1)
                for path in sorted(report_dir.glob(f"{index:02d}-*-worst*.png"), key=_rank)]
    sources = [image["src"] for image in outline.images]
    assert len(expected) == sum(len(c["class_level"]["worst_images"]) for c in data["candidates"]) == 4
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert [base64.b64decode(source.split(",", 1)[1]) for source in sources] == expected
    assert all(image["alt"] for image in outline.images)


def _rank(path: Path) -> int:
    return int(re.search(r"-worst(\d+)-", path.name).group(1))


def test_the_page_lists_exactly_the_panels_written(report_dir, data, outline, page):
    """One image per worst-photo PNG in the folder, in drift.json's order, each with its photo and agreement."""
    written = sorted(report_dir.glob("*-worst*.png"))
    captions = [f"Worst {rank}: {Path(worst['image']).name}, {worst['agreement']:.2f}% of pixels agree with the "
                f"reference" for candidate in data["candidates"]
                for rank, worst in enumerate(candidate["class_level"]["worst_images"], start=1)]
    assert len(outline.images) == len(written) == len(captions) == 4
    assert [image["alt"] for image in outline.images] == captions
    assert all(page.count(f"<figcaption>{caption}</figcaption>") == 1 for caption in captions)


def test_expected_sections_and_headings(outline, data, page):
    assert RUN_SECTION in outline.sections and LEGEND_SECTION in outline.sections
    for index, candidate in enumerate(data["candidates"], start=1):
        headings = outline.sections[candidate_section_id(index)]
        assert headings[0].startswith(f"Candidate {index}: {candidate['source']}")
        assert headings[1:] == list(CANDIDATE_HEADINGS)
    assert "Confident pixels" in page and "Near-ties" in page
    for caption in ("<figcaption>Worst 1: ", "<figcaption>Worst 2: "):
        assert page.count(caption) == len(data["candidates"])


def test_summary_shows_the_run_figures(page, data):
    noisy = data["candidates"][1]
    for value in (noisy["class_level"]["miou_vs_reference"], noisy["class_level"]["pixel_agreement"],
                  noisy["model_level"]["group_agreement"]):
        assert f">{value:.2f}<" in page
    assert f">{noisy['model_level']['group_embed_cosine']['mean']:.5f} / " in page
    assert f"{data['images']['count']} photos" in page


def test_all_text_is_at_least_14px(page):
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    sizes = re.findall(r"font-size\s*:\s*([^;}]+)", style)
    svg_sizes = re.findall(r'font-size="([^"]+)"', page)
    assert sizes and svg_sizes
    # only px: em, %, keywords and the font shorthand would hide a size from this check
    assert all(re.fullmatch(r"\d+px", size.strip()) for size in sizes), sizes
    assert all(int(size.strip()[:-2]) >= MIN_FONT_PX for size in sizes), sizes
    assert all(float(size) >= MIN_FONT_PX for size in svg_sizes), svg_sizes
    assert not re.search(r"(^|[;{\s])font\s*:", style)
    assert re.search(r"body\s*{[^}]*font-size", style)       # the browser's default never applies
    assert not re.search(r"<(small|sub|sup)\b", page) and "style=" not in page


def test_per_class_chart_is_sorted_worst_first(outline, data, page):
    for index, candidate in enumerate(data["candidates"], start=1):
        rows = outline.charts[candidate_section_id(index)]
        per_class = candidate["class_level"]["per_class_iou"]
        measured = {name: iou for name, iou in per_class.items() if iou is not None}
        assert sorted(label for label, _ in rows) == sorted(measured)
        values = [float(value) for _, value in rows]
        assert values == sorted(values)
        assert all(value == f"{measured[label]:.1f}" for label, value in rows)
    noisy = data["candidates"][1]["class_level"]["per_class_iou"]
    shown = [float(value) for _, value in outline.charts[candidate_section_id(2)]]
    assert len(set(shown)) >= 3, f"the noisy candidate should drift unevenly, got {shown}: the sort is untested"
    absent = [name for name, iou in noisy.items() if iou is None]
    assert absent and f"so no IoU: {', '.join(absent)}</p>" in page


def test_chart_has_axes_and_ticks(page):
    chart = re.search(r'<svg class="iou-chart".*?</svg>', page, re.S).group(0)
    ticks = re.findall(r'<text class="tick"[^>]*>(\d+)</text>', chart)
    assert ticks == ["0", "20", "40", "60", "80", "100"]
    assert "IoU vs reference (%)" in chart


def test_text_from_the_run_is_escaped(report):
    same, noisy = report.candidates
    # the noisy candidate fails this budget, so its name reaches the page in a failure sentence too
    hostile = dataclasses.replace(
        report, reference=dataclasses.replace(report.reference, source='<img src=x onerror="alert(1)">'),
        candidates=[dataclasses.replace(same, class_level=dataclasses.replace(
                        same.class_level, per_class_iou={"<b>cat</b> & dog": 50.0, "sky": None})),
                    dataclasses.replace(noisy, source="a <script> candidate")],
        budget=DriftBudget(min_group_cosine=0.995))
    page = render_html(hostile, [[("caption with <i>", b"png")], []])
    assert "a &lt;script&gt; candidate: mean group-embedding cosine" in page
    assert "<img src=x" not in page and "<b>cat" not in page and "<script>" not in page and "<i>" not in page
    assert "&lt;b&gt;cat&lt;/b&gt; &amp; dog" in page and "caption with &lt;i&gt;" in page


def test_budget_verdicts_when_the_report_carries_them(report):
    # the artifact against itself passes; the noisy copy's group embeddings fail the cosine limit
    judged = dataclasses.replace(report, budget=DriftBudget(min_group_cosine=0.995))
    page = render_html(judged, [[], []])
    assert page.count("group cosine mean ≥ 0.995") == 2
    assert '<p class="passed">Within the budget' in page
    assert '<p class="failed">Outside the budget' in page and "is below 0.995</li>" in page
    assert "No budget was applied" in render_html(report, [[], []])     # no budget: said, not implied


def test_drift_json_carries_the_verdicts_of_the_budget(report):
    judged = dataclasses.replace(report, budget=DriftBudget(min_group_cosine=0.995)).to_dict()
    assert judged["budget"] == "group cosine mean ≥ 0.995"
    assert judged["candidates"][0]["failures"] == [] and len(judged["candidates"][1]["failures"]) == 1
    assert "budget" not in report.to_dict() and "failures" not in report.to_dict()["candidates"][0]


def test_panels_must_match_the_candidates(report):
    with pytest.raises(ValueError):
        render_html(report, [[]])


def test_drift_report_folder_includes_report_html(tmp_path, coco_images, report_dir):
    """`drift --report` writes report.html itself (the call in metrics/render.py's _write_report_files)."""
    artifact = report_dir.parent / "fp32"
    render_drift_report(measure_drift(artifact, [artifact], coco_images[:1], labels="prototypes:4", worst=1,
                                      progress=False), tmp_path / "report")
    page = tmp_path / "report" / "report.html"
    assert page.is_file(), "metrics/render.py does not call html_report.write_html"
    assert page.read_text(encoding="utf-8").count('src="data:image/png;base64,') == 1


# ------------------------------------------------------------------------------------ re-rendered from drift.json

def test_a_saved_drift_json_reads_back_as_the_report_and_renders_the_same_page(report, report_dir, data, tmp_path):
    """measure → drift.json → from_dict → render gives the page the measured report gave, byte for byte: the
    worst-photo PNGs come from the saved folder, everything else from drift.json alone."""
    saved = DriftReport.from_dict(data)
    assert saved == report and saved.evidence is None and saved.to_dict() == data
    render_drift_report(saved, tmp_path / "again", photos_from=report_dir)
    assert (tmp_path / "again" / "report.html").read_bytes() == (report_dir / "report.html").read_bytes()
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == sorted(p.name for p in report_dir.iterdir()
                                                                              if p.name != "report.png")
    for name in ("drift.json", "drift.md"):
        assert (tmp_path / "again" / name).read_text() == (report_dir / name).read_text()


def test_a_budget_reads_back_from_its_description():
    for budget in (DriftBudget(), DriftBudget(max_drop=1.0, min_confident_group_agreement=99.9),
                   DriftBudget(min_group_agreement=99.0, min_group_cosine=0.995, min_group_cosine_worst=0.9,
                               max_abs_diff=1e-3)):
        assert DriftBudget.from_description(budget.describe()) == budget


def test_the_report_command_rerenders_a_saved_report(report_dir, tmp_path):
    done = _cli("report", report_dir / "drift.json", "--out", tmp_path / "again")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "again" / "report.html").read_bytes() == (report_dir / "report.html").read_bytes()
    # into the folder it reads from: the worst-photo PNGs are read before the folder is replaced
    done = _cli("report", tmp_path / "again" / "drift.json", "--out", tmp_path / "again")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "again" / "report.html").read_bytes() == (report_dir / "report.html").read_bytes()


def test_the_report_command_refuses_bad_input_in_one_sentence(tmp_path):
    not_json = tmp_path / "notes.json"
    not_json.write_text("hello")
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"schema": "groupvit-edge/eval/1", "miou": 50.0}))
    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps({"schema": "groupvit-edge/drift/1", "reference": {}}))
    for given, needle in ((tmp_path / "gone.json", "does not exist"), (not_json, "is not JSON"),
                          (eval_json, "is not a groupvit-edge drift report"),
                          (truncated, "is not a groupvit-edge drift report")):
        done = _cli("report", given, "--out", tmp_path / "out")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: {given} {needle}") and "groupvit-edge drift --report" in lines[0]
        assert not (tmp_path / "out").exists()


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groupvit_edge.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------- real browser

def _browser_check(target: Path) -> subprocess.CompletedProcess:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium): the page was not opened in a "
                    f"browser")
    return subprocess.run([sys.executable, str(BROWSER_CHECK), str(target)], capture_output=True, text=True,
                          timeout=180)


@pytest.mark.slow
def test_report_loads_in_chromium_without_errors(report_dir):
    (report_dir / "report.png").unlink(missing_ok=True)
    run = _browser_check(report_dir)
    print(run.stdout, run.stderr)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| console errors | none |" in run.stdout and "| network requests besides the page | none |" in run.stdout
    assert "| images decoded | 4/4 |" in run.stdout and "| per-class charts | 2 |" in run.stdout
    from PIL import Image
    with Image.open(report_dir / "report.png") as screenshot:
        assert screenshot.width == 1280 and screenshot.height > 1500


@pytest.mark.slow
def test_browser_check_fails_on_errors_requests_and_small_text(tmp_path):
    """The check itself can fail: a page with a thrown error, a remote image and 10 px text."""
    page = tmp_path / "report.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title></head><body>'
                    '<p style="font-size:10px">tiny</p><img src="http://127.0.0.1:9/remote.png" alt="remote">'
                    '<script>console.error("drawn badly"); throw new Error("boom");</script></body></html>')
    run = _browser_check(page)
    assert run.returncode == 1, run.stdout + run.stderr
    for expected in ("console error: console: drawn badly", "console error: Error: boom",
                     "network request: http://127.0.0.1:9/remote.png", "missing: section #run",
                     "image not decoded: remote", "text at 10.0 px"):
        assert expected in run.stdout, expected
