"""Dataset class maps: raw mask values → evaluation class indices (0 = background, 255 = ignored).

Built in: COCO-Object (the GroupViT paper's "COCO": 80 things + background; panoptic thing ids ≤ 90 map to
1..80, stuff ids ≥ 92 and 0 become background) and PASCAL VOC (20 + background, 255 ignored). A FILE gives
one class per line (`id: name`, or bare names numbered from 0) for any other dataset.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..segmentation.vocabulary import COCO_THINGS

IGNORE = 255
BACKGROUND = "background"

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


@dataclass(frozen=True)
class ClassMap:
    name: str
    class_names: tuple[str, ...]      # index 0 is the background
    lookup: np.ndarray                # [256] raw mask value → class index or IGNORE

    @property
    def foreground(self) -> list[str]:
        """The names a segmenter is asked for; it adds the background itself."""
        return list(self.class_names[1:])

    def convert(self, mask: np.ndarray) -> np.ndarray:
        if mask.dtype != np.uint8:
            if mask.min() < 0 or mask.max() > 255:
                raise UserError(f"mask values {mask.min()}..{mask.max()} do not fit 0..255: pass 8-bit masks")
            mask = mask.astype(np.uint8)
        return self.lookup[mask]


def coco_object() -> ClassMap:
    lookup = np.zeros(256, dtype=np.uint8)               # unlabeled (0) and stuff (≥ 92) are background
    for index, coco_id in enumerate(sorted(COCO_THINGS), start=1):
        lookup[coco_id] = index
    return ClassMap("coco-object", (BACKGROUND, *(COCO_THINGS[i] for i in sorted(COCO_THINGS))), lookup)


def voc() -> ClassMap:
    lookup = np.full(256, IGNORE, dtype=np.uint8)
    lookup[: len(VOC_CLASSES)] = np.arange(len(VOC_CLASSES))
    return ClassMap("voc", VOC_CLASSES, lookup)


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
    return ClassMap(path.stem, tuple(entries[i] for i in ids), lookup)


BUILT_IN = {"coco-object": coco_object, "voc": voc}


def resolve(spec: str) -> ClassMap:
    if spec in BUILT_IN:
        return BUILT_IN[spec]()
    if Path(spec).is_file():
        return from_file(spec)
    raise UserError(f"--classes {spec!r} is neither {' nor '.join(BUILT_IN)} nor a file: pass one of those")
