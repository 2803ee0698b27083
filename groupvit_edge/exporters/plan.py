"""Plan → check: what an export will do, and everything it lacks, known before any slow work starts.

`make_plan()` has no side effects: the target's steps and options (a TensorRT target's steps follow the installed
TensorRT's build plan, so it reads that version). `check()` looks at the machine and the inputs (files exist,
packages import, options apply to the target, the output directory may be written) and returns *every*
problem, so one run of `export` tells the user everything to fix at once.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..artifact import owned_entries
from ..errors import UserError
from ..files import check_destination
from ..model.specs import is_random
from ..runtimes import backend_module
from ..segmentation.preprocess import list_images
from ..segmentation.vocabulary import load_tokenizer
from .contract import ExporterFamily, ReadinessChecker, Step, Target
from .families import FAMILIES
from .options import ExportOptions, OptionSpec

BASE_PACKAGES = ("torch", "onnx", "onnxsim", "onnxruntime")
# Activations of one window must fit in memory; attention holds heads × tokens² floats per layer (×3 for the
# softmax and its inputs), which is what an absurd --image-size blows up (10000² → terabytes).
ATTENTION_HEADS = 6
ACTIVATION_COPIES = 3


@dataclass(frozen=True)
class ExportPlan:
    model: str
    target: Target
    out: Path
    options: ExportOptions
    steps: tuple[Step, ...]

    def describe(self) -> str:
        return " → ".join(step.does for step in self.steps)


def family(name: str) -> ExporterFamily:
    return FAMILIES[name]


def targets() -> dict[str, Target]:
    return {target.name: target for name in FAMILIES for target in family(name).TARGETS}


def backend_option_groups() -> dict[str, type]:
    return {name: options for name, found in FAMILIES.items() if (options := found.OPTIONS) is not None}


def readiness_targets() -> dict[str, Target]:
    """Targets whose exporter can tell, from an artifact's graphs alone, whether their build will accept them."""
    return {name: found for name, found in targets().items() if found.readiness}


def readiness_report(artifact_dir, target_name: str):
    """The readiness check of `target_name`'s exporter on an artifact: a Report (`ok`, `format()`, `summary()`)."""
    checked = readiness_targets()
    if target_name not in checked:
        raise UserError(f"--target {target_name!r} has no readiness check: use one of {', '.join(checked)}")
    checker = family(checked[target_name].family)
    if not isinstance(checker, ReadinessChecker):
        raise TypeError(f"the {checked[target_name].family} exporters declare a readiness check they do not define")
    return checker.readiness_report(artifact_dir, target_name)


def target(name: str) -> Target:
    found = targets()
    if name not in found:
        raise UserError(f"--target {name!r} is unknown: use one of {', '.join(found)}")
    return found[name]


def make_plan(model, target_name: str, out, options: ExportOptions) -> ExportPlan:
    chosen = target(target_name)
    steps = family(chosen.family).steps(chosen, options)
    return ExportPlan(str(model), chosen, Path(out), options, tuple(steps))


def check(export_plan: ExportPlan) -> list[str]:
    """Every problem that would stop this export, each one sentence naming the input and the fix."""
    options = export_plan.options
    problems = _inapplicable_options(export_plan)
    problems += _missing_packages(export_plan.target)
    problems += _model_problems(export_plan.model)
    problems += _image_size_problems(options.common.image_size)
    problems += _path_problems(options)
    problems += _output_problems(export_plan)
    problems += family(export_plan.target.family).problems(export_plan)
    return problems


def raise_problems(export_plan: ExportPlan, problems: list[str]) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise UserError(problems[0])
    listed = "\n".join(f"  - {problem}" for problem in problems)
    raise UserError(f"export --target {export_plan.target.name} cannot start ({len(problems)} problems):\n{listed}")


def _inapplicable_options(export_plan: ExportPlan) -> list[str]:
    problems = []
    for name, spec in export_plan.options.given():
        if spec.targets is not None and export_plan.target.name not in spec.targets:
            problems.append(f"{spec.flag(name)} applies to {_listing(spec)} only, not {export_plan.target.name}: "
                            f"remove it or choose one of those targets")
    return problems


def _listing(spec: OptionSpec) -> str:
    return ", ".join(spec.targets or ())


def _missing_packages(chosen: Target) -> list[str]:
    missing = [name for name in (*BASE_PACKAGES, *chosen.packages) if importlib.util.find_spec(name) is None]
    if not missing:
        return []
    extras = ["export"]
    backend = backend_module(chosen.runs_on)
    # A target's own packages come with its backend's extra or the export extra (nncf, onnxconverter-common):
    # the backend's extra is named only when that backend is not here.
    if set(missing) & set(chosen.packages) and not backend.is_installed():
        extras.append(backend.EXTRA)
    return [f"--target {chosen.name} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed: pip install torch==2.13.0 'groupvit-edge[{','.join(dict.fromkeys(extras))}]'"]


def _model_problems(spec: str) -> list[str]:
    if is_random(spec):
        return [] if re.fullmatch(r"random:\d+", spec) else [
            f"--model {spec!r}: the seed must be an integer, e.g. random:0"]
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return [f"--model {path} has no config.json: pass a HuggingFace GroupViT checkpoint directory"]
        if not any((path / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
            return [f"--model {path} has neither model.safetensors nor pytorch_model.bin: add the weights file"]
        return []
    if path.is_file() or re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.startswith((".", "/")):
        return []
    return [f"--model {spec!r} does not exist: pass a checkpoint directory, a .pth/.bin file, a HuggingFace Hub "
            f"id or random:SEED"]


def _image_size_problems(size: tuple[int, int], patch: int = 16) -> list[str]:
    height, width = size
    if height <= 0 or width <= 0 or height % patch or width % patch:
        return [f"--image-size {height}x{width} is not a multiple of the patch size {patch}: use e.g. 448 or 224"]
    tokens = (height // patch) * (width // patch) + 64
    needed = ATTENTION_HEADS * ACTIVATION_COPIES * 4 * tokens ** 2
    available = _physical_memory()
    if available is not None and needed > available:
        return [f"--image-size {height}x{width} needs about {needed / 2**30:.0f} GB for one window's attention, more "
                f"than this machine's {available / 2**30:.0f} GB: export at 448 (GroupViT's size) and let the "
                f"sliding window cover large photos"]
    return []


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _path_problems(options: ExportOptions) -> list[str]:
    problems = []
    tokenizer = options.common.tokenizer
    if tokenizer is not None:
        try:
            if not Path(tokenizer).exists():
                raise UserError(f"--tokenizer {tokenizer} does not exist: pass bpe_simple_vocab_16e6.txt.gz or a "
                                f"directory with vocab.json + merges.txt (or leave it out: one ships with "
                                f"groupvit-edge)")
            load_tokenizer(Path(tokenizer))
        except UserError as error:
            problems.append(str(error))
    for flag, sources in (("--validation-images", options.common.validation_images),
                          ("--calib-dir", (options.calibration.calib_dir,) if options.calibration.calib_dir else None)):
        if sources:
            try:
                list_images(list(sources))
            except UserError as error:
                problems.append(f"{flag}: {error}")
    return problems


def _output_problems(export_plan: ExportPlan) -> list[str]:
    try:
        check_destination(export_plan.out, owned_entries, "artifact", export_plan.options.common.force)
    except UserError as error:
        return [str(error)]
    return []
