"""Dataset class maps: raw mask values → evaluation class indices (0 = background, 255 = ignored).

Built in, with the class names GroupViT's own evaluation prompts (NVlabs/GroupViT segmentation/datasets/*.py):
- `voc`: PASCAL VOC 2012, 20 classes + background; mmseg's SegmentationClass PNGs (0..20, 255 ignored).
- `pascal-context`: PASCAL Context, 59 classes + background; mmseg's SegmentationClassContext PNGs (0..59).
- `coco-object`: the paper's "COCO" (80 things + background), from either mask form: the official converter's
  `<stem>_instanceTrainIds.png` (0 background, 1..80) or a COCO panoptic PNG `<stem>.png` (thing ids ≤ 90 map to
  1..80; stuff ids ≥ 92 and 0 are background).
A FILE gives one class per line (`id: name`, or bare names numbered from 0) for any other dataset.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..segmentation.vocabulary import COCO_THINGS

IGNORE = 255
BACKGROUND = "background"

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "table", "dog", "horse", "motorbike", "person", "plant", "sheep", "sofa", "train", "monitor")
CONTEXT_CLASSES = (
    "background", "airplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "plant", "road", "rock", "sheep", "shelves", "sidewalk",
    "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "monitor", "wall", "water", "window",
    "wood")


@dataclass(frozen=True)
class MaskForm:
    """One way a dataset's masks are written: the file next to the image's name, and what its values mean."""
    suffix: str               # the mask of photo `x.jpg` is `<masks>/x<suffix>`
    lookup: np.ndarray        # [256] raw mask value → class index or IGNORE


@dataclass(frozen=True)
class ClassMap:
    name: str
    class_names: tuple[str, ...]      # index 0 is the background
    forms: tuple[MaskForm, ...]       # tried in order for each photo

    @property
    def foreground(self) -> list[str]:
        """The names a segmenter is asked for; it adds the background itself."""
        return list(self.class_names[1:])

    def mask_path(self, masks_dir: Path, image: Path) -> tuple[Path, MaskForm]:
        """The mask of `image` in `masks_dir`, in the first form that exists."""
        for form in self.forms:
            path = Path(masks_dir) / f"{image.stem}{form.suffix}"
            if path.is_file():
                return path, form
        expected = " or ".join(f"{image.stem}{form.suffix}" for form in self.forms)
        raise UserError(f"image {image.name} has no mask {expected} in {masks_dir}: add it or remove the image")

    def truth(self, masks_dir: Path, image: Path) -> tuple[Path, np.ndarray]:
        """The mask of `image`, read and converted to class indices."""
        path, form = self.mask_path(masks_dir, image)
        return path, self.convert(read_mask(path), form)

    def convert(self, mask: np.ndarray, form: MaskForm | None = None) -> np.ndarray:
        if mask.dtype != np.uint8:
            if mask.min() < 0 or mask.max() > 255:
                raise UserError(f"mask values {mask.min()}..{mask.max()} do not fit 0..255: pass 8-bit masks")
            mask = mask.astype(np.uint8)
        return (form or self.forms[0]).lookup[mask]


def read_mask(path: Path) -> np.ndarray:
    """A single-channel mask PNG as an array (a palette PNG gives its indices); anything else is the user's to fix."""
    try:
        with Image.open(path) as mask:
            if mask.format != "PNG" or mask.mode not in ("L", "P", "I", "I;16"):
                raise UserError(f"mask {path} is a {mask.format} {mask.mode} image: masks must be single-channel "
                                f"PNGs of class ids")
            return np.asarray(mask)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"mask {path} is not a readable PNG ({type(error).__name__}): masks must be "
                        f"single-channel PNGs of class ids") from None


def _identity(count: int) -> np.ndarray:
    """Values 0..count-1 are the classes themselves; every other value is ignored."""
    lookup = np.full(256, IGNORE, dtype=np.uint8)
    lookup[:count] = np.arange(count)
    return lookup


def coco_object() -> ClassMap:
    panoptic = np.zeros(256, dtype=np.uint8)             # unlabeled (0) and stuff (≥ 92) are background
    for index, coco_id in enumerate(sorted(COCO_THINGS), start=1):
        panoptic[coco_id] = index
    names = (BACKGROUND, *(COCO_THINGS[i] for i in sorted(COCO_THINGS)))
    return ClassMap("coco-object", names, (MaskForm("_instanceTrainIds.png", _identity(len(names))),
                                           MaskForm(".png", panoptic)))


def voc() -> ClassMap:
    return ClassMap("voc", VOC_CLASSES, (MaskForm(".png", _identity(len(VOC_CLASSES))),))


def pascal_context() -> ClassMap:
    return ClassMap("pascal-context", CONTEXT_CLASSES, (MaskForm(".png", _identity(len(CONTEXT_CLASSES))),))


def from_file(path: str | Path) -> ClassMap:
    """`id: name` lines (or a JSON object id → name); bare lines are numbered from 0. Id 0 is the background."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise UserError(f"class file {path} is unreadable ({error.strerror}): pass a file of 'id: name' lines") \
            from None
    entries: dict[int, str] = {}
    try:
        raw = json.loads(text)
        if isinstance(raw, dict):
            entries = {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        for number, line in enumerate(lines):
            match = re.fullmatch(r"(\d+)\s*:\s*(.+)", line)
            if match:
                entries[int(match.group(1))] = match.group(2).strip()
            elif ":" not in line:
                entries[number] = line
    if not entries or 0 not in entries or max(entries) > 254:
        raise UserError(f"class file {path} must list classes as 'id: name' (ids 0..254, 0 = background): fix it")
    ids = sorted(entries)
    lookup = np.full(256, IGNORE, dtype=np.uint8)
    lookup[ids] = np.arange(len(ids))
    return ClassMap(path.stem, tuple(entries[i] for i in ids), (MaskForm(".png", lookup),))


BUILT_IN = {"voc": voc, "pascal-context": pascal_context, "coco-object": coco_object}


def resolve(spec: str) -> ClassMap:
    if spec in BUILT_IN:
        return BUILT_IN[spec]()
    if Path(spec).is_file():
        return from_file(spec)
    raise UserError(f"--classes {spec!r} is neither {', '.join(BUILT_IN)} nor a file: pass one of those")
