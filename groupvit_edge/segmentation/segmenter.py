"""`Segmenter.segment(image)`: the whole user story in one call, the same on every backend."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import UserError
from ..files import write_atomic
from ..model.specs import TRAINED_CHECKPOINT
from ..runtimes import Runtime
from ..runtimes import open as open_runtime
from ..runtimes.base import ImageEncoding
from .groups import Group, describe_groups, group_image, group_map, window_groups
from .postprocess import BACKGROUND_THRESHOLD, final_groups, stitch, window_scores
from .preprocess import Prepared, load_image, prepare
from .vocabulary import Vocabulary, parse_labels

BACKGROUND = "background"


@dataclass
class Segmentation:
    """A label map over the input image and what is needed to show or score it."""
    labels: np.ndarray               # [H, W] int32 index into class_names
    scores: np.ndarray               # [H, W] float32 score of the winning class
    class_names: list[str]
    image: Image.Image = field(repr=False)
    groups: np.ndarray | None = field(default=None, repr=False)   # [H, W] int32: which group holds each pixel
    group_info: list[Group] = field(default_factory=list)           # per value of `groups`
    geometry: Prepared | None = field(default=None, repr=False)     # where the windows lie (no pixels)
    stage1_grouping: np.ndarray | None = field(default=None, repr=False)  # [N, G1, h, w] first stage's soft maps

    @cached_property
    def stage1_groups(self) -> np.ndarray | None:
        """Like `groups`, for the first stage's groups (64 for gcc-yfcc), or None when the artifact's graph does
        not return them. Built on first use: a photo-sized map is not worth making for every photo when few
        callers look, while the soft maps it comes from are small (G1 × h × w per window)."""
        if self.stage1_grouping is None or self.geometry is None:
            return None
        ids, _ = group_map(self.geometry, window_groups(self.stage1_grouping, self.geometry),
                           self.stage1_grouping.shape[1])
        return ids

    def class_fractions(self) -> dict[str, float]:
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        return {name: count / self.labels.size for name, count in zip(self.class_names, counts) if count}

    def _is_background(self) -> np.ndarray:
        if self.class_names and self.class_names[0] == BACKGROUND:
            return self.labels == 0
        return np.zeros(self.labels.shape, dtype=bool)

    def label_image(self) -> Image.Image:
        """A paletted PNG whose pixel values are class indices: viewable and machine-readable."""
        check_label_count(len(self.class_names))
        image = Image.fromarray(self.labels.astype(np.uint8), "P")
        image.putpalette(palette(256).ravel().tolist())
        return image

    def overlay(self, alpha: float = 0.55, legend: bool = True) -> Image.Image:
        colors = palette(len(self.class_names))
        base = np.asarray(self.image)
        background = self._is_background()
        blended = np.empty_like(base)
        # In bands of rows, in float32: a 24-megapixel photo never needs full-size float copies.
        for start in range(0, base.shape[0], OVERLAY_BAND_ROWS):
            rows = slice(start, start + OVERLAY_BAND_ROWS)
            # Background keeps the photo's own pixels, so the eye goes to what was recognised.
            weight = np.where(background[rows, :, None], np.float32(0), np.float32(alpha))
            mixed = base[rows].astype(np.float32) * (1 - weight) + colors[self.labels[rows]] * weight
            blended[rows] = mixed.round().astype(np.uint8)
        image = Image.fromarray(blended, "RGB")
        return _draw_legend(image, self.class_fractions(), self.class_names) if legend else image

    def group_image(self) -> Image.Image:
        """Each group its own colour, boundaries between groups in black."""
        if self.groups is None:
            raise ValueError("this Segmentation was made without a group map (groups=None): it has no group image")
        return group_image(self.groups)

    def save(self, directory: str | Path, stem: str) -> list[Path]:
        """<stem>.overlay.png, <stem>.labels.png and (when groups are known) <stem>.groups.png, overlay first."""
        images = [("overlay", self.overlay()), ("labels", self.label_image())]
        if self.groups is not None:
            images.append(("groups", self.group_image()))
        return [write_atomic(Path(directory) / f"{stem}.{suffix}.png", _png_writer(image)) for suffix, image in images]


def _png_writer(image: Image.Image) -> Callable[[Path], None]:
    return lambda temporary: image.save(temporary, format="PNG")


MAX_LABEL_IMAGE_CLASSES = 256
OVERLAY_BAND_ROWS = 512


def check_label_count(count: int) -> None:
    if count > MAX_LABEL_IMAGE_CLASSES:
        raise UserError(f"{count} classes (background included) do not fit a paletted label PNG: use at most "
                        f"{MAX_LABEL_IMAGE_CLASSES - 1} labels")


def palette(count: int) -> np.ndarray:
    """PASCAL VOC's colour map: index 0 (background) is black, neighbours get distinct colours."""
    colors = np.zeros((count, 3), dtype=np.uint8)
    for index in range(count):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colors[index] = (red, green, blue)
    return colors


LEGEND_SIZE = 16


def _draw_legend(image: Image.Image, fractions: dict[str, float], class_names: list[str]) -> Image.Image:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=LEGEND_SIZE)
    colors = palette(len(class_names))
    row = LEGEND_SIZE + 6
    y = 4
    for name, share in sorted(fractions.items(), key=lambda item: -item[1]):
        color = tuple(int(c) for c in colors[class_names.index(name)])
        text = f"{name} {share:.0%}"
        width = int(draw.textlength(text, font=font)) + row + 8
        draw.rectangle([4, y, 4 + width, y + row - 2], fill=(0, 0, 0))
        draw.rectangle([8, y + 4, 8 + row - 10, y + row - 6], fill=color, outline=(255, 255, 255))
        draw.text((row + 4, y + 1), text, fill=(255, 255, 255), font=font)
        y += row
    return image


def encode_windows(runtime: Runtime, windows: np.ndarray, batch_size: int = 4) -> ImageEncoding:
    """Run the image graph on every window, `batch_size` windows per call."""
    parts = [runtime.encode_image(windows[i:i + batch_size]) for i in range(0, len(windows), batch_size)]
    return ImageEncoding.concatenate(parts)


def label_map(prepared: Prepared, encoding: ImageEncoding, text_embeds: np.ndarray, logit_scale: float,
              background_threshold: float | None, groups: list[np.ndarray] | None = None,
              with_margin: bool = False):
    """The paper's protocol on every window, stitched → (labels [H,W] int32, winning scores [H,W][, margins]).

    `groups`: the windows' final group ids when the caller already has them (drift computes them anyway).
    """
    if groups is None:
        groups = [final_groups(grouping, *prepared.window_size) for grouping in encoding.grouping]
    windows = [window_scores(groups[i], encoding.group_embeds[i], encoding.image_embed[i], text_embeds,
                             logit_scale, background_threshold)
               for i in range(len(prepared.boxes))]
    return stitch(windows, prepared.boxes, prepared.canvas_size, prepared.original_size, with_margin)


class Segmenter:
    """Zero-shot segmentation with any Runtime: preprocessing, windows, the paper's post-processing, stitching."""

    def __init__(self, runtime: Runtime, labels: Sequence[str] | str | None = None, *, templates=None,
                 tokenizer=None, background_threshold: float | None = BACKGROUND_THRESHOLD,
                 resize: str | None = None, resample: str = "pillow", batch_size: int = 4):
        self.runtime = runtime
        self.manifest = runtime.manifest
        self.preprocess = self.manifest.preprocess
        self.resize = resize
        self.resample = resample
        self.batch_size = max(1, batch_size)
        self.background_threshold = background_threshold
        names = parse_labels(labels) if labels is not None else None
        if background_threshold is not None and names and any(n.casefold() == BACKGROUND for n in names):
            raise UserError(f"--labels has {BACKGROUND!r}, the class pixels without a confident class get: drop it, "
                            f"or pass --no-background to make it an ordinary class")
        self.vocabulary = Vocabulary.build(runtime, names, templates=templates, tokenizer=tokenizer)

    @classmethod
    def open(cls, source, labels=None, *, backend: str | None = None, templates=None, tokenizer=None,
             background_threshold: float | None = BACKGROUND_THRESHOLD, resize: str | None = None,
             resample: str = "pillow",
             batch_size: int = 4, **runtime_options) -> Segmenter:
        """An artifact directory (best installed backend) or a checkpoint (PyTorch reference)."""
        runtime = open_runtime(source, backend=backend, **runtime_options)
        return cls(runtime, labels, templates=templates, tokenizer=tokenizer,
                   background_threshold=background_threshold, resize=resize, resample=resample,
                   batch_size=batch_size)

    def check_label_image(self) -> None:
        """Refuse, before any photo is encoded, a vocabulary too large for the label PNG `save` writes."""
        check_label_count(len(self.class_names))

    @property
    def weights_warning(self) -> str | None:
        """The sentence to show once beside the class names when the weights are seeded random ones, else None."""
        model = self.manifest.model
        if not model.weights_are_random:
            return None
        return (f"{model.id} has seeded random weights, so its class names mean nothing: segment with a trained "
                f"checkpoint such as {TRAINED_CHECKPOINT}, or an artifact exported from one")

    @property
    def class_names(self) -> list[str]:
        names = list(self.vocabulary.labels)
        return [BACKGROUND, *names] if self.background_threshold is not None else names

    def prepare(self, image) -> tuple[Image.Image, Prepared]:
        picture = load_image(image)
        return picture, prepare(picture, self.preprocess, self.resize, self.resample)

    def encode(self, prepared: Prepared) -> ImageEncoding:
        return encode_windows(self.runtime, prepared.windows, self.batch_size)

    def decide(self, prepared: Prepared, encoding: ImageEncoding,
               groups: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encoded windows → (labels, scores) over the original image: the paper's post-processing.
        `groups`: the windows' final group ids when the caller already has them."""
        return label_map(prepared, encoding, self.vocabulary.text_embeds, self.manifest.logit_scale,
                         self.background_threshold, groups)

    def segment(self, image) -> Segmentation:
        picture, prepared = self.prepare(image)
        encoding = self.encode(prepared)
        groups = window_groups(encoding.grouping, prepared)
        labels, scores = self.decide(prepared, encoding, groups)
        ids, pairs = group_map(prepared, groups, encoding.grouping.shape[1])
        info = describe_groups(ids, pairs, encoding, self.vocabulary.text_embeds, self.class_names,
                               self.manifest.logit_scale, offset=0 if self.background_threshold is None else 1)
        return Segmentation(labels, scores, self.class_names, picture, ids, info, geometry=prepared.without_pixels(),
                            stage1_grouping=encoding.stage1_grouping)

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
