"""`tune`, run on the deployment device: every way this device can run an artifact (each installed backend × each
precision it offers: f32, bf16, f16, the INT8 graph with an f32 or bf16 remainder), each measured for speed and
for drift against the fp32 reference on the same photos. The fastest configuration within the drift budget is
recorded in the artifact (`tuned.json`) with the identity of the device that measured it; `runtimes.open` uses
it on that device and nowhere else. When nothing fits, nothing reduced is chosen: the artifact runs as exported.

Each configuration is measured in a process of its own (`isolation`): one that its backend cannot compile or run,
or that crashes it, is a row saying why, and the choice is made among the others.
"""
from __future__ import annotations

import dataclasses
import datetime
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import runtimes
from ..artifact import TUNED_NAME, read_manifest
from ..errors import UserError
from ..files import write_json_atomic
from ..hardware import cpu_header, device_identity
from ..runtimes import ARTIFACT_BACKENDS, backend_module
from ..runtimes.base import Configuration
from ..runtimes.tuned import SCHEMA
from ..segmentation.preprocess import list_images, load_image, prepare
from .bench import median_ms, stream_throughput
from .drift import DEFAULT_PROBE, MODEL_LEVEL_BUDGET, check_vocabulary, validate_candidate
from .drift_report import CandidateDrift, DriftBudget, format_figure
from .isolation import BackendFailed, Failure, open_guarded, run_isolated
from .uncertainty import format_estimate

LATENCY_WINDOWS = 4


@dataclass
class Measured:
    configuration: Configuration
    description: str = ""             # what ran, as the runtime reports it
    latency_ms: float | None = None   # median per window, batch 1
    windows_per_s: float | None = None
    drift: CandidateDrift | None = None
    failures: list[str] = field(default_factory=list)
    error: str | None = None          # the configuration could not run here

    @property
    def fits(self) -> bool:
        return self.error is None and self.drift is not None and not self.failures

    def to_dict(self) -> dict:
        model = self.drift.model_level if self.drift else None
        return {"backend": self.configuration.backend, "options": self.configuration.options,
                "label": self.configuration.label, "description": self.description, "latency_ms": self.latency_ms,
                "windows_per_s": self.windows_per_s, "fits": self.fits, "failures": self.failures, "error": self.error,
                "group_agreement_confident": model.group_agreement_confident if model else None,
                "group_embed_cosine": dataclasses.asdict(model.group_embed_cosine) if model else None,
                "miou_vs_reference": self.drift.class_level.miou_vs_reference if self.drift else None,
                "uncertainty": self._estimates()}

    def _estimates(self) -> dict | None:
        """The gated figures' 95% intervals over the photos, without the per-photo list bench and drift keep."""
        uncertainty = self.drift.uncertainty if self.drift else None
        if uncertainty is None:
            return None
        return {name: figure.to_dict() for name in ("group_agreement_confident", "group_embed_cosine",
                                                    "miou_vs_reference")
                if (figure := getattr(uncertainty, name)) is not None}


@dataclass
class TuneReport:
    artifact: Path
    reference: str
    budget: DriftBudget
    photos: int
    measured: list[Measured]
    chosen: Measured | None
    seconds: float

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "device": device_identity(), "cpu": cpu_header(),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "reference": self.reference, "budget": self.budget.describe(), "photos": self.photos,
                "chosen": None if self.chosen is None else {"backend": self.chosen.configuration.backend,
                                                            "options": self.chosen.configuration.options,
                                                            "label": self.chosen.configuration.label},
                "measured": [m.to_dict() for m in self.measured], "seconds": round(self.seconds, 1)}

    def to_markdown(self) -> str:
        lines = [cpu_header(), f"{self.artifact}: drift vs {self.reference} on {self.photos} photos, budget "
                               f"{self.budget.describe()} (on the 95% bounds over the photos)", "",
                 "| configuration | ran as | ms/window | windows/s | confident group agree % | group cos mean / min "
                 "| fits |", "|---|---|---|---|---|---|---|"]
        for m in sorted(self.measured, key=lambda m: (m.latency_ms is None, m.latency_ms or 0)):
            if m.error:
                lines.append(f"| {m.configuration.label} | failed: {m.error} | | | | | no |")
                continue
            assert m.drift is not None, "a configuration that ran has its drift"
            model, uncertainty = m.drift.model_level, m.drift.uncertainty
            confident = format_figure(model.group_agreement_confident, 3)
            cosine = f"{model.group_embed_cosine.mean:.5f}"
            if uncertainty is not None:
                confident = format_estimate(uncertainty.group_agreement_confident, 3, compact=True)
                cosine = format_estimate(uncertainty.group_embed_cosine, 5, compact=True)
            chosen = " (chosen)" if m is self.chosen else ""
            lines.append(f"| {m.configuration.label}{chosen} | {m.description} | {m.latency_ms:.1f} | "
                         f"{m.windows_per_s:.2f} | {confident} | {cosine} / "
                         f"{model.group_embed_cosine.min:.5f} | {'yes' if m.fits else 'no: ' + m.failures[0]} |")
        if self.chosen is None:
            lines += ["", "nothing fits the budget: nothing is recorded and the artifact runs as exported; loosen the "
                          "budget, or export a more precise target (onnx or openvino-fp32 is fp32)"]
        else:
            lines += ["", f"chose {self.chosen.configuration.label}: {self.chosen.latency_ms:.1f} ms/window"]
        return "\n".join(lines)


def configurations(manifest) -> list[Configuration]:
    """Every (backend, precision) this machine can run the artifact with, asking each installed backend."""
    found = []
    for name in ARTIFACT_BACKENDS:
        try:
            found += backend_module(name).configurations(manifest)
        except ImportError:
            continue
    return found


def choose(measured: list[Measured]) -> Measured | None:
    """The fastest configuration that fits the budget; never one outside it."""
    fitting = [m for m in measured if m.fits]
    return min(fitting, key=lambda m: m.latency_ms or 0.0) if fitting else None


def tune(artifact, images=None, *, reference=None, budget: DriftBudget | None = None, labels=None,
         threads: int | None = None, runs: int = 10, record: bool = True, isolate: bool = True,
         log=print) -> TuneReport:
    """Measure every configuration of `artifact` on this machine and record the fastest within `budget`
    (default MODEL_LEVEL_BUDGET). `labels` is the vocabulary class-level drift is measured with; without it,
    prototypes:16 is reported but not gated, so a budget with a max_drop needs it. Each configuration runs in
    its own process unless `isolate=False`."""
    started = time.perf_counter()
    manifest = read_manifest(artifact)
    found = configurations(manifest)
    if not found:
        raise UserError(f"no installed backend can run {artifact} here: `groupvit-edge doctor` shows what is missing")
    given = {"threads": threads} if threads else {}
    for configuration in found:     # no configuration runs without an option the user gave: refuse it up front
        runtimes.check_options(configuration.backend, given, artifact,
                               fix="drop it (tune measures every backend this device has for the artifact)")
    budget = budget or MODEL_LEVEL_BUDGET
    if budget.max_drop is not None and labels is None:
        raise UserError("--max-drop gates class mIoU, which needs a vocabulary to measure it with: add --labels "
                        "with the class names (or prototypes:K)")
    check_vocabulary(labels)
    reference = reference or default_reference(manifest)
    paths = [str(path) for path in list_images(images)]
    windows = np.concatenate([prepare(load_image(p), manifest.preprocess).windows for p in paths[:LATENCY_WINDOWS]])
    task = _Task(str(artifact), str(reference), str(reference) == str(manifest.directory), given, windows, paths,
                 labels or DEFAULT_PROBE, runs)
    measured = []
    for configuration in found:
        log(f"measuring {configuration.label} (speed, and drift against {reference} on {len(paths)} photos)")
        entry = run_isolated(measure_configuration, task, configuration) if isolate else \
            measure_configuration(task, configuration)
        if isinstance(entry, Failure):
            entry = Measured(configuration, error=entry.reason)
        if entry.drift is not None:
            entry.failures = budget.failures(entry.drift)
        measured.append(entry)
    result = TuneReport(Path(artifact), str(reference), budget, len(paths), measured, choose(measured),
                        time.perf_counter() - started)
    if record:
        record_choice(result)
    return result


@dataclass(frozen=True)
class _Task:
    """What measuring one configuration needs, the same for every configuration."""
    artifact: str
    reference: str
    reference_is_artifact: bool    # then its fp32 ONNX runs in ONNX Runtime, whatever was tuned before
    options: dict                  # runtime options the user gave
    windows: np.ndarray            # timed, batch 1
    photos: list[str]              # drift
    labels: object
    runs: int


def measure_configuration(task: _Task, configuration: Configuration) -> Measured:
    """One configuration's speed and drift; what its backend raises while opening or running is its error."""
    runtime = open_guarded(lambda: runtimes.open(task.artifact, configuration.backend,
                                                 **{**configuration.options, **task.options}))
    if isinstance(runtime, Failure):
        return Measured(configuration, error=runtime.reason)
    try:
        entry = _speed(Measured(configuration, runtime.description), runtime, task.windows, task.runs)
        truth = runtimes.open(task.reference, "onnxruntime") if task.reference_is_artifact else task.reference
        entry.drift = validate_candidate(truth, runtime, task.photos, labels=task.labels)
        return entry
    except BackendFailed as error:
        return Measured(configuration, error=Failure.of(error.__cause__ or error).reason)
    finally:
        runtime.close()


def default_reference(manifest) -> str:
    """The fp32 truth to measure against: the artifact itself when its image graph is fp32 ONNX, else the model it
    was exported from (run in PyTorch)."""
    if manifest.graphs["image"].precision == "fp32" and manifest.graphs["image"].format == "onnx":
        return str(manifest.directory)
    model = manifest.model.id
    if not manifest.model.weights_are_random and not Path(model).exists():
        raise UserError(f"{manifest.directory} holds no fp32 graph and its model {model!r} is not here: pass --ref "
                        f"an fp32 artifact (groupvit-edge export --target onnx) or the checkpoint")
    return model


def _speed(entry: Measured, runtime, windows: np.ndarray, runs: int) -> Measured:
    cycle = iter(np.resize(np.arange(len(windows)), runs + 2))
    entry.latency_ms = median_ms(lambda: runtime.encode_image(windows[next(cycle)][None]), runs, warmup=2)
    entry.windows_per_s = stream_throughput(runtime, windows, warmup=1)
    return entry


def record_choice(report: TuneReport) -> Path | None:
    """Write the choice into the artifact, or remove a stale one when nothing fits."""
    path = report.artifact / TUNED_NAME
    if report.chosen is None:
        path.unlink(missing_ok=True)
        return None
    return write_json_atomic(path, report.to_dict())
