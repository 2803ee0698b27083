"""Calibration images: read recursively, sampled with a seed, preprocessed exactly like inference.

A seeded, disjoint hold-out of the same directory measures drift after quantization, so nothing is judged on
the images it was calibrated on.
"""
from __future__ import annotations

import hashlib
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifact import Preprocess
from ..assets import sample_photos, samples_description
from ..errors import UserError
from ..metrics.uncertainty import ENOUGH_PHOTOS
from ..progress import progress_bar
from ..segmentation.preprocess import IMAGE_SUFFIXES, load_image, prepare

DEFAULT_HELD_OUT = ENOUGH_PHOTOS     # enough for the drift interval to mean something
VALIDATION_IMAGES = "--validation-images"     # the source of the user's own photos
MIN_HELD_OUT = 2           # fewer held-out photos than this say too little: the shipped photos are used instead


@dataclass(frozen=True)
class PhotoSet:
    """Photos a step measures on, and where they come from in words (the export log and manifest say it)."""
    paths: tuple[Path, ...]
    source: str

    def names(self) -> list[str]:
        return [path.name for path in self.paths]

    def first(self, count: int) -> PhotoSet:
        if count >= len(self.paths):
            return self
        return PhotoSet(self.paths[:count], f"the first {count} of {self.source}")


@dataclass
class CalibrationSet:
    images: list[Path]                      # calibration images, in sampling order
    held_out: list[Path]                    # disjoint images for measuring drift
    preprocess: Preprocess
    seed: int = 0
    skipped_files: int = 0                  # files in the directory that are not images
    unreadable: list[Path] = field(default_factory=list)
    source: str = ""                        # where the calibration images come from, in words
    held_out_source: str = ""

    @classmethod
    def resolve(cls, directory, count: int, preprocess: Preprocess, seed: int = 0, *,
                held_out: int = DEFAULT_HELD_OUT, validation: PhotoSet | None = None, log=print) -> CalibrationSet:
        """Calibration photos (from `directory`, else the shipped sample photos) and held-out photos to measure
        drift on: `validation` when given, else photos of the same source not drawn for calibration, else the
        shipped sample photos. Resolved once per export and handed to every step that needs it."""
        if count < 1:
            raise UserError(f"--calib-count {count} must be at least 1")
        if directory is None:
            photos = sample_photos()
            order = _shuffled(photos, seed)
            share = max(MIN_HELD_OUT, len(photos) // 3)
            chosen, rest = order[share:][:count], order[:share]
            source = f"{len(chosen)} of the {samples_description(len(photos))}"
            rest_source = f"the other {len(rest)} sample photos"
            skipped = 0
        else:
            directory = Path(directory)
            images, skipped = _images_in(directory, log)
            order = _shuffled(images, seed)
            chosen, rest = order[:count], order[count:][:held_out]
            if len(chosen) < count:
                log(f"calibration: {directory} has {len(images)} images, fewer than --calib-count {count}; using all")
            source = f"{len(chosen)} photos of {directory}"
            rest_source = f"{len(rest)} photos of {directory} not drawn for calibration"
            if len(rest) < MIN_HELD_OUT:
                rest = sample_photos()
                rest_source = (f"the {samples_description(len(rest))} (every image of {directory} was drawn for "
                               f"calibration)")
        if validation is not None:
            rest, rest_source = list(validation.paths), validation.source
        return cls(sorted(chosen), sorted(rest), preprocess, seed, skipped, source=source,
                   held_out_source=rest_source)

    def drift_photos(self) -> PhotoSet:
        return PhotoSet(tuple(self.held_out), self.held_out_source)

    def fingerprint(self) -> str:
        """sha256 over the calibration images' bytes: renamed copies hash alike, edited images do not."""
        digest = hashlib.sha256()
        for path in self.images:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    def iter_windows(self, progress: bool = True) -> Iterator[np.ndarray]:
        """Every window of every calibration image, [3, H, W] float32; unreadable files are skipped, counted."""
        for path in progress_bar(self.images, progress, "calibration images"):
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
        return {"count": len(self.images), "source": self.source, "seed": self.seed, "sha256": self.fingerprint(),
                "held_out": [p.name for p in self.held_out], "held_out_source": self.held_out_source,
                "skipped_files": self.skipped_files, "unreadable": [str(p) for p in self.unreadable]}


def _shuffled(paths: list[Path], seed: int) -> list[Path]:
    order = list(paths)
    random.Random(seed).shuffle(order)
    return order


def _images_in(directory: Path, log) -> tuple[list[Path], int]:
    """Image files under `directory` (recursive, sorted) and how many other files were skipped."""
    if not directory.is_dir():
        raise UserError(f"--calib-dir {directory} is not a directory: pass a folder of JPEG/PNG images, or leave "
                        f"--calib-dir out to calibrate on the sample photos shipped with groupvit-edge")
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = len(files) - len(images)
    if skipped:
        log(f"calibration: skipping {skipped} non-image file(s) in {directory}")
    if not images:
        raise UserError(f"--calib-dir {directory} holds no images: pass a folder of JPEG/PNG files")
    return images, skipped
