"""Prompt template sets and the one rule that turns a class's prompt embeddings into its class embedding.

GroupViT's own evaluation prompts each class with the template set `simple` ("a photo of a {}."); `full` is CLIP's
80 ImageNet templates (shipped as package data). The class embedding is the official `build_text_embedding`: the
mean of the class's *unnormalised* projected text features over its templates, L2-normalised. Averaging normalised
embeddings instead (the rule older artifacts stored) differs whenever there is more than one template.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..assets import IMAGENET_TEMPLATES
from ..errors import UserError

DEFAULT_TEMPLATE_SET = "simple"
SIMPLE_TEMPLATES = ("a photo of a {}.",)
# The averaging rules by the name vocabularies record; only OFFICIAL_AVERAGING is ever built now.
OFFICIAL_AVERAGING = "mean-of-features"
LEGACY_AVERAGING = "mean-of-normalised"


@dataclass(frozen=True)
class TemplateSet:
    name: str                      # "simple", "full", a file's path, or "custom" for templates passed as text
    templates: tuple[str, ...]

    def describe(self) -> str:
        count = len(self.templates)
        return f"{self.name} ({count} template{'s' if count != 1 else ''})"


def full_templates() -> tuple[str, ...]:
    return tuple(line for line in IMAGENET_TEMPLATES.read_text().splitlines() if line)


NAMED = {"simple": lambda: SIMPLE_TEMPLATES, "full": full_templates}


def resolve_templates(spec: str | Path | Sequence[str] | TemplateSet | None) -> TemplateSet:
    """None → the official `simple`; "simple" | "full" | a file of one template per line | templates themselves."""
    if isinstance(spec, TemplateSet):
        return spec
    if spec is None:
        spec = DEFAULT_TEMPLATE_SET
    if isinstance(spec, (str, Path)):
        if str(spec) in NAMED:
            return TemplateSet(str(spec), NAMED[str(spec)]())
        path = Path(spec)
        if path.is_file():
            return TemplateSet(str(path), _read_template_file(path))
        raise UserError(f"--templates {str(spec)!r} is neither {' nor '.join(NAMED)} nor a file: pass one of those "
                        f"(a file holds one template with a {{}} per line)")
    templates = tuple(spec)
    if templates == SIMPLE_TEMPLATES:
        return TemplateSet("simple", templates)
    return TemplateSet("full" if templates == full_templates() else "custom", templates)


def _read_template_file(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"template file {path} is unreadable ({type(error).__name__}): pass a text file with one "
                        f"template per line, e.g. 'a photo of a {{}}.'") from None
    templates = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not templates:
        raise UserError(f"template file {path} holds no template: write one per line, e.g. 'a photo of a {{}}.'")
    return templates


def class_embeddings(features: np.ndarray, classes: int, already_normalised: bool = False) -> np.ndarray:
    """[K*T, D] prompt features in class-major order → [K, D] class embeddings, by the official rule.

    `already_normalised`: the features come from a text graph that L2-normalises its output (artifacts exported
    before the graph returned the projection). With one template the rule's result is the same; with several the
    per-prompt norms it weights by are lost, so that is refused rather than silently averaged the other way.
    """
    per_class = features.shape[0] // classes
    if already_normalised and per_class > 1:
        raise UserError(f"this artifact's text graph returns normalised embeddings, so the official average over "
                        f"{per_class} templates cannot be formed: re-export the artifact, or use --templates simple")
    mean = features.reshape(classes, per_class, -1).astype(np.float64).mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=-1, keepdims=True)).astype(np.float32)
