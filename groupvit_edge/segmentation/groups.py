"""GroupViT's own output made visible: which pixels each group holds, over the whole photo.

Each window has its own groups (group 3 of one window is not group 3 of the next), so an image's groups are
(window, group) pairs; where windows overlap the later window's group is shown. Maps are built at the canvas's
resolution and taken to the photo's size by nearest neighbour, so a group map never mixes two groups.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .postprocess import final_groups, group_class_affinity
from .preprocess import Prepared

BOUNDARY = (0, 0, 0)


@dataclass(frozen=True)
class Group:
    """One group of one window, as it appears in the photo's group map."""
    id: int                  # its value in the group map
    window: int
    group: int               # the window's group index (final groups: 0..7 for gcc-yfcc)
    share: float             # of the photo's pixels
    best_class: str | None   # the class its embedding scores highest (final groups only)
    score: float | None


def window_groups(grouping: np.ndarray, prepared: Prepared) -> list[np.ndarray]:
    """Per window, the winning group of every pixel ([G, h, w] soft maps of each window → [H, W] ids)."""
    return [final_groups(maps, *prepared.window_size) for maps in grouping]


def photo_map(prepared: Prepared, per_window: list[np.ndarray], fill) -> np.ndarray:
    """Per-window [H, W] values laid on the canvas (a later window wins where windows overlap), then taken to the
    photo's size by nearest neighbour."""
    return _to_photo(prepared, _canvas(prepared, per_window, fill))


def raw_group_map(prepared: Prepared, groups: list[np.ndarray], per_window: int) -> np.ndarray:
    """Photo-sized map of window × per_window + group: the same group has the same value in any two maps of the
    same photo (a reference's and a candidate's)."""
    return photo_map(prepared, _offset(groups, per_window), -1)


def group_map(prepared: Prepared, groups: list[np.ndarray], per_window: int) -> tuple[np.ndarray, list[tuple]]:
    """(photo-sized map of compact group ids 0..n-1, the (window, group) of each id). Ids are made compact on the
    canvas, before the map is taken to the photo's size."""
    present, compact = np.unique(_canvas(prepared, _offset(groups, per_window), -1), return_inverse=True)
    compact = compact.reshape(prepared.canvas_size).astype(np.int32)
    return _to_photo(prepared, compact), [divmod(int(value), per_window) for value in present]


def _offset(groups: list[np.ndarray], per_window: int) -> list[np.ndarray]:
    return [ids.astype(np.int64) + index * per_window for index, ids in enumerate(groups)]


def _canvas(prepared: Prepared, per_window: list[np.ndarray], fill) -> np.ndarray:
    canvas = np.full(prepared.canvas_size, fill, dtype=per_window[0].dtype)
    for values, (top, left, box_h, box_w) in zip(per_window, prepared.boxes):
        canvas[top:top + box_h, left:left + box_w] = values[:box_h, :box_w]
    return canvas


def _to_photo(prepared: Prepared, canvas: np.ndarray) -> np.ndarray:
    height, width = prepared.original_size
    return canvas[_nearest(prepared.canvas_size[0], height)][:, _nearest(prepared.canvas_size[1], width)]


def _nearest(size_in: int, size_out: int) -> np.ndarray:
    return np.minimum(((np.arange(size_out) + 0.5) * size_in / size_out).astype(np.int64), size_in - 1)


def describe_groups(ids: np.ndarray, pairs: list[tuple], encoding, text_embeds, class_names, logit_scale,
                    offset: int) -> list[Group]:
    """Each group's share of the photo and the class its embedding scores highest. `offset` is the index of the
    first non-background class in `class_names`."""
    shares = np.bincount(ids.ravel(), minlength=len(pairs)) / ids.size
    found = []
    for index, (window, group) in enumerate(pairs):
        best, score = None, None
        if text_embeds is not None and len(text_embeds):
            affinity = group_class_affinity(encoding.group_embeds[window], encoding.image_embed[window],
                                            text_embeds, logit_scale)[group]
            best, score = class_names[offset + int(affinity.argmax())], float(affinity.max())
        found.append(Group(index, window, group, float(shares[index]), best, score))
    return found


def group_colors(count: int) -> np.ndarray:
    """Distinct, bright colours (never the boundary's black): golden-ratio hues at two lightnesses."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    values = np.where(np.arange(count) % 2, 0.75, 0.95)
    saturation = np.where((np.arange(count) // 2) % 2, 0.55, 0.8)
    return _hsv_to_rgb(hues, saturation, values)


def _hsv_to_rgb(h, s, v) -> np.ndarray:
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.choose(i, [v, q, p, p, t, v]), np.choose(i, [t, v, v, q, p, p]),
                      np.choose(i, [p, p, t, v, v, q])], axis=-1)
    return np.clip(np.round(table * 255), 1, 255).astype(np.uint8)


def group_image(ids: np.ndarray) -> Image.Image:
    """Each group its own colour, boundaries between groups drawn in black — on one side of each boundary, and
    never over all of a group's pixels, so every group keeps its colour in the picture."""
    colored = group_colors(int(ids.max()) + 1)[ids]
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, :-1] |= ids[:, :-1] > ids[:, 1:]
    edge[:, 1:] |= ids[:, 1:] > ids[:, :-1]
    edge[:-1, :] |= ids[:-1, :] > ids[1:, :]
    edge[1:, :] |= ids[1:, :] > ids[:-1, :]
    swallowed = np.bincount(ids[edge], minlength=int(ids.max()) + 1) == np.bincount(ids.ravel(),
                                                                                     minlength=int(ids.max()) + 1)
    edge &= ~swallowed[ids]
    colored[edge] = BOUNDARY
    return Image.fromarray(colored, "RGB")
