"""The tokenizer must produce exactly the ids the text tower was trained on, so it is checked against HF CLIPTokenizer."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from groupvit_edge.errors import UserError
from groupvit_edge.segmentation.prompts import full_templates
from groupvit_edge.tokenizer import ClipTokenizer, prompts_for, tokenize_labels

BPE_GZ = Path(__file__).resolve().parents[1].parent / "shared/data/clip/bpe_simple_vocab_16e6.txt.gz"
START, END = 49406, 49407

PARITY_TEXTS = [
    "a photo of a cat.",
    "A PHOTO OF A DOG!",
    "itap of a {}.".format("traffic light"),
    "don't stop",
    "it's a bird, it's a plane",
    "they're here; we've gone; I'm fine; you'll see; he'd go",
    "rock'n'roll ''quoted'' 'single'",
    "123 apples and 4567 pears",
    "3.14159 is pi, 1,000,000 is a million",
    "hyphen-ated well-known state-of-the-art",
    "multiple     spaces\tand\ttabs\nand\nnewlines",
    "   leading and trailing   ",
    "café crème brûlée",
    "über straße größe",
    "naïve résumé",
    "日本語のテキスト",
    "東京 2020 オリンピック",
    "emoji 🐱🐶 and 🚗!!",
    "👍🏽 thumbs",
    "Ελληνικά και русский текст",
    "العربية",
    "hello...world???",
    "(parentheses) [brackets] {braces}",
    "email@example.com https://example.org/path?q=1",
    "#hashtag @mention $100 50% a&b",
    "under_score and back\\slash",
    "<|startoftext|>special<|endoftext|>",
    "MiXeD CaSe WoRdS",
    "a",
    "",
    "e\u0301 combining accent",
    "x²³ ½ Ⅻ",
]


@pytest.fixture(scope="module")
def tok():
    return ClipTokenizer.from_bpe_gz(BPE_GZ)


def _openai_bytes_to_unicode():
    """OpenAI's table, copied independently of the module so the oracle does not share its bugs."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory):
    """vocab.json + merges.txt built from the bpe gz the way CLIP builds its vocabulary."""
    lines = gzip.open(BPE_GZ, "rt", encoding="utf-8").read().split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(_openai_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out = tmp_path_factory.mktemp("clip_hf")
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return out


def test_known_ids(tok):
    assert tok.encode("a photo of a cat.") == [START, 320, 1125, 539, 320, 2368, 269, END]


@pytest.fixture(scope="module")
def hf(hf_files):
    transformers = pytest.importorskip("transformers")  # test oracle only; the module never imports it
    return transformers.CLIPTokenizer.from_pretrained(str(hf_files))


@pytest.mark.parametrize("text", PARITY_TEXTS)
def test_parity_with_transformers(tok, hf, text):
    assert tok.encode(text) == hf(text)["input_ids"]


def test_vocab_merges_matches_bpe_gz(tok, hf_files, tmp_path):
    from_files = ClipTokenizer.from_vocab_merges(hf_files / "vocab.json", hf_files / "merges.txt")
    from_dir = ClipTokenizer.from_pretrained_dir(hf_files)
    for text in PARITY_TEXTS:
        assert from_files.encode(text) == tok.encode(text) == from_dir.encode(text)
    gz_dir = tmp_path / "ckpt"
    gz_dir.mkdir()
    (gz_dir / BPE_GZ.name).write_bytes(BPE_GZ.read_bytes())
    assert ClipTokenizer.from_pretrained_dir(gz_dir).encode("a photo of a cat.") == tok.encode("a photo of a cat.")


def test_batch_shape_padding_and_truncation(tok):
    long_text = " ".join(["word"] * 200)
    ids = tok(["a photo of a cat.", long_text])
    assert ids.shape == (2, 77) and ids.dtype == np.int64
    assert ids[0, :8].tolist() == [START, 320, 1125, 539, 320, 2368, 269, END]
    assert not ids[0, 8:].any()
    full = tok.encode(long_text)
    assert ids[1].tolist() == full[:76] + [END]
    assert ids[1, 0] == START and ids[1, -1] == END
    assert tok(["cat"], context_length=5).shape == (1, 5)
    assert tok([long_text], context_length=5)[0].tolist() == [START] + full[1:4] + [END]


def test_html_unescape_and_whitespace(tok):
    assert tok.encode("cats &amp; dogs") == tok.encode("cats & dogs")
    assert tok.encode("  CATS \n\t dogs ") == tok.encode("cats dogs")


def test_final_sigma_follows_openai(tok):
    # OpenAI CLIP lowercases with Python's str.lower (context-aware final sigma); HF's tokenizers backend maps
    # Σ -> σ everywhere. We follow OpenAI, the tokenizer GroupViT was trained with.
    assert tok.encode("ΟΔΟΣ") == tok.encode("οδος")
    assert tok.encode("ΟΔΟΣ") != tok.encode("οδοσ")


def test_missing_file_names_path(tmp_path):
    """The sentence names the file and fixes a user can make anywhere: a vocabulary of their own or the shipped one."""
    missing = tmp_path / "nope.txt.gz"
    with pytest.raises(UserError, match="nope.txt.gz") as error:
        ClipTokenizer.from_bpe_gz(missing)
    assert "leave --tokenizer out" in str(error.value) and "../" not in str(error.value)
    with pytest.raises(UserError, match="merges.txt"):
        ClipTokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")
    with pytest.raises(UserError, match=str(tmp_path.name)):
        ClipTokenizer.from_pretrained_dir(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"this is not gzip at all", gzip.compress(b"#version: 0.2\ni n\n"), gzip.compress(b"x" * 1000)[:20]],
    ids=["not-gzip", "too-few-merges", "truncated"],
)
def test_corrupt_gz_names_path(tmp_path, content):
    bad = tmp_path / "broken_bpe.txt.gz"
    bad.write_bytes(content)
    with pytest.raises(UserError, match="broken_bpe.txt.gz"):
        ClipTokenizer.from_bpe_gz(bad)


def test_corrupt_vocab_json_names_path(tmp_path, hf_files):
    (tmp_path / "vocab.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "merges.txt").write_text((hf_files / "merges.txt").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(UserError, match="vocab.json"):
        ClipTokenizer.from_pretrained_dir(tmp_path)


def test_prompts_and_label_tokens(tok):
    assert prompts_for("cat", ["a photo of a {}.", "itap of a {}."]) == ["a photo of a cat.", "itap of a cat."]
    templates = full_templates()
    ids, n_templates = tokenize_labels(tok, ["cat", "dog"], templates)
    assert n_templates == len(templates) == 80
    assert ids.shape == (2 * n_templates, 77) and ids.dtype == np.int64
    assert np.array_equal(ids[:n_templates], tok(prompts_for("cat", templates)))
    assert np.array_equal(ids[n_templates:], tok(prompts_for("dog", templates)))


@pytest.mark.parametrize("labels", [[], ["cat", "  "], [""]])
def test_empty_labels_raise(tok, labels):
    with pytest.raises(UserError, match="--labels"):
        tokenize_labels(tok, labels, ["a photo of a {}."])
