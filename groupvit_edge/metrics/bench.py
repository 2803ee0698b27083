"""`bench`: one row per artifact — speed, size, memory and accuracy against the fp32 reference, side by side.

Everything the user gives (settings, photos, --labels, --ref, runtime options) is checked before the first artifact
is measured. Each artifact then runs in its own spawned process (`isolation`), so its peak RSS is its own. What
goes wrong with one artifact's backend becomes that artifact's "failed" row instead of ending the table, and
`bench` exits 1: no backend installed here can run it, the backend refuses or fails to open it (a missing device,
a file that fails its sha256 check), raises while running a graph, or its process dies. A user error found only
while measuring (a prototypes:K larger than these photos allow) still ends bench with its sentence; an error in
the measuring code itself is a bug and stays a traceback.
"""
from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from .. import runtimes
from ..artifact import Manifest, read_manifest
from ..errors import UserError
from ..options import check_number
from ..runtimes import is_artifact
from ..runtimes.base import Runtime
from ..segmentation import Segmenter
from ..segmentation.preprocess import list_images, load_image, prepare
from ..segmentation.vocabulary import parse_labels
from .drift import DEFAULT_PROBE, check_vocabulary, validate_candidate
from .drift_report import format_figure
from .isolation import BackendFailed, Failure, open_guarded, run_isolated
from .photo_drift import DriftUncertainty
from .uncertainty import Estimate, format_estimate

SCHEMA = "groupvit-edge/bench/1"


@dataclass
class BenchSettings:
    warmup: int = 3
    runs: int = 20
    threads: int | None = None
    batch: int = 1
    streams: int | None = None             # throughput mode: each backend's own `throughput_options`
    labels: str | None = DEFAULT_PROBE     # for mIoU vs the reference; prototypes need no trained weights
    segment_labels: tuple[str, ...] = ("person", "car", "dog", "tree", "sky")

    def to_dict(self) -> dict:
        """bench.json's "settings": every setting but the vocabulary the end-to-end timing segments with."""
        return {"warmup": self.warmup, "runs": self.runs, "threads": self.threads, "batch": self.batch,
                "streams": self.streams, "labels": self.labels}


@dataclass(frozen=True)
class Percentiles:
    """Milliseconds over the timed calls."""
    p50: float
    p90: float

    @classmethod
    def of(cls, milliseconds: list[float]) -> Percentiles:
        return cls(float(np.percentile(milliseconds, 50)), float(np.percentile(milliseconds, 90)))


FAILED = "failed: "                 # a failed row's status starts with it, then the first line of why


@dataclass(frozen=True, kw_only=True)
class BenchRow:
    """One artifact's row. A failed row has only its artifact, status, the traceback when the backend raised, and
    peak_rss_mb; an ok row has every measurement, with the stream and drift figures when they were measured.
    Fields are in bench.json's order."""
    artifact: str
    target: str | None = None
    backend: str | None = None                      # the runtime's description: what ran it, at which precision
    size_mb: float | None = None
    image_graph_ms: Percentiles | None = None       # per export-size window
    stream_windows_per_s: float | None = None       # with `streams` only
    end_to_end_ms: Percentiles | None = None        # per real photo: load, windows, graph, protocol
    images_per_s: float | None = None
    windows_per_image: float | None = None
    miou_vs_reference: float | None = None          # 100 for the reference itself
    group_agreement_confident: float | None = None  # None also when drift ran but no pixel was confident
    group_embed_cosine_mean: float | None = None
    # The same three figures with their 95% intervals over the photos and their worst photos
    miou_estimate: Estimate | None = None
    group_agreement_confident_estimate: Estimate | None = None
    group_embed_cosine_estimate: Estimate | None = None
    status: str                                     # "ok" or "failed: <the first line of why>"
    traceback: str | None = None
    peak_rss_mb: float | None = None                # None: the row's process died or never started

    @classmethod
    def failed(cls, artifact: str, failure: Failure) -> BenchRow:
        return cls(artifact=artifact, status=FAILED + failure.reason, traceback=failure.traceback)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def reason(self) -> str:
        """Why a failed row failed."""
        return self.status.removeprefix(FAILED)

    def to_dict(self) -> dict:
        """This row in bench.json: the fields that have a value, plus peak_rss_mb always and
        group_agreement_confident whenever the drift figures are there (it is None when nothing was confident)."""
        kept = {"peak_rss_mb"}
        if self.group_embed_cosine_mean is not None:
            kept.add("group_agreement_confident")
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None or name in kept}


def median_ms(call, runs: int, warmup: int = 1) -> float:
    """Median wall time of `call()` in milliseconds over `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _size_mb(artifact: Path) -> float:
    return sum(f.stat().st_size for f in artifact.rglob("*") if f.is_file()) / 1e6


@dataclass(frozen=True)
class _Plan:
    """One row to measure, decided before any is: the backend that runs the artifact here and its options."""
    artifact: str
    backend: str | None        # None: no backend here can run the artifact
    options: dict
    unavailable: str = ""      # why not, when backend is None


def _plan(artifact: str, settings: BenchSettings) -> _Plan:
    try:
        backend, _ = runtimes.choose_backend(artifact, verify=False)   # each child checks the files when it opens
    except UserError as error:
        return _Plan(artifact, None, {}, str(error))
    given = {"threads": settings.threads} if settings.threads else {}
    runtimes.check_options(backend, given, artifact, fix="drop it, or bench that artifact in a run without it")
    throughput = runtimes.throughput_options(backend, settings.streams) if settings.streams else {}
    return _Plan(artifact, backend, {**given, **throughput})


def measure_artifact(plan: _Plan, images: list[str], reference: str | None, settings: BenchSettings) -> BenchRow:
    """Everything for one row but its peak RSS, measured in the calling process (bench runs it in a child).
    Whatever the backend raises while opening the artifact or running a graph makes a failed row; a UserError is
    the user's input, found late, and anything else a bug: both propagate."""
    runtime = open_guarded(lambda: runtimes.open(plan.artifact, plan.backend, **plan.options))
    if isinstance(runtime, Failure):
        return BenchRow.failed(plan.artifact, runtime)
    try:
        return _measure(plan.artifact, runtime, images, reference, settings)
    except BackendFailed as error:
        return BenchRow.failed(plan.artifact, Failure.of(error.__cause__ or error))
    finally:
        runtime.close()


def _measure(artifact: str, runtime: Runtime, images: list[str], reference: str | None,
             settings: BenchSettings) -> BenchRow:
    backend = runtime.description
    windows = np.concatenate([prepare(load_image(p), runtime.manifest.preprocess).windows for p in images])
    graph_ms = _image_graph_ms(runtime, windows, settings)
    stream_windows_per_s = stream_throughput(runtime, windows, settings.warmup) if settings.streams else None
    end_to_end_ms = _end_to_end_ms(runtime, images, settings)
    row = BenchRow(artifact=artifact, target=runtime.manifest.target, backend=backend,
                   size_mb=_size_mb(Path(artifact)), image_graph_ms=Percentiles.of(graph_ms),
                   stream_windows_per_s=stream_windows_per_s, end_to_end_ms=Percentiles.of(end_to_end_ms),
                   images_per_s=1000.0 / statistics.median(end_to_end_ms),
                   windows_per_image=len(windows) / len(images), status="ok")
    if reference is None or settings.labels is None:
        return row
    drift = validate_candidate(reference, runtime, images, labels=settings.labels)
    return dataclasses.replace(row, miou_vs_reference=drift.class_level.miou_vs_reference,
                               group_agreement_confident=drift.model_level.group_agreement_confident,
                               group_embed_cosine_mean=drift.model_level.group_embed_cosine.mean,
                               **_estimates(drift.uncertainty))


def _estimates(uncertainty: DriftUncertainty | None) -> dict:
    if uncertainty is None:
        return {}
    return {"miou_estimate": uncertainty.miou_vs_reference,
            "group_agreement_confident_estimate": uncertainty.group_agreement_confident,
            "group_embed_cosine_estimate": uncertainty.group_embed_cosine}


def _image_graph_ms(runtime: Runtime, windows: np.ndarray, settings: BenchSettings) -> list[float]:
    """Milliseconds per window of each timed image-graph call of `settings.batch` windows (cycling through them)."""
    batches = [windows[i % len(windows):][:settings.batch] for i in range(settings.warmup + settings.runs)]
    batches = [b if len(b) == settings.batch else windows[:settings.batch] for b in batches]
    graph_ms = []
    for index, batch in enumerate(batches):
        started = time.perf_counter()
        runtime.encode_image(batch)
        if index >= settings.warmup:
            graph_ms.append((time.perf_counter() - started) * 1000 / len(batch))
    return graph_ms


def _end_to_end_ms(runtime: Runtime, images: list[str], settings: BenchSettings) -> list[float]:
    """Milliseconds per timed photo, segmented from its file: load, windows, graph and the paper's protocol."""
    labels = None if runtime.manifest.vocabulary_path() else list(settings.segment_labels)
    segmenter = Segmenter(runtime, labels)
    end_to_end_ms = []
    for index in range(settings.warmup + min(settings.runs, len(images))):
        started = time.perf_counter()
        segmenter.segment(images[index % len(images)])
        if index >= settings.warmup:
            end_to_end_ms.append((time.perf_counter() - started) * 1000)
    return end_to_end_ms


def stream_throughput(runtime, windows: np.ndarray, warmup: int) -> float:
    """Windows/s over the whole stream of windows: async requests where the backend has them (all streams
    busy), one call per window elsewhere, so every row answers the same question."""
    encode_stream = getattr(runtime, "encode_images_async", None)
    if encode_stream is None:
        def encode_stream(stream):
            return (runtime.encode_image(window[None]) for window in stream)
    for _ in encode_stream(windows[:max(warmup, 1)]):
        pass
    started = time.perf_counter()
    count = sum(1 for _ in encode_stream(windows))
    return count / (time.perf_counter() - started)


def _row(plan: _Plan, images, reference, settings) -> BenchRow:
    row = measure_artifact(plan, images, reference, settings)
    return dataclasses.replace(row, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _row_in_child(plan: _Plan, images, reference, settings) -> BenchRow:
    row = run_isolated(_row, plan, images, reference, settings)
    return BenchRow.failed(plan.artifact, row) if isinstance(row, Failure) else row


def benchmark(artifacts, images, *, reference=None, settings: BenchSettings | None = None,
              isolate: bool = True, log=print) -> BenchReport:
    """One row per artifact (see the module's docstring for what fails a row and what ends bench)."""
    settings = settings or BenchSettings()
    for flag, value, least in (("--warmup", settings.warmup, 0), ("--runs", settings.runs, 1),
                               ("--batch", settings.batch, 1), ("--threads", settings.threads, 1),
                               ("--streams", settings.streams, 1)):
        check_number(flag, value, minimum=least)
    check_vocabulary(settings.labels)
    parse_labels(settings.segment_labels)
    manifests = _manifests([str(a) for a in artifacts])
    paths = [str(p) for p in list_images(images)]
    for path in paths:
        load_image(path)        # an unreadable photo is refused here, not inside every row
    if reference is None:
        reference = next((a for a, m in manifests.items() if m.precision.compute == "fp32"), None)
    else:
        reference = str(reference)
    if reference is not None and settings.labels is not None:
        _check_reference(reference, manifests)
    plans = [_plan(artifact, settings) for artifact in manifests]
    rows = []
    for plan in plans:
        log(f"benchmarking {plan.artifact}")
        if plan.backend is None:
            row = BenchRow.failed(plan.artifact, Failure(plan.unavailable))
        elif isolate:
            row = _row_in_child(plan, paths, reference, settings)
        else:
            row = _row(plan, paths, reference, settings)
        if plan.artifact == reference and row.ok:
            row = dataclasses.replace(row, miou_vs_reference=100.0)
        rows.append(row)
    return BenchReport(reference=reference, images=len(paths), settings=settings, rows=rows)


def _manifests(artifacts: list[str]) -> dict:
    """Each artifact's manifest, read without hashing its files (each row's process does that when it opens it)."""
    if not artifacts:
        raise UserError("bench needs at least one artifact directory")
    for artifact in artifacts:
        if not is_artifact(artifact):
            raise UserError(f"{artifact} is not an artifact directory (no manifest.json): pass directories made "
                            f"by `groupvit-edge export`")
    return {artifact: read_manifest(artifact, verify=False) for artifact in artifacts}


def _check_reference(reference: str, manifests: dict) -> None:
    """Refuse, before anything is measured, a reference that cannot run here or be compared with every artifact."""
    backend, manifest = runtimes.choose_backend(reference, verify=False)
    if backend == runtimes.REFERENCE_BACKEND:     # a checkpoint runs at each artifact's size
        if not runtimes.backend_module(backend).is_installed():
            raise UserError(f"--ref {reference} is a checkpoint, which runs in PyTorch, and torch is not installed "
                            f"here: pass an fp32 artifact as --ref, or pip install groupvit-edge[export]")
        return
    preprocess = cast(Manifest, manifest).preprocess       # not a checkpoint: an artifact's manifest
    size = (preprocess.height, preprocess.width)
    for artifact, theirs in manifests.items():
        if (theirs.preprocess.height, theirs.preprocess.width) != size:
            raise UserError(f"{artifact} was exported at {theirs.preprocess.height}x{theirs.preprocess.width} but "
                            f"the reference {reference} at {size[0]}x{size[1]}: bench artifacts of one size "
                            f"together, or pass --ref the checkpoint (it runs at any size)")


@dataclass(frozen=True)
class BenchReport:
    """One bench run: the rows and what they were measured with. `to_dict()` is bench.json (schema SCHEMA)."""
    reference: str | None       # what mIoU is measured against: an artifact or a checkpoint
    images: int                 # photos measured
    settings: BenchSettings
    rows: list[BenchRow]

    def failures(self) -> list[str]:
        """"artifact: why" for every row that failed."""
        return [f"{row.artifact}: {row.reason}" for row in self.rows if not row.ok]

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "reference": self.reference, "images": self.images,
                "settings": self.settings.to_dict(), "rows": [row.to_dict() for row in self.rows]}

    def to_markdown(self) -> str:
        """The table; mIoU and agreement cells carry their 95% interval over the photos (percentile bootstrap),
        and a line per artifact below names its worst photo."""
        s = self.settings
        stream_head, stream_rule = (f" stream windows/s ({s.streams} streams) |", "---|") if s.streams else ("", "")
        lines = [f"{self.images} images, batch {s.batch}, {s.threads or 'default'} threads, "
                 f"{s.runs} runs after {s.warmup} warm-up; mIoU vs {self.reference or '—'} ({s.labels})", "",
                 "| artifact | target | backend | status | size MB | image graph ms/window p50 / p90 "
                 f"| end-to-end ms/photo p50 / p90 | photos/s |{stream_head} peak RSS MB | mIoU vs ref | ΔmIoU "
                 "| confident group agree % |",
                 f"|---|---|---|---|---|---|---|---|{stream_rule}---|---|---|---|"]
        for r in self.rows:
            stream_cell = "" if not s.streams else (f" {r.stream_windows_per_s:.2f} |" if r.ok else " |")
            if not r.ok:
                rss = "" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}"
                lines.append(f"| {r.artifact} | | | {r.status} | | | | |{stream_cell} {rss} | | | |")
                continue
            miou, confident = r.miou_vs_reference, r.group_agreement_confident
            assert r.image_graph_ms is not None and r.end_to_end_ms is not None, "a measured row has its timings"
            lines.append(
                f"| {r.artifact} | {r.target} | {r.backend} | ok | {r.size_mb:.1f} "
                f"| {r.image_graph_ms.p50:.1f} / {r.image_graph_ms.p90:.1f} "
                f"| {r.end_to_end_ms.p50:.1f} / {r.end_to_end_ms.p90:.1f} | {r.images_per_s:.2f} "
                f"|{stream_cell} {r.peak_rss_mb:.0f} | {_cell(miou, r.miou_estimate, 2)} "
                f"| {'—' if miou is None else f'{miou - 100:+.2f}'} "
                f"| {_cell(confident, r.group_agreement_confident_estimate, 3)} |")
        worst = [f"- {r.artifact}: confident group agreement "
                 f"{format_estimate(r.group_agreement_confident_estimate, 3, '%', named=True)}"
                 for r in self.rows if r.group_agreement_confident_estimate is not None]
        if worst:
            lines += ["", "95% intervals: percentile bootstrap over the photos; worst photos:", *worst]
        return "\n".join(lines)


def _cell(value: float | None, figure: Estimate | None, digits: int) -> str:
    return format_estimate(figure, digits, compact=True) if figure is not None else format_figure(value, digits)
