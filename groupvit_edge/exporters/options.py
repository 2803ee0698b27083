"""Export options, typed. Common, calibration and drift-budget options are declared here; each backend declares
its own dataclass in its module (`openvino.OpenVinoOptions`, `tensorrt.TensorRTOptions`).

Every field carries its CLI flag, help text and the targets it applies to, so the CLI is generated from these
declarations and plan checking reports an option given for a target it does not apply to.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..metrics.drift import BUDGET_BOUNDS
from ..model.blocks import NAME_FORMS, is_block_name
from ..options import OptionSpec, option, parse_value, spec_of
from ..segmentation.prompts import DEFAULT_TEMPLATE_SET, resolve_templates
from ..segmentation.vocabulary import parse_labels

FP16_TARGETS = ("onnx-fp16", "openvino-fp16", "trt-fp16")
CALIBRATED_TARGETS = ("onnx-int8", "openvino-int8", "trt-int8")
REDUCED_TARGETS = FP16_TARGETS + CALIBRATED_TARGETS + ("onnx-int8-dynamic", "openvino-bf16")


def image_size(value) -> tuple[int, int]:
    """448, "448", (448, 672) or "448x672" → (height, width)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        parts = list(value)
    elif isinstance(value, int):
        parts = [value]
    else:
        try:
            parts = [int(p) for p in str(value).lower().split("x")]
        except ValueError:
            parts = []
    if len(parts) not in (1, 2) or not all(isinstance(p, int) for p in parts):
        raise UserError(f"--image-size {value!r} is not a size: use 448 or HEIGHTxWIDTH like 448x672")
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def labels_list(value) -> tuple[str, ...]:
    return tuple(parse_labels(value))


def block_names(value) -> tuple[str, ...]:
    """"stage0.grouping,projection", or several such strings (the flag is repeatable) → block names, each of the
    form the model declares (whether the graph has that block is checked against the graph at calibration)."""
    texts = [value] if isinstance(value, str) else list(value)
    names = tuple(dict.fromkeys(part.strip() for text in texts for part in str(text).split(",") if part.strip()))
    malformed = [name for name in names if not is_block_name(name)]
    if malformed:
        raise UserError(f"--keep-float {malformed[0]!r} is not a block name: use the model's names ({NAME_FORMS}), "
                        f"e.g. the ones `groupvit-edge diagnose --suggest` prints")
    return names


def template_spec(value) -> str:
    """A template set's name or file, checked now so that a wrong one fails before any graph is traced."""
    resolve_templates(str(value))
    return str(value)


def paths(value) -> tuple[str, ...]:
    return tuple(str(v) for v in ([value] if isinstance(value, (str, Path)) else value))


@dataclass(frozen=True)
class CommonOptions:
    image_size: tuple[int, int] = option((448, 448), "Export size: 448 or HEIGHTxWIDTH (multiples of 16).",
                                         parse=image_size, metavar="SIZE")
    tokenizer: str | None = option(None, "CLIP vocabulary: bpe_simple_vocab_16e6.txt.gz or a directory with "
                                         "vocab.json + merges.txt (default: the checkpoint's own, else the one "
                                         "shipped with groupvit-edge).", metavar="PATH")
    labels: tuple[str, ...] | None = option(None, "Comma-separated class names to precompute a vocabulary for "
                                                  "(optional; any vocabulary works later).", parse=labels_list)
    templates: str = option(DEFAULT_TEMPLATE_SET, "Prompt templates of the --labels vocabulary: simple (GroupViT's "
                                                  "own 'a photo of a {}.'), full (CLIP's 80) or a file, one per line.",
                            parse=template_spec, metavar="SET")
    validation_images: tuple[str, ...] | None = option(
        None, "Photos (files or directories, repeatable) to validate the graphs and measure drift on "
              "(default: held-out calibration images, else the sample photos shipped with groupvit-edge).",
        parse=paths, multiple=True, metavar="PATH")
    resize: str = option("slide", "How runtimes fit photos to the export size by default.",
                         choices=("slide", "letterbox"))
    cache_dir: str | None = option(None, "Calibration and compiled-model cache (default: $GROUPVIT_EDGE_CACHE or "
                                         "~/.cache/groupvit-edge).", metavar="DIR")
    force: bool = option(False, "Write into an artifact directory that also holds other files (they are kept).",
                         is_flag=True)


@dataclass(frozen=True)
class CalibrationOptions:
    calib_dir: str | None = option(None, "INT8 calibration photos, searched recursively (default: the sample "
                                         "photos shipped with groupvit-edge — pass ~128 of your own for a "
                                         "deployable INT8).", targets=CALIBRATED_TARGETS, metavar="DIR")
    calib_count: int = option(128, "Calibration photos drawn from --calib-dir (seeded).", targets=CALIBRATED_TARGETS,
                              minimum=1)
    calib_method: str = option("nncf", "Calibrator: NNCF post-training quantization, or ONNX Runtime's minmax, "
                                       "entropy or percentile.", targets=CALIBRATED_TARGETS,
                               choices=("nncf", "minmax", "entropy", "percentile"))
    int8_weight_bits: int | None = option(
        None, "INT8 weight range, 7 or 8 bits (default: 8; 7 for a CPU target exported on an x86 CPU without VNNI "
              "or AMX, whose int16 intermediate full-range weights saturate).",
        targets=CALIBRATED_TARGETS + ("onnx-int8-dynamic",), choices=("7", "8"), parse=int)
    seed: int = option(0, "Calibration sampling seed.", targets=CALIBRATED_TARGETS)
    int8_attention: bool = option(
        False, "Quantize attention's q·k and attention·v products too (float by default in the QDQ graph; the "
               "openvino-int8 nncf-ir route always quantizes them); a drift-budget search returns the blocks "
               "where they cost too much to float.", targets=CALIBRATED_TARGETS, is_flag=True)
    keep_float: tuple[str, ...] | None = option(
        None, "Blocks to leave in float, comma-separated model block names (stage0.grouping, stage1.layer1.mlp, "
              "patch_embed, projection, …), e.g. what `groupvit-edge diagnose --suggest` prints; a drift-budget "
              "search starts from them.", targets=CALIBRATED_TARGETS, parse=block_names, multiple=True,
        metavar="BLOCK[,BLOCK]")


@dataclass(frozen=True)
class BudgetOptions:
    max_drop: float | None = option(
        None, "Drift budget: search for the most-quantized graph within it (returning blocks to float, most "
              "harmful first). Gates class mIoU (points) when --drift-labels is given; the model-level limits "
              "below always apply.", targets=CALIBRATED_TARGETS, metavar="POINTS",
        **BUDGET_BOUNDS["max_drop"])
    min_confident_agreement: float | None = option(
        None, "Drift budget: least confident-pixel group agreement, percent (default 99.9 when searching).",
        targets=CALIBRATED_TARGETS, metavar="PERCENT", **BUDGET_BOUNDS["min_confident_agreement"])
    min_group_cosine: float | None = option(
        None, "Drift budget: least mean group-embedding cosine (default 0.995 when searching).",
        targets=CALIBRATED_TARGETS, **BUDGET_BOUNDS["min_group_cosine"])
    search_steps: int = option(8, "Drift budget: most candidate graphs measured.", targets=CALIBRATED_TARGETS,
                               minimum=1)
    drift_labels: str | None = option(
        None, "Vocabulary drift is measured with: class names 'a,b,c' or prototypes:K (default prototypes:16, "
              "label-free).", targets=REDUCED_TARGETS)


GROUPS = {"common": CommonOptions, "calibration": CalibrationOptions, "budget": BudgetOptions}


@dataclass(frozen=True)
class ExportOptions:
    """All options of one export: the shared groups and one options object per backend that has any."""
    common: CommonOptions = field(default_factory=CommonOptions)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    budget: BudgetOptions = field(default_factory=BudgetOptions)
    backends: dict = field(default_factory=dict)     # backend name → its options dataclass instance
    named: frozenset[str] = frozenset()              # the options the caller gave, even at their default value

    @classmethod
    def from_values(cls, backend_groups: dict[str, type], **values) -> ExportOptions:
        """Flat keyword values (the API's and the CLI's) → typed groups; a name no group has is an error."""
        groups = {**GROUPS, **backend_groups}
        owner = {f.name: group for group, kind in groups.items() for f in dataclasses.fields(kind)}
        unknown = sorted(name for name in values if name not in owner)
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(owner), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"export option {unknown[0]!r} is unknown{hint}: see `groupvit-edge export --help`")
        parsed: dict[str, dict[str, object]] = {group: {} for group in groups}
        for name, value in values.items():
            if value is None:
                continue
            spec = spec_of(next(f for f in dataclasses.fields(groups[owner[name]]) if f.name == name))
            parsed[owner[name]][name] = _parse(name, value, spec)
        return cls(**{group: groups[group](**parsed[group]) for group in GROUPS},
                   backends={name: kind(**parsed[name]) for name, kind in backend_groups.items()},
                   named=frozenset(name for group in parsed.values() for name in group))

    def given(self) -> list[tuple[str, OptionSpec]]:
        """(name, spec) of every option the caller named or whose value differs from its default."""
        found = []
        for group in (self.common, self.calibration, self.budget, *self.backends.values()):
            for f in dataclasses.fields(group):
                if f.name in self.named or getattr(group, f.name) != f.default:
                    found.append((f.name, spec_of(f)))
        return found


def _parse(name: str, value, spec: OptionSpec):
    if spec.parse in (image_size, paths, labels_list, block_names) and not isinstance(value, str):
        value = spec.parse(value)      # these also normalise what the API passes as Python values
    return parse_value(name, value, spec)
