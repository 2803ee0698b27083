"""Shared fixtures: real data from ../shared/data, and real checkpoints/artifacts that the tests write.

No weights can be downloaded here, so every model is the gcc-yfcc architecture with seeded random weights,
saved as a real checkpoint and loaded through the real loading code.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Beside the repository; a checkout elsewhere (a git worktree) names it in GROUPVIT_EDGE_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("GROUPVIT_EDGE_SHARED_DATA", REPO.parent / "shared" / "data"))
BPE_PATH = SHARED_DATA / "clip" / "bpe_simple_vocab_16e6.txt.gz"
EVAL_IMAGES = SHARED_DATA / "coco" / "eval2017" / "images"
EVAL_MASKS = SHARED_DATA / "coco" / "eval2017" / "masks"
CALIB_IMAGES = SHARED_DATA / "coco" / "calib2017"


def pytest_report_header(config):
    return f"shared data: {SHARED_DATA} ({'found' if SHARED_DATA.is_dir() else 'MISSING'})"


@pytest.fixture(scope="session")
def coco_images() -> list[Path]:
    images = sorted(EVAL_IMAGES.glob("*.jpg"))
    assert images, f"real COCO images expected in {EVAL_IMAGES}"
    return images


@pytest.fixture(scope="session")
def bpe_path() -> Path:
    assert BPE_PATH.is_file(), f"CLIP BPE vocabulary expected at {BPE_PATH}"
    return BPE_PATH


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """random:0 written as a HuggingFace checkpoint directory (config.json + model.safetensors)."""
    from groupvit_edge.model import load_model, save_pretrained
    return save_pretrained(load_model("random:0").model, tmp_path_factory.mktemp("ckpt") / "groupvit-random0")


@pytest.fixture(scope="session")
def onnx_artifact(tmp_path_factory, random_checkpoint, bpe_path, coco_images) -> Path:
    """The fp32 ONNX artifact at 448², exported from the checkpoint the way the README does it."""
    from groupvit_edge.exporters import export
    out = tmp_path_factory.mktemp("artifacts") / "fp32"
    export(str(random_checkpoint), out, "onnx", image_size=448, tokenizer=bpe_path, labels=["cat", "dog", "grass"],
           validation_images=coco_images[0], log=lambda message: None)
    return out


@pytest.fixture(scope="session")
def reference_runtime(random_checkpoint):
    from groupvit_edge import runtimes
    return runtimes.open(str(random_checkpoint), image_size=(448, 448))


def record_file(artifact: Path, relative: str, key_path: tuple[str, ...]) -> None:
    """After a test deliberately replaces an artifact file, record its new sha256 where the manifest keeps it
    (e.g. ("graphs", "image", "sha256")), as an export that produced those bytes would have."""
    import json
    from groupvit_edge.artifact import MANIFEST_NAME, sha256_file
    path = artifact / MANIFEST_NAME
    data = json.loads(path.read_text())
    holder = data
    for key in key_path[:-1]:
        holder = holder.setdefault(key, {})
    holder[key_path[-1]] = sha256_file(artifact / relative)
    path.write_text(json.dumps(data))
