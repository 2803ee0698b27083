"""GroupViT's official evaluation on labelled data: images + single-channel masks → mIoU, per-class IoU, pixel acc."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..imports import require
from ..progress import progress_bar
from ..runtimes import open as open_runtime
from ..segmentation import Segmenter
from ..segmentation.preprocess import list_images
from .classmaps import ClassMap, resolve
from .confusion import ConfusionMatrix
from .drift_report import format_figure
from .protocol import OFFICIAL_RESAMPLE, EvalProtocol, eval_protocol

SCHEMA = "groupvit-edge/eval/2"     # 2: the protocol the run followed, and where it deviated


@dataclass(frozen=True)
class EvalReport:
    """One evaluation run; scores in percent. `to_dict()` is eval.json (schema SCHEMA)."""
    source: str                             # the artifact or checkpoint evaluated
    backend: str                            # the runtime's description: what ran it, at which precision
    masks: str                              # the masks directory
    classes: str                            # the class map's name
    protocol: EvalProtocol
    images: int
    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float | None]  # None: the class is in neither the masks nor the predictions
    seconds: float

    def to_dict(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "protocol"}
        return {"schema": SCHEMA, **fields, "protocol": self.protocol.to_dict()}

    def to_markdown(self) -> str:
        lines = [f"{self.source} ({self.backend}) on {self.images} images (masks {self.masks}), classes "
                 f"{self.classes}: mIoU {self.miou:.2f}, pixel accuracy {self.pixel_accuracy:.2f}",
                 *self.protocol.lines(), "", "| class | IoU |", "|---|---|"]
        lines += [f"| {name} | {format_figure(iou)} |" for name, iou in self.per_class_iou.items()]
        return "\n".join(lines)


def labelled_pairs(images, masks_dir, class_map: ClassMap) -> list[tuple[Path, Path]]:
    """Each photo of `images` paired with its mask in `masks_dir`, in one of the class map's mask forms."""
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise UserError(f"--masks {masks_dir} is not a directory: pass the folder of single-channel PNG masks "
                        f"named like the photos")
    return [(image, class_map.mask_path(masks_dir, image)[0]) for image in list_images(images)]


def evaluate(source, images, masks, classes: str | ClassMap = "coco-object", *, backend: str | None = None,
             limit: int | None = None, resize: str | None = None, resample: str | None = None,
             templates: str | None = None, background_threshold: float | None = None,
             progress: bool = True, **runtime_options) -> EvalReport:
    """GroupViT's official protocol for the dataset `classes` on `images` (files or directories) with ground
    truth in `masks` (a directory). `templates`, `background_threshold`, `resample` and `resize` replace an official
    setting (None keeps it); the report lists every setting and marks each departure."""
    class_map = classes if isinstance(classes, ClassMap) else resolve(classes)
    pairs = labelled_pairs(images, masks, class_map)[:limit]
    runtime = open_runtime(source, backend=backend, **runtime_options)
    protocol = eval_protocol(class_map.name, runtime.manifest.preprocess, templates=templates,
                             background_threshold=background_threshold, resample=resample, resize=resize)
    settings = protocol.settings
    if settings.resample == OFFICIAL_RESAMPLE:
        require("cv2", "opencv", what="the official protocol's resize (mmcv's OpenCV bilinear)", package="OpenCV",
                otherwise=", or pass --resample pillow (reported as a deviation)")
    confusion = ConfusionMatrix(len(class_map.class_names))
    started = time.perf_counter()
    with Segmenter(runtime, class_map.foreground, templates=settings.templates, resize=settings.resize,
                   resample=settings.resample, background_threshold=settings.background_threshold) as segmenter:
        for image_path, mask_path in progress_bar(pairs, progress, "evaluating"):
            prediction = segmenter.segment(image_path).labels
            truth = class_map.truth(Path(masks), image_path)[1]
            if truth.shape != prediction.shape:
                raise UserError(f"mask {mask_path} is {truth.shape[1]}x{truth.shape[0]} but its image is "
                                f"{prediction.shape[1]}x{prediction.shape[0]}: masks must have the image's size")
            confusion.update(truth, prediction)
        backend_description = segmenter.runtime.description
    iou = confusion.iou
    return EvalReport(
        source=str(source), backend=backend_description, masks=str(masks), classes=class_map.name,
        protocol=protocol, images=len(pairs), miou=100.0 * confusion.mean_iou,
        pixel_accuracy=100.0 * confusion.pixel_accuracy,
        per_class_iou={name: (None if np.isnan(v) else 100.0 * v) for name, v in zip(class_map.class_names, iou)},
        seconds=time.perf_counter() - started)
