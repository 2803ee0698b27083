"""Image loading and preprocessing, identical for every backend (numpy + Pillow only).

Two ways to fit an arbitrary photo to the fixed export size H×W:
- "slide" (GroupViT's COCO/VOC protocol): resize the short side to min(H, W) (long side capped like mmseg's
  (2048, 448) scale), then cover the image with H×W crops at the manifest's stride; results are stitched.
- "letterbox": one inference: fit the whole image inside H×W keeping its aspect, pad the rest.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..artifact import Preprocess
from ..assets import SAMPLES, sample_photos
from ..errors import UserError
from ..imports import require

RESIZE_MODES = ("slide", "letterbox")
# mmseg's test pipeline for GroupViT: img_scale=(2048, 448), keep_ratio — the long side may reach 2048/448×short.
LONG_SIDE_RATIO = 2048 / 448


def load_image(source) -> Image.Image:
    """A path, PIL image or HxWx3 uint8 array → an upright 8-bit RGB PIL image."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise UserError(f"image array has shape {source.shape} and dtype {source.dtype}: pass an HxWx3 uint8 "
                            f"RGB array")
        return Image.fromarray(source, "RGB")
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"image {path} does not exist: check the path")
        try:
            with Image.open(path) as opened:
                opened.load()
                return to_rgb(ImageOps.exif_transpose(opened))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
            raise UserError(f"{path} is not a readable image ({error.__class__.__name__}): pass a JPEG, PNG or "
                            f"other format Pillow reads") from None
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB. 16-bit and float greyscale are rescaled by their range, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


@dataclass
class Prepared:
    """An image ready for the image graph, and what is needed to map results back onto it."""
    windows: np.ndarray              # [N, 3, H, W] float32, normalised
    boxes: list[tuple[int, int, int, int]]   # per window (top, left, height, width) of valid pixels in the canvas
    canvas_size: tuple[int, int]     # (h, w) of the resized image the windows cover
    original_size: tuple[int, int]   # (h, w) of the input image
    window_size: tuple[int, int]     # (H, W) the export size

    def without_pixels(self) -> Prepared:
        """The geometry only: what post-processing needs once the windows have been encoded."""
        return dataclasses.replace(self, windows=np.empty((0, 3, *self.window_size), np.float32))


def normalize(pixels: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """HxWx3 uint8 → 3xHxW float32 with the manifest's mean/std (pixel scale 0..255)."""
    mean = np.asarray(preprocess.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(preprocess.std, dtype=np.float32)
    return ((pixels.astype(np.float32) - mean) * inv_std).transpose(2, 0, 1)


def resize_image(image: Image.Image, size: tuple[int, int], resample: str = "pillow") -> np.ndarray:
    """HxWx3 uint8 of `image` at (width, height) = `size`.

    "pillow": Pillow's bilinear, which widens its filter when it shrinks (anti-aliased); the default.
    "opencv": OpenCV's INTER_LINEAR, which does not — mmcv's `imresize`, so GroupViT's mmseg evaluation exactly
    (needs opencv-python-headless: pip install groupvit-edge[opencv]). On the 50 COCO eval photos (640 px, shrunk
    to a 448 px short side) the two differ by 0.43 intensity levels on average; docs/benchmarks.md has the figures.
    """
    if resample == "pillow":
        return np.asarray(image.resize(size, Image.Resampling.BILINEAR))
    if resample == "opencv":
        cv2 = require("cv2", "opencv", what="--resample opencv", package="OpenCV")
        return cv2.resize(np.asarray(image), size, interpolation=cv2.INTER_LINEAR)
    raise UserError(f"--resample {resample!r} is unknown: use one of {', '.join(RESAMPLES)}")


RESAMPLES = ("pillow", "opencv")


def prepare(image: Image.Image, preprocess: Preprocess, resize: str | None = None,
            resample: str = "pillow") -> Prepared:
    resize = resize or preprocess.resize
    if image.width < 1 or image.height < 1:
        raise UserError(f"an image of {image.width}x{image.height} pixels has nothing to segment: pass a real photo")
    if resize not in RESIZE_MODES:
        raise UserError(f"resize mode {resize!r} is unknown: use one of {', '.join(RESIZE_MODES)}")
    width, height = image.size
    if resize == "letterbox":
        scale = min(preprocess.height / height, preprocess.width / width)
    else:
        short = min(preprocess.height, preprocess.width)
        scale = min(short / min(height, width), short * LONG_SIDE_RATIO / max(height, width))
    # mmcv's rescale_size rounds with int(x + 0.5)
    canvas_h, canvas_w = max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
    canvas = normalize(resize_image(image, (canvas_w, canvas_h), resample), preprocess)
    boxes = sliding_windows(canvas_h, canvas_w, preprocess.height, preprocess.width, *preprocess.stride)
    windows = np.zeros((len(boxes), 3, preprocess.height, preprocess.width), dtype=np.float32)
    for window, (top, left, box_h, box_w) in zip(windows, boxes):
        # Zero after normalisation is the mean colour: the padding of crops smaller than the export size.
        window[:, :box_h, :box_w] = canvas[:, top:top + box_h, left:left + box_w]
    return Prepared(windows, boxes, (canvas_h, canvas_w), (height, width), (preprocess.height, preprocess.width))


def sliding_windows(height: int, width: int, crop_h: int, crop_w: int, stride_h: int, stride_w: int):
    """mmseg's slide_inference grid: crops of crop size at the stride, the last one flush with the edge."""
    def starts(size, crop, stride):
        count = max(size - crop + stride - 1, 0) // stride + 1
        return [max(min(i * stride + crop, size) - crop, 0) for i in range(count)]

    return [(top, left, min(crop_h, height - top), min(crop_w, width - left))
            for top in starts(height, crop_h, stride_h) for left in starts(width, crop_w, stride_w)]


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class FoundImage:
    path: Path
    source: Path          # the file or directory the user named
    relative: Path        # the path below that directory (or the file's name)


def find_images(sources) -> list[FoundImage]:
    """Files and directories (searched recursively, sorted) → images by suffix; a missing path, an unreadable
    directory or a special file is an error. None (or no sources) means the sample photos shipped with
    groupvit-edge."""
    if sources is None or (not isinstance(sources, (str, Path)) and len(sources) == 0):
        return [FoundImage(path, SAMPLES, Path(path.name)) for path in sample_photos()]
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    found: list[FoundImage] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            if not os.access(path, os.R_OK | os.X_OK):
                raise UserError(f"{path} is a directory this user cannot read: fix its permissions or pass "
                                f"another directory")
            found.extend(FoundImage(p, path, p.relative_to(path)) for p in sorted(path.rglob("*"))
                         if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(FoundImage(path, path, Path(path.name)))
        elif path.exists():
            raise UserError(f"{path} is neither a file nor a directory (a pipe, socket or device): pass image "
                            f"files or directories of images")
        else:
            raise UserError(f"{path} does not exist: pass image files or directories of images")
    if not found:
        raise UserError(f"no images found in {', '.join(map(str, sources))}: pass JPEG/PNG files or a directory "
                        f"holding them")
    return found


def list_images(sources) -> list[Path]:
    """The paths of `find_images(sources)`."""
    return [image.path for image in find_images(sources)]


def output_names(images: list[FoundImage]) -> list[Path]:
    """A distinct output name per image, mirroring where it was found: `sub1/x` for DIR/sub1/x.jpg; the suffix is
    kept where two images differ only by it (x.jpg, x.png), the source's name where two sources clash."""
    stems = Counter(image.relative.with_suffix("") for image in images)
    names, taken = [], set()
    for image in images:
        stem = image.relative.with_suffix("")
        options = ([stem] if stems[stem] == 1 else []) + [image.relative, Path(image.source.name) / image.relative]
        name = next((option for option in options if option not in taken), None)
        copy = 2
        while name is None or name in taken:
            name = stem.with_name(f"{stem.name}-{copy}")
            copy += 1
        taken.add(name)
        names.append(name)
    return names
