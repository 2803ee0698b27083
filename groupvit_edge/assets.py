"""What ships inside the package so that no command needs an optional input: the CLIP BPE vocabulary and prompt
templates (MIT) and a few freely licensed photos (licences in data/samples/LICENSES.md) that export validates on,
drift checks measure on and INT8 calibrates on when the user gives none of their own."""
from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
TOKENIZER = DATA / "clip" / "bpe_simple_vocab_16e6.txt.gz"
IMAGENET_TEMPLATES = DATA / "clip" / "imagenet_templates.txt"    # CLIP's 80 prompt templates (MIT)
SAMPLES = DATA / "samples"
SAMPLE_SUFFIX = ".webp"


def default_tokenizer() -> Path:
    """OpenAI CLIP's byte-pair vocabulary, the one GroupViT's text encoder was trained with."""
    return TOKENIZER


def sample_photos() -> list[Path]:
    return sorted(SAMPLES.glob(f"*{SAMPLE_SUFFIX}"))


def samples_description(count: int | None = None) -> str:
    count = len(sample_photos()) if count is None else count
    return f"{count} sample photo{'s' if count != 1 else ''} shipped with groupvit-edge"
