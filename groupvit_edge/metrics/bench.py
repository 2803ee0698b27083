"""`bench`: one row per artifact — speed, size, memory and accuracy against the fp32 reference, side by side.

Each artifact runs in its own spawned process, so its peak RSS is its own and a crash in one backend becomes
a "failed" row instead of ending the table.
"""
from __future__ import annotations

import multiprocessing
import queue as queues
import resource
import signal
import statistics
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

SCHEMA = "groupvit-edge/bench/1"
POLL_SECONDS = 1.0      # how often the parent checks that a silent child is still alive


@dataclass
class BenchSettings:
    warmup: int = 3
    runs: int = 20
    threads: int | None = None
    batch: int = 1
    streams: int | None = None             # throughput mode: each backend's own `throughput_options`
    labels: str | None = "prototypes:16"   # for mIoU vs the reference; prototypes need no trained weights
    segment_labels: tuple[str, ...] = ("person", "car", "dog", "tree", "sky")


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


def _percentiles(milliseconds: list[float]) -> dict:
    return {"p50": float(np.percentile(milliseconds, 50)), "p90": float(np.percentile(milliseconds, 90))}


def _size_mb(path: Path) -> float | None:
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def measure_artifact(artifact: str, images: list[str], reference: str | None, settings: BenchSettings) -> dict:
    """Everything for one row, measured in the calling process (bench runs it in a child)."""
    from .. import runtimes
    from ..segmentation import Segmenter
    from ..segmentation.preprocess import load_image, prepare

    backend, _ = runtimes.choose_backend(artifact)
    options = {"threads": settings.threads} if settings.threads else {}
    if settings.streams:
        options.update(runtimes.throughput_options(backend, settings.streams))
    # A bench row runs each artifact as its best backend would; options that backend does not have do not apply.
    accepted = runtimes.option_names(backend)
    runtime = runtimes.open(artifact, backend, **{k: v for k, v in options.items() if k in accepted})
    row = {"artifact": artifact, "target": runtime.manifest.data["precision"]["target"],
           "backend": runtime.description, "size_mb": _size_mb(Path(artifact))}
    windows = np.concatenate([prepare(load_image(p), runtime.manifest.preprocess).windows for p in images])
    batches = [windows[i % len(windows):][:settings.batch] for i in range(settings.warmup + settings.runs)]
    batches = [b if len(b) == settings.batch else windows[:settings.batch] for b in batches]
    graph_ms = []
    for index, batch in enumerate(batches):
        started = time.perf_counter()
        runtime.encode_image(batch)
        if index >= settings.warmup:
            graph_ms.append((time.perf_counter() - started) * 1000 / len(batch))
    row["image_graph_ms"] = _percentiles(graph_ms)      # per export-size window
    if settings.streams:
        row["stream_windows_per_s"] = stream_throughput(runtime, windows, settings.warmup)

    labels = None if runtime.manifest.vocabulary_path() else list(settings.segment_labels)
    segmenter = Segmenter(runtime, labels)
    end_to_end_ms = []
    for index in range(settings.warmup + min(settings.runs, len(images))):
        started = time.perf_counter()
        segmenter.segment(images[index % len(images)])
        if index >= settings.warmup:
            end_to_end_ms.append((time.perf_counter() - started) * 1000)
    row["end_to_end_ms"] = _percentiles(end_to_end_ms)  # per real photo: load, windows, graph, protocol
    row["images_per_s"] = 1000.0 / statistics.median(end_to_end_ms)
    row["windows_per_image"] = len(windows) / len(images)

    if reference is not None and settings.labels:
        from .drift import validate_candidate
        drift = validate_candidate(reference, runtime, images, labels=settings.labels)
        row["miou_vs_reference"] = drift.class_level.miou_vs_reference
        row["group_agreement_confident"] = drift.model_level.group_agreement_confident
        row["group_embed_cosine_mean"] = drift.model_level.group_embed_cosine.mean
    return row


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


def _child(artifact, images, reference, settings, queue):
    try:
        row = measure_artifact(artifact, images, reference, settings)
        row["status"] = "ok"
    except Exception as error:  # a failed backend is a row, not the end of the table
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        row = {"artifact": artifact, "status": f"failed: {reason}", "traceback": traceback.format_exc()}
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(row)


def benchmark(artifacts, images, *, reference=None, settings: BenchSettings | None = None,
              isolate: bool = True, log=print) -> "BenchReport":
    from ..runtimes import is_artifact
    from ..segmentation.preprocess import list_images
    settings = settings or BenchSettings()
    artifacts = [str(a) for a in artifacts]
    if not artifacts:
        raise UserError("bench needs at least one artifact directory")
    for artifact in artifacts:
        if not is_artifact(artifact):
            raise UserError(f"{artifact} is not an artifact directory (no manifest.json): pass directories made "
                            f"by `groupvit-edge export`")
    paths = [str(p) for p in list_images(images)]
    if reference is None:
        reference = next((a for a in artifacts if is_artifact(a) and _is_fp32(a)), None)
    rows = []
    for artifact in artifacts:
        log(f"benchmarking {artifact}")
        if isolate:
            context = multiprocessing.get_context("spawn")
            queue = context.Queue()
            process = context.Process(target=_child, args=(artifact, paths, reference, settings, queue))
            process.start()
            try:
                row = _receive(process, queue)
            except BaseException:
                process.kill()
                raise
            finally:
                process.join()
            if row is None:
                row = {"artifact": artifact, "status": f"failed: {_death(process.exitcode)}", "peak_rss_mb": None}
        else:
            queue = _ListQueue()
            _child(artifact, paths, reference, settings, queue)
            row = queue.items[0]
        if reference is not None and artifact == str(reference) and row["status"] == "ok":
            row["miou_vs_reference"] = 100.0
        rows.append(row)
    return BenchReport({"schema": SCHEMA, "reference": reference, "images": len(paths),
                        "settings": {"warmup": settings.warmup, "runs": settings.runs, "threads": settings.threads,
                                     "batch": settings.batch, "streams": settings.streams,
                                     "labels": settings.labels},
                        "rows": rows})


def _receive(process, queue):
    """What the child sent, or None when it died without sending anything (a crash in native code, a kill, the
    out-of-memory killer)."""
    while process.is_alive():
        try:
            return queue.get(timeout=POLL_SECONDS)
        except queues.Empty:
            continue
    try:        # it may have sent its row just before it exited
        return queue.get(timeout=POLL_SECONDS)
    except queues.Empty:
        return None


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit {exitcode}"


class _ListQueue:
    def __init__(self):
        self.items = []

    def put(self, item):
        self.items.append(item)


def _is_fp32(artifact: str) -> bool:
    from ..artifact import read_manifest
    return read_manifest(artifact).data["precision"].get("compute") == "fp32"


@dataclass
class BenchReport:
    data: dict

    def to_markdown(self) -> str:
        s = self.data["settings"]
        streams = s.get("streams")
        stream_head, stream_rule = (f" stream windows/s ({streams} streams) |", "---|") if streams else ("", "")
        lines = [f"{self.data['images']} images, batch {s['batch']}, {s['threads'] or 'default'} threads, "
                 f"{s['runs']} runs after {s['warmup']} warm-up; mIoU vs {self.data['reference'] or '—'} "
                 f"({s['labels']})", "",
                 "| artifact | target | backend | status | size MB | image graph ms/window p50 / p90 "
                 f"| end-to-end ms/photo p50 / p90 | photos/s |{stream_head} peak RSS MB | mIoU vs ref | ΔmIoU "
                 "| confident group agree % |",
                 f"|---|---|---|---|---|---|---|---|{stream_rule}---|---|---|---|"]
        for r in self.data["rows"]:
            stream_cell = "" if not streams else (f" {r['stream_windows_per_s']:.2f} |" if r["status"] == "ok"
                                                  else " |")
            if r["status"] != "ok":
                rss = "" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
                lines.append(f"| {r['artifact']} | | | {r['status']} | | | | |{stream_cell} {rss} | | | |")
                continue
            miou = r.get("miou_vs_reference")
            confident = r.get("group_agreement_confident")
            lines.append(
                f"| {r['artifact']} | {r['target']} | {r['backend']} | ok | {r['size_mb']:.1f} "
                f"| {r['image_graph_ms']['p50']:.1f} / {r['image_graph_ms']['p90']:.1f} "
                f"| {r['end_to_end_ms']['p50']:.1f} / {r['end_to_end_ms']['p90']:.1f} | {r['images_per_s']:.2f} "
                f"|{stream_cell} {r['peak_rss_mb']:.0f} | {'—' if miou is None else f'{miou:.2f}'} "
                f"| {'—' if miou is None else f'{miou - 100:+.2f}'} "
                f"| {'—' if confident is None else f'{confident:.3f}'} |")
        return "\n".join(lines)
