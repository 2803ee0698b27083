"""The contract between the export pipeline and one family of targets (precision, openvino, tensorrt): what a
family module declares, checked by mypy where `families.FAMILIES` lists the modules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .options import ExportOptions
    from .plan import ExportPlan
    from .records import ArtifactParts, FloatGraphs
    from .run import ExportJob


@dataclass(frozen=True)
class Step:
    name: str
    does: str                                  # one line, for the plan the export prints


@dataclass(frozen=True)
class Target:
    name: str
    family: str                                # exporters module that builds it
    runs_on: str                               # runtime backend that runs it
    holds: str                                 # what the artifact holds, for help texts and the README
    packages: tuple[str, ...] = ()             # importable modules the build needs beyond BASE_PACKAGES
    calibrated: bool = False
    readiness: bool = False                    # its family's `readiness_report` checks an artifact's graphs for it
    # The INT8 weight range it takes unless asked; None: what this CPU multiplies without saturating (GPUs
    # accumulate in int32, so a GPU target needs no 7-bit range).
    int8_weight_bits: int | None = None



class ExporterFamily(Protocol):
    """One module per family: its targets, its options group (or None), its steps, its plan-time problems and the
    build that turns the validated fp32 graphs into the artifact's parts."""
    @property
    def TARGETS(self) -> tuple[Target, ...]: ...  # noqa: N802 - the module constants a family declares

    @property
    def OPTIONS(self) -> type | None: ...  # noqa: N802

    def steps(self, target: Target, options: ExportOptions) -> list[Step]: ...

    def problems(self, export_plan: ExportPlan) -> list[str]: ...

    def build(self, job: ExportJob, floats: FloatGraphs) -> ArtifactParts: ...


@runtime_checkable
class ReadinessChecker(Protocol):
    """A family whose targets can tell from an artifact's graphs alone whether their build will accept them."""

    def readiness_report(self, artifact_dir, target_name: str): ...
