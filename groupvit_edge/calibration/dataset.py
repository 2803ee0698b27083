"""Calibration images: read recursively, sampled with a seed, preprocessed exactly like inference.

A seeded, disjoint hold-out of the same directory measures drift after quantization, so nothing is judged on
the images it was calibrated on.
"""
from __future__ import annotations

import hashlib
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..artifact import Preprocess
from ..errors import UserError
from ..segmentation.preprocess import IMAGE_SUFFIXES, load_image, prepare

DEFAULT_HELD_OUT = 8


@dataclass
class CalibrationSet:
    images: list[Path]                      # calibration images, in sampling order
    held_out: list[Path]                    # disjoint images for measuring drift
    preprocess: Preprocess
    seed: int = 0
    skipped_files: int = 0                  # files in the directory that are not images
    unreadable: list[Path] = field(default_factory=list)

    @classmethod
    def from_dir(cls, directory, count: int, preprocess: Preprocess, seed: int = 0,
                 held_out: int = DEFAULT_HELD_OUT, log=print) -> "CalibrationSet":
        directory = Path(directory)
        if not directory.is_dir():
            raise UserError(f"--calib-dir {directory} is not a directory: pass a folder of images, "
                            f"e.g. ../shared/data/coco/calib2017")
        if count < 1:
            raise UserError(f"--calib-count {count} must be at least 1")
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped = len(files) - len(images)
        if skipped:
            log(f"calibration: skipping {skipped} non-image file(s) in {directory}")
        if not images:
            raise UserError(f"--calib-dir {directory} holds no images: pass a folder of JPEG/PNG files")
        order = images[:]
        random.Random(seed).shuffle(order)
        chosen = order[:count]
        rest = order[count:]
        if len(chosen) < count:
            log(f"calibration: {directory} has {len(images)} images, fewer than --calib-count {count}; using all")
        return cls(sorted(chosen), sorted(rest[:held_out]), preprocess, seed, skipped)

    def fingerprint(self) -> str:
        """sha256 over the calibration images' bytes: renamed copies hash alike, edited images do not."""
        digest = hashlib.sha256()
        for path in self.images:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    def iter_windows(self, progress: bool = True) -> Iterator[np.ndarray]:
        """Every window of every calibration image, [3, H, W] float32; unreadable files are skipped, counted."""
        iterator = self.images
        if progress:
            from tqdm import tqdm
            iterator = tqdm(self.images, desc="calibration images", unit="image", leave=False, disable=None)
        for path in iterator:
            try:
                prepared = prepare(load_image(path), self.preprocess)
            except UserError:
                self.unreadable.append(path)
                continue
            yield from prepared.windows
        if self.unreadable:
            warnings.warn(f"calibration: skipped {len(self.unreadable)} unreadable image(s), "
                          f"e.g. {self.unreadable[0]}", stacklevel=2)

    def windows(self, progress: bool = True) -> np.ndarray:
        windows = list(self.iter_windows(progress))
        if not windows:
            raise UserError("no calibration image could be read: check --calib-dir")
        return np.stack(windows)

    def summary(self) -> dict:
        return {"count": len(self.images), "seed": self.seed, "sha256": self.fingerprint(),
                "held_out": [p.name for p in self.held_out], "skipped_files": self.skipped_files,
                "unreadable": [str(p) for p in self.unreadable]}
