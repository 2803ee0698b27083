"""Class names → class embeddings, through whichever runtime's text graph, or from a precomputed vocab.npz.

A class embedding is the normalised mean of the normalised embeddings of its prompts (CLIP's zero-shot
classifier, as GroupViT's evaluation builds it), so changing the vocabulary never needs a re-export.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..tokenizer import DEFAULT_TEMPLATES, ClipTokenizer, tokenize_labels

TEXT_BATCH = 256   # prompts per text-graph call: bounds memory for large vocabularies


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
    templates: tuple[str, ...]
    text_embeds: np.ndarray          # [K, D] float32, L2-normalised

    @classmethod
    def build(cls, runtime, labels: list[str] | None, templates=None, tokenizer=None) -> "Vocabulary":
        templates = tuple(templates or DEFAULT_TEMPLATES)
        stored_path = runtime.manifest.vocabulary_path()
        if stored_path is not None:
            stored = cls.load(stored_path)
            if labels is None or (stored.labels == labels and stored.templates == templates):
                return stored
        if labels is None:
            raise UserError("no labels given and the artifact has no precomputed vocabulary: pass --labels, "
                            "e.g. --labels cat,dog,grass")
        return cls.encode(runtime, labels, templates, tokenizer)

    @classmethod
    def encode(cls, runtime, labels: list[str], templates=None, tokenizer=None) -> "Vocabulary":
        templates = tuple(templates or DEFAULT_TEMPLATES)
        tokenizer = load_tokenizer(tokenizer or _tokenizer_source(runtime))
        token_ids, per_class = tokenize_labels(tokenizer, labels, templates)
        prompt_embeds = np.concatenate([runtime.encode_text(token_ids[i:i + TEXT_BATCH])
                                        for i in range(0, len(token_ids), TEXT_BATCH)])
        class_embeds = prompt_embeds.reshape(len(labels), per_class, -1).mean(axis=1)
        class_embeds /= np.linalg.norm(class_embeds, axis=-1, keepdims=True)
        return cls(list(labels), tuple(templates), class_embeds.astype(np.float32))

    def save(self, path: str | Path) -> Path:
        from ..files import write_atomic

        def write(temporary: Path) -> None:
            with open(temporary, "wb") as stream:      # a file object: np.savez would append .npz to a path
                np.savez(stream, labels=np.array(self.labels), templates=np.array(self.templates),
                         text_embeds=self.text_embeds)
        return write_atomic(path, write)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls([str(x) for x in data["labels"]], tuple(str(x) for x in data["templates"]),
                           data["text_embeds"].astype(np.float32))
        except (OSError, KeyError, ValueError) as error:
            raise UserError(f"vocabulary {path} is unreadable ({error}); re-export with --labels") from None


def _tokenizer_source(runtime) -> Path:
    source = runtime.manifest.tokenizer_source()
    if source is None or not source.exists():
        raise UserError("no CLIP tokenizer vocabulary for the labels: pass --tokenizer "
                        "PATH/bpe_simple_vocab_16e6.txt.gz (or a directory with vocab.json + merges.txt)")
    return source
