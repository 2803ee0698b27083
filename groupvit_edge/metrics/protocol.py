"""GroupViT's own evaluation protocol, per dataset, and how one `eval` run departs from it.

The official settings (NVlabs/GroupViT): the template set `simple` (configs/default.yml, evaluate.seg.template);
the class embedding of `build_text_embedding` (models/multi_label_contrastive.py); the background threshold of
each dataset's test_cfg (segmentation/configs/_base_/datasets/*.py: bg_thresh 0.95 for VOC and COCO-Object, 0.35
for PASCAL Context) with mode 'slide', crop 448×448 and stride 224×224; and mmseg's test pipeline, whose Resize
(img_scale (2048, 448), keep_ratio) is mmcv's OpenCV bilinear resize, without antialiasing.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..artifact import Preprocess
from ..segmentation.prompts import DEFAULT_TEMPLATE_SET, OFFICIAL_AVERAGING, resolve_templates

OFFICIAL_RESAMPLE = "opencv"
OFFICIAL_WINDOW = (448, 448)
OFFICIAL_STRIDE = (224, 224)
BACKGROUND_THRESHOLDS = {"voc": 0.95, "coco-object": 0.95, "pascal-context": 0.35}
DATASET_TITLES = {"voc": "PASCAL VOC", "coco-object": "COCO-Object", "pascal-context": "PASCAL Context"}
DEFAULT_THRESHOLD = 0.95      # for a dataset of the user's own: the threshold of the two object benchmarks


@dataclass(frozen=True)
class Settings:
    templates: str                  # a template set: simple, full or a file
    averaging: str
    background_threshold: float
    resample: str                   # opencv (mmcv's resize) or pillow (antialiased)
    resize: str                     # slide: crops at the stride, stitched; letterbox: one padded window
    window: tuple[int, int]
    stride: tuple[int, int]


@dataclass(frozen=True)
class Deviation:
    setting: str
    official: str
    used: str


@dataclass(frozen=True)
class EvalProtocol:
    """The settings an `eval` run used, against the official ones for its dataset (None: a dataset of the user's
    own, which the official code never evaluated)."""
    dataset: str
    settings: Settings
    official: Settings | None
    deviations: tuple[Deviation, ...]

    @property
    def title(self) -> str:
        if self.official is None:
            return (f"GroupViT (NVlabs) evaluation settings on {self.dataset}, a dataset the official code has no "
                    f"settings for")
        verdict = f", deviating in {', '.join(d.setting for d in self.deviations)}" if self.deviations else ""
        return f"GroupViT (NVlabs) evaluation, {DATASET_TITLES[self.dataset]} settings{verdict}"

    def lines(self) -> list[str]:
        s = self.settings
        listed = [f"templates {resolve_templates(s.templates).describe()}, averaged as {s.averaging}",
                  f"background threshold {s.background_threshold:g}", f"resize {s.resample} bilinear",
                  f"{s.resize} {s.window[0]}x{s.window[1]} windows, stride {s.stride[0]}x{s.stride[1]}"]
        marks = [f"deviation: {d.setting} {d.used} (official {d.official})" for d in self.deviations]
        return [f"protocol: {self.title}", *(f"  {line}" for line in listed + marks)]

    def to_dict(self) -> dict:
        return {"title": self.title, **dataclasses.asdict(self)}


def official_settings(dataset: str) -> Settings | None:
    if dataset not in BACKGROUND_THRESHOLDS:
        return None
    return Settings(DEFAULT_TEMPLATE_SET, OFFICIAL_AVERAGING, BACKGROUND_THRESHOLDS[dataset], OFFICIAL_RESAMPLE,
                    "slide", OFFICIAL_WINDOW, OFFICIAL_STRIDE)


def eval_protocol(dataset: str, preprocess: Preprocess, *, templates: str | None = None,
                  background_threshold: float | None = None, resample: str | None = None,
                  resize: str | None = None) -> EvalProtocol:
    """The official settings for `dataset`, each replaced where the caller asked (None: official) or where the
    artifact fixes it (its window, stride and default resize mode)."""
    official = official_settings(dataset)
    base = official or Settings(DEFAULT_TEMPLATE_SET, OFFICIAL_AVERAGING, DEFAULT_THRESHOLD, OFFICIAL_RESAMPLE,
                                "slide", OFFICIAL_WINDOW, OFFICIAL_STRIDE)
    used = Settings(
        templates=templates or base.templates, averaging=OFFICIAL_AVERAGING,
        background_threshold=base.background_threshold if background_threshold is None else background_threshold,
        resample=resample or base.resample, resize=resize or preprocess.resize,
        window=(preprocess.height, preprocess.width), stride=(preprocess.stride[0], preprocess.stride[-1]))
    return EvalProtocol(dataset, used, official, _deviations(used, official) if official else ())


def _deviations(used: Settings, official: Settings) -> tuple[Deviation, ...]:
    found = []
    for field in dataclasses.fields(Settings):
        mine, theirs = getattr(used, field.name), getattr(official, field.name)
        if field.name == "templates":
            mine, theirs = resolve_templates(mine).templates, resolve_templates(theirs).templates
        if mine != theirs:
            found.append(Deviation(field.name.replace("_", " "), _text(getattr(official, field.name)),
                                   _text(getattr(used, field.name))))
    return tuple(found)


def _text(value) -> str:
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
