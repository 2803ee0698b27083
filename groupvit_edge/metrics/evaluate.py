"""The paper's evaluation protocol on labelled data: images + single-channel masks → mIoU, per-class IoU, pixel acc."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..progress import progress_bar
from ..segmentation import Segmenter
from ..segmentation.postprocess import BACKGROUND_THRESHOLD
from ..segmentation.preprocess import list_images
from .classmaps import ClassMap, resolve
from .confusion import ConfusionMatrix
from .drift_report import format_figure

SCHEMA = "groupvit-edge/eval/1"


@dataclass(frozen=True)
class EvalReport:
    """One evaluation run; scores in percent. `to_dict()` is eval.json (schema SCHEMA)."""
    source: str                             # the artifact or checkpoint evaluated
    backend: str                            # the runtime's description: what ran it, at which precision
    masks: str                              # the masks directory
    classes: str                            # the class map's name
    resample: str
    images: int
    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float | None]  # None: the class is in neither the masks nor the predictions
    seconds: float

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **dataclasses.asdict(self)}

    def to_markdown(self) -> str:
        lines = [f"{self.source} ({self.backend}) on {self.images} images (masks {self.masks}), classes "
                 f"{self.classes}: mIoU {self.miou:.2f}, pixel accuracy {self.pixel_accuracy:.2f}", "",
                 "| class | IoU |", "|---|---|"]
        lines += [f"| {name} | {format_figure(iou)} |" for name, iou in self.per_class_iou.items()]
        return "\n".join(lines)


def read_mask(path: Path) -> np.ndarray:
    """A single-channel mask PNG as an array; anything else is the user's to fix."""
    try:
        with Image.open(path) as mask:
            if mask.format != "PNG" or mask.mode not in ("L", "P", "I", "I;16"):
                raise UserError(f"mask {path} is a {mask.format} {mask.mode} image: masks must be single-channel "
                                f"PNGs of class ids")
            return np.asarray(mask)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"mask {path} is not a readable PNG ({type(error).__name__}): masks must be "
                        f"single-channel PNGs of class ids") from None


def labelled_pairs(images, masks_dir) -> list[tuple[Path, Path]]:
    """Each photo of `images` paired with `masks_dir/<stem>.png`."""
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise UserError(f"--masks {masks_dir} is not a directory: pass the folder of single-channel PNG masks "
                        f"named like the photos")
    pairs = []
    for image in list_images(images):
        mask = masks_dir / f"{image.stem}.png"
        if not mask.is_file():
            raise UserError(f"image {image.name} has no mask {mask}: add it or remove the image")
        pairs.append((image, mask))
    return pairs


def evaluate(source, images, masks, classes: str | ClassMap = "coco-object", *, backend: str | None = None,
             limit: int | None = None, resize: str | None = None, resample: str = "pillow",
             progress: bool = True, **runtime_options) -> EvalReport:
    """The paper's protocol on `images` (files or directories) with ground truth in `masks` (a directory)."""
    class_map = classes if isinstance(classes, ClassMap) else resolve(classes)
    pairs = labelled_pairs(images, masks)[:limit]
    confusion = ConfusionMatrix(len(class_map.class_names))
    started = time.perf_counter()
    with Segmenter.open(source, class_map.foreground, backend=backend, resize=resize, resample=resample,
                        background_threshold=BACKGROUND_THRESHOLD, **runtime_options) as segmenter:
        for image_path, mask_path in progress_bar(pairs, progress, "evaluating"):
            prediction = segmenter.segment(image_path).labels
            truth = class_map.convert(read_mask(mask_path))
            if truth.shape != prediction.shape:
                raise UserError(f"mask {mask_path} is {truth.shape[1]}x{truth.shape[0]} but its image is "
                                f"{prediction.shape[1]}x{prediction.shape[0]}: masks must have the image's size")
            confusion.update(truth, prediction)
        backend_description = segmenter.runtime.description
    iou = confusion.iou
    return EvalReport(
        source=str(source), backend=backend_description, masks=str(masks), classes=class_map.name,
        resample=resample, images=len(pairs), miou=100.0 * confusion.mean_iou,
        pixel_accuracy=100.0 * confusion.pixel_accuracy,
        per_class_iou={name: (None if np.isnan(v) else 100.0 * v) for name, v in zip(class_map.class_names, iou)},
        seconds=time.perf_counter() - started)
