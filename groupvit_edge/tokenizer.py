"""CLIP byte-pair-encoding tokenizer for GroupViT's text tower, with prompt templates for class names.

Edge deployments must turn class names into token ids without torch, network access or `transformers`,
so this re-implements OpenAI CLIP's `simple_tokenizer` with the stdlib and numpy only. It reads either a
checkpoint's `vocab.json` + `merges.txt` (HF CLIPTokenizer layout) or OpenAI's `bpe_simple_vocab_16e6.txt.gz`
(shipped in groupvit_edge/data/clip: `assets.default_tokenizer()`).
"""

from __future__ import annotations

import functools
import gzip
import html
import json
import os
import re
import string
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from groupvit_edge.errors import UserError

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
CONTEXT_LENGTH = 77
# OpenAI's file holds far more merges than the model was trained with; CLIP keeps only this many.
_NUM_MERGES = 49152 - 256 - 2

_FIX = ("pass a CLIP bpe_simple_vocab_16e6.txt.gz file or a directory with vocab.json and merges.txt, or leave "
        "--tokenizer out (export then uses the checkpoint's vocabulary or the CLIP one shipped with groupvit-edge)")
_LITERALS = (START_TOKEN, END_TOKEN, "'s", "'t", "'re", "'ve", "'m", "'ll", "'d")  # tried in this order, like the regex


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table, so BPE never sees whitespace or control bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def _clean(text: str) -> str:
    """Normalise like CLIP's basic_clean + whitespace_clean + lower, so ids match what the model was trained on."""
    # ftfy is not available (no new dependency): we apply only its NFC step and skip its other fixes (mojibake,
    # curly quotes -> straight, ligatures, full-width forms), as HF CLIPTokenizer also does; plain text is unaffected.
    text = unicodedata.normalize("NFC", text)
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip().lower()


def _char_kind(ch: str) -> str:
    # Emulates the `regex` classes \p{L} / \p{N} of CLIP's pattern: both are Unicode general categories, so the
    # first letter of unicodedata.category() ("L*" / "N*") is the same test; only the Unicode database version may
    # differ.
    if ch.isspace():
        return " "
    kind = unicodedata.category(ch)[0]
    return kind if kind in "LN" else "O"


def _pretokenize(text: str) -> list[str]:
    """Hand-rolled equivalent of CLIP's findall over
    <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+
    (whitespace is dropped)."""
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        kind = _char_kind(ch)
        if kind == " ":
            i += 1
            continue
        literal = next((lit for lit in _LITERALS if text.startswith(lit, i)), None) if ch in "'<" else None
        if literal is not None:
            pieces.append(literal)
            i += len(literal)
            continue
        j = i + 1
        if kind != "N":  # digits are split one by one, letter and symbol runs are kept whole
            while j < n and _char_kind(text[j]) == kind:
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


def _read_text(path: Path, gz: bool = False) -> str:
    """Read a vocabulary file, turning every I/O or decoding failure into a UserError that names the file."""
    try:
        if gz:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UserError(f"CLIP vocabulary file {path} does not exist: {_FIX}.") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise UserError(f"CLIP vocabulary file {path} is corrupt ({type(e).__name__}): replace it with an intact "
                        f"copy, or {_FIX}.") from None


def _corrupt(path: Path, reason: str) -> UserError:
    return UserError(f"CLIP vocabulary file {path} is corrupt ({reason}): replace it with an intact copy, or {_FIX}.")


class ClipTokenizer:
    """Turns text into CLIP token ids, identical to OpenAI `clip.tokenize` / HF `CLIPTokenizer` for ordinary text."""

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, ...]],
                 context_length: int = CONTEXT_LENGTH):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 to hold the start and end tokens, got {context_length}")
        self.encoder = encoder
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.context_length = context_length
        self.start_id = encoder[START_TOKEN]
        self.end_id = encoder[END_TOKEN]
        self._byte_encoder = _bytes_to_unicode()
        # Prompt sets repeat the same few words thousands of times; caching per word makes BPE nearly free.
        self._bpe = functools.lru_cache(maxsize=1 << 16)(self._bpe_uncached)

    # ---- loading -------------------------------------------------------------------------------------------

    @classmethod
    def from_bpe_gz(cls, path: str | os.PathLike, **kwargs) -> ClipTokenizer:
        """OpenAI's merges-only file: the vocabulary is rebuilt from the merges exactly as CLIP does."""
        path = Path(path)
        lines = _read_text(path, gz=True).split("\n")[1 : _NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise _corrupt(path, f"expected {_NUM_MERGES} merge lines of two symbols")
        vocab = list(_bytes_to_unicode().values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges] + [START_TOKEN, END_TOKEN]
        return cls({tok: i for i, tok in enumerate(vocab)}, merges, **kwargs)

    @classmethod
    def from_vocab_merges(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike, **kwargs) -> ClipTokenizer:
        """HF CLIPTokenizer files as shipped in GroupViT checkpoints (e.g. nvidia/groupvit-gcc-yfcc)."""
        vocab_json, merges_txt = Path(vocab_json), Path(merges_txt)
        try:
            encoder = json.loads(_read_text(vocab_json))
        except json.JSONDecodeError:
            raise _corrupt(vocab_json, "invalid JSON") from None
        if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
            raise _corrupt(vocab_json, "expected a JSON object mapping tokens to integer ids")
        lines = [ln for ln in _read_text(merges_txt).split("\n") if ln.strip() and not ln.startswith("#version")]
        merges = [tuple(ln.split()) for ln in lines]
        if not merges or any(len(m) != 2 for m in merges):
            raise _corrupt(merges_txt, "expected lines of two space-separated symbols")
        # Checking every symbol BPE can produce up front turns a later KeyError mid-export into a clear message.
        base = list(_bytes_to_unicode().values())
        needed = [START_TOKEN, END_TOKEN, *base, *(b + "</w>" for b in base), *("".join(m) for m in merges)]
        missing = next((tok for tok in needed if tok not in encoder), None)
        if missing is not None:
            raise _corrupt(vocab_json, f"token {missing!r} is missing, or it does not match {merges_txt.name}")
        return cls(encoder, merges, **kwargs)

    @classmethod
    def from_pretrained_dir(cls, directory: str | os.PathLike, **kwargs) -> ClipTokenizer:
        """Accept whatever a checkpoint directory ships: HF vocab.json + merges.txt first, else an OpenAI bpe gz."""
        directory = Path(directory)
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        if vocab.exists() or merges.exists():
            return cls.from_vocab_merges(vocab, merges, **kwargs)
        gz = sorted(directory.glob("bpe*.txt.gz")) if directory.is_dir() else []
        if gz:
            return cls.from_bpe_gz(gz[0], **kwargs)
        raise UserError(f"{directory} holds no CLIP vocabulary (vocab.json + merges.txt or "
                        f"bpe_simple_vocab_16e6.txt.gz): {_FIX}.")

    # ---- encoding ------------------------------------------------------------------------------------------

    def _bpe_uncached(self, token: str) -> tuple[int, ...]:
        if token in (START_TOKEN, END_TOKEN):
            return (self.encoder[token],)
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return tuple(self.encoder[symbol] for symbol in word)

    def encode(self, text: str) -> list[int]:
        """Token ids with start and end tokens, not truncated (``__call__`` truncates to the context length)."""
        ids = [self.start_id]
        for piece in _pretokenize(_clean(text)):
            mapped = "".join(self._byte_encoder[b] for b in piece.encode("utf-8", errors="surrogatepass"))
            ids.extend(self._bpe(mapped))
        ids.append(self.end_id)
        return ids

    def __call__(self, texts: str | Iterable[str], context_length: int | None = None) -> np.ndarray:
        """Batch like OpenAI `clip.tokenize(truncate=True)`: int64 [K, context_length], zero-padded after the end token.

        A too-long text keeps its start token, the first context_length - 2 tokens and the end token, because
        CLIP pools the text embedding at the end token: dropping it would silently give a wrong embedding.
        """
        length = self.context_length if context_length is None else context_length
        if length < 2:
            raise ValueError(f"context_length must be >= 2 to hold the start and end tokens, got {length}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > length:
                ids = ids[: length - 1] + [self.end_id]
            out[row, : len(ids)] = ids
        return out


# ---- prompts for class names -----------------------------------------------------------------------------


def prompts_for(class_name: str, templates: Sequence[str]) -> list[str]:
    """One prompt per template (segmentation.prompts holds the template sets)."""
    return [template.format(class_name) for template in templates]


def tokenize_labels(
    tokenizer: ClipTokenizer, labels: Sequence[str], templates: Sequence[str]
) -> tuple[np.ndarray, int]:
    """Token ids [K*T, context_length] in class-major order (class k owns rows k*T .. k*T+T-1), and T.

    The caller runs the text tower and averages each class's T embeddings into one class embedding.
    """
    labels = list(labels)
    if not labels:
        raise UserError("--labels is empty: pass at least one class name, e.g. --labels cat,dog.")
    for position, label in enumerate(labels, start=1):
        if not label or not label.strip():
            raise UserError(
                f"--labels has an empty class name at position {position}: remove the stray comma, e.g. "
                "--labels cat,dog."
            )
    templates = list(templates)
    if not templates or not all(_one_placeholder(t) for t in templates):
        raise UserError("Each prompt template needs exactly one {} placeholder: pass templates like "
                        "'a photo of a {}.'.")
    prompts = [prompt for label in labels for prompt in prompts_for(label.strip(), templates)]
    for prompt in prompts:
        length = len(tokenizer.encode(prompt))
        if length > tokenizer.context_length:
            raise UserError(f"the prompt {prompt[:60]!r}… is {length} tokens, more than the text encoder's "
                            f"{tokenizer.context_length}: shorten the class name")
    return tokenizer(prompts), len(templates)


def _one_placeholder(template) -> bool:
    """True when `template` is text with exactly one empty `{}` field and no other braces."""
    if not isinstance(template, str):
        return False
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError:
        return False
    return fields == [""]
