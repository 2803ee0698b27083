"""Class names → class embeddings, through whichever runtime's text graph, or from a precomputed vocab.npz.

A class embedding is built by the official rule (segmentation.prompts.class_embeddings) from the text graph's
features of its prompts, so changing the vocabulary never needs a re-export.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import write_atomic
from ..tokenizer import ClipTokenizer, tokenize_labels
from .prompts import LEGACY_AVERAGING, OFFICIAL_AVERAGING, TemplateSet, class_embeddings, resolve_templates

TEXT_BATCH = 256   # prompts per text-graph call: bounds memory for large vocabularies

# COCO's 80 thing classes by their panoptic ids (metrics.classmaps maps masks with them); their names are the
# vocabulary when neither --labels nor the artifact gives one.
COCO_THINGS = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple", 54: "sandwich",
    55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut", 61: "cake", 62: "chair",
    63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet", 72: "tv", 73: "laptop",
    74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster",
    81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}
DEFAULT_LABELS = tuple(COCO_THINGS.values())


def parse_labels(labels: Sequence[str] | str) -> list[str]:
    """"cat, dog" or ["cat", "dog"] → ["cat", "dog"]; empty names, names that are not text, and names that differ
    only in case or surrounding spaces (the same class to the text encoder) are the user's to fix."""
    raw = labels.split(",") if isinstance(labels, str) else list(labels)
    strange = next((name for name in raw if not isinstance(name, str)), None)
    if strange is not None:
        raise UserError(f"label {strange!r} is a {type(strange).__name__}, not text: pass class names as str")
    names = [name.strip() for name in raw]
    if not names or not any(names):
        raise UserError("--labels is empty: pass at least one class name, e.g. --labels cat,dog")
    if not all(names):
        raise UserError(f"--labels {','.join(names)!r} has an empty class name: remove the stray comma")
    seen: dict[str, list[str]] = {}
    for name in names:
        seen.setdefault(name.casefold(), []).append(name)
    repeated = next((spellings for spellings in seen.values() if len(spellings) > 1), None)
    if repeated:
        raise UserError(f"--labels names {repeated[0]!r} {len(repeated)} times ({', '.join(repeated)}): the text "
                        f"encoder lowercases names, so give each class once")
    return names


def load_tokenizer(source) -> ClipTokenizer:
    if isinstance(source, ClipTokenizer):
        return source
    path = Path(source)
    return ClipTokenizer.from_pretrained_dir(path) if path.is_dir() else ClipTokenizer.from_bpe_gz(path)


@dataclass
class Vocabulary:
    labels: list[str]
    templates: TemplateSet
    text_embeds: np.ndarray          # [K, D] float32, L2-normalised
    averaging: str = OFFICIAL_AVERAGING

    @classmethod
    def build(cls, runtime, labels: list[str] | None, templates=None, tokenizer=None) -> Vocabulary:
        """`labels` encoded through the runtime's text graph with `templates` (default: the official `simple`);
        labels None: the artifact's stored vocabulary's labels, else the COCO object classes (DEFAULT_LABELS).
        A stored vocabulary is reused only when its labels, templates and averaging are the ones asked for."""
        template_set = resolve_templates(templates)
        stored_path = runtime.manifest.vocabulary_path()
        stored = cls.load(stored_path) if stored_path is not None else None
        names = labels if labels is not None else (stored.labels if stored is not None else list(DEFAULT_LABELS))
        if stored is not None and stored.matches(names, template_set):
            return stored
        return cls.encode(runtime, names, template_set, tokenizer)

    def matches(self, labels: list[str], templates: TemplateSet) -> bool:
        return (self.labels == list(labels) and self.templates.templates == templates.templates
                and self.averaging == OFFICIAL_AVERAGING)

    @classmethod
    def encode(cls, runtime, labels: list[str], templates=None, tokenizer=None) -> Vocabulary:
        template_set = resolve_templates(templates)
        tokenizer = load_tokenizer(tokenizer or _tokenizer_source(runtime))
        token_ids, _ = tokenize_labels(tokenizer, labels, template_set.templates)
        features = np.concatenate([runtime.encode_text(token_ids[i:i + TEXT_BATCH])
                                   for i in range(0, len(token_ids), TEXT_BATCH)])
        embeds = class_embeddings(features, len(labels), runtime.manifest.text_output_normalised)
        return cls(list(labels), template_set, embeds)

    def save(self, path: str | Path) -> Path:

        def write(temporary: Path) -> None:
            with open(temporary, "wb") as stream:      # a file object: np.savez would append .npz to a path
                np.savez(stream, labels=np.array(self.labels), templates=np.array(self.templates.templates),
                         template_set=np.array(self.templates.name), averaging=np.array(self.averaging),
                         text_embeds=self.text_embeds)
        return write_atomic(path, write)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """A saved vocabulary; one saved before vocabularies recorded their averaging used the legacy rule."""
        try:
            with np.load(path, allow_pickle=False) as data:
                templates = tuple(str(x) for x in data["templates"])
                name = str(data["template_set"]) if "template_set" in data else \
                    resolve_templates(templates).name
                averaging = str(data["averaging"]) if "averaging" in data else LEGACY_AVERAGING
                return cls([str(x) for x in data["labels"]], TemplateSet(name, templates),
                           data["text_embeds"].astype(np.float32), averaging)
        except (OSError, KeyError, ValueError) as error:
            raise UserError(f"vocabulary {path} is unreadable ({error}); re-export with --labels") from None


def _tokenizer_source(runtime) -> Path:
    source = runtime.manifest.tokenizer_source()
    if source is None or not source.exists():
        raise UserError("no CLIP tokenizer vocabulary for the labels: pass --tokenizer "
                        "PATH/bpe_simple_vocab_16e6.txt.gz (or a directory with vocab.json + merges.txt)")
    return source
