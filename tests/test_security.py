"""A checkpoint never runs code, and an artifact is never trusted blindly: hostile files, real loading paths."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from groupvit_edge.errors import UserError
from groupvit_edge.model import load_model
from groupvit_edge.model.nvlabs_keys import hf_to_nvlabs


class _RunsCommand:
    """A pickle payload that runs a shell command when unpickled by a permissive loader."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _touch(marker) -> str:
    return f"touch {marker}"


def _protocol2_pickle(path, marker):
    path.write_bytes(pickle.dumps({"model": _RunsCommand(_touch(marker))}, protocol=2))
    return path


def _zip_naming_torch_os_system(path, marker):
    """A torch.save zip whose data.pkl names torch.serialization.os.system (a module torch itself imports)."""
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    command = _touch(marker).encode()
    module, name = b"torch.serialization", b"os.system"
    payload = (b"\x80\x04\x8c" + bytes([len(module)]) + module + b"\x8c" + bytes([len(name)]) + name + b"\x93"
               + b"\x8c" + bytes([len(command)]) + command + b"\x85R.")
    with zipfile.ZipFile(path) as source:
        entries = [(info.filename, source.read(info.filename)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for filename, data in entries:
            target.writestr(filename, payload if filename.endswith("/data.pkl") else data)
    return path


def _zip_with_foreign_class(path, marker):
    torch.save({"model": {"w": torch.zeros(1)}, "config": _RunsCommand(_touch(marker))}, path)
    return path


HOSTILE = [_protocol2_pickle, _zip_naming_torch_os_system, _zip_with_foreign_class]


@pytest.mark.parametrize("make", HOSTILE, ids=lambda make: make.__name__.strip("_"))
def test_a_hostile_pth_is_refused_and_runs_nothing(tmp_path, make):
    marker = tmp_path / "code-ran"
    checkpoint = make(tmp_path / "evil.pth", marker)
    with pytest.raises(UserError, match="safetensors") as error:
        load_model(str(checkpoint))
    assert "evil.pth" in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("make", HOSTILE, ids=lambda make: make.__name__.strip("_"))
def test_a_hostile_pytorch_model_bin_in_a_checkpoint_directory_runs_nothing(tmp_path, make, random_checkpoint):
    directory = tmp_path / "hf"
    directory.mkdir()
    (directory / "config.json").write_text((random_checkpoint / "config.json").read_text())
    marker = tmp_path / "code-ran"
    make(directory / "pytorch_model.bin", marker)
    with pytest.raises(UserError, match="safetensors"):
        load_model(str(directory))
    assert not marker.exists()


@pytest.mark.parametrize("command", [["export", "--model", "{ckpt}", "--target", "onnx", "--out", "{out}"],
                                     ["segment", "{ckpt}", "{image}", "--labels", "cat", "--out", "{out}"],
                                     ["drift", "--ref", "{ckpt}", "--candidate", "{ckpt}", "--images", "{image}"]])
def test_cli_commands_refuse_a_hostile_checkpoint(tmp_path, coco_images, command):
    marker = tmp_path / "code-ran"
    checkpoint = _zip_naming_torch_os_system(tmp_path / "evil.pth", marker)
    values = {"ckpt": checkpoint, "out": tmp_path / "out", "image": coco_images[0]}
    done = subprocess.run([sys.executable, "-m", "groupvit_edge.cli", *(part.format(**values) for part in command)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "safetensors" in done.stderr
    assert not marker.exists()


def test_an_nvlabs_checkpoint_with_its_omegaconf_config_loads(tmp_path, random_checkpoint):
    """NVlabs' release layout: {'model', 'optimizer', 'lr_scheduler', 'max_metrics', 'epoch', 'config'} with
    config an omegaconf DictConfig; those classes load as inert stand-ins and the weights are the same."""
    omegaconf = pytest.importorskip("omegaconf", reason="omegaconf is in the dev extra")
    expected = load_model(str(random_checkpoint))
    config = omegaconf.OmegaConf.create({"model": {"type": "MultiLabelContrastive", "img_encoder": {
        "embed_dim": 384, "depths": [6, 3, 3], "num_group_tokens": [64, 8, 0]}}, "train": {"lr": 1.6e-3},
        "data": {"batch_size": 256, "dataset": {"meta": {"gcc3m": {"type": "img_txt_pair"}}}}})
    path = tmp_path / "group_vit_gcc_yfcc_30e-879422e0.pth"
    torch.save({"model": hf_to_nvlabs(expected.model.state_dict()), "optimizer": {}, "lr_scheduler": {},
                "max_metrics": {"max_accuracy": 0.0}, "epoch": 29, "config": config}, path)
    assert any(name.startswith("omegaconf.") for name in torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert load_model(str(path)).weights_sha256 == expected.weights_sha256
    # allowed for that one load only, not for every later torch.load in the process
    assert not any("omegaconf" in str(item) for item in torch.serialization.get_safe_globals())


# ------------------------------------------------------------------------------------------ artifacts verified

@pytest.fixture
def artifact_copy(onnx_artifact, tmp_path):
    """A private copy of the fp32 artifact to tamper with."""
    return Path(shutil.copytree(onnx_artifact, tmp_path / "artifact"))


def _edit_manifest(artifact, edit):
    path = artifact / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _flip_exponent_bit_of_a_weight(path):
    """Flip the top exponent bit of one float32 weight near the end of the file (where the initializers are)."""
    data = bytearray(path.read_bytes())
    data[len(data) - 4096 + 3] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_graph_is_refused_by_segment_and_doctor(artifact_copy, coco_images, tmp_path):
    _flip_exponent_bit_of_a_weight(artifact_copy / "image.onnx")
    done = _cli("segment", artifact_copy, coco_images[0], "--labels", "cat", "--out", tmp_path / "out")
    assert done.returncode == 2, done.stderr
    assert "image.onnx" in done.stderr and "sha256" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
    doctor = _cli("doctor", "--artifact", artifact_copy)
    assert doctor.returncode == 2 and "sha256" in doctor.stderr


@pytest.mark.parametrize("tamper", ["tokenizer", "vocabulary"])
def test_a_changed_tokenizer_or_vocabulary_is_refused(artifact_copy, tamper):
    from groupvit_edge import runtimes
    if tamper == "tokenizer":
        target = next((artifact_copy / "tokenizer").iterdir())
    else:
        target = artifact_copy / "vocab.npz"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"{target.name}.*sha256"):
        runtimes.open(artifact_copy)


@pytest.mark.parametrize("where, value", [
    ("image graph", "../../elsewhere/image.onnx"),
    ("image graph", "/proc/self/environ"),
    ("tokenizer", "../../etc"),
    ("vocabulary", "/proc/self/environ"),
])
def test_manifest_paths_outside_the_artifact_are_refused(artifact_copy, where, value):
    from groupvit_edge import runtimes

    def edit(data):
        if where == "image graph":
            data["graphs"]["image"]["file"] = value
        elif where == "tokenizer":
            data["tokenizer"]["dir"] = value
        else:
            data["vocabulary"]["file"] = value

    _edit_manifest(artifact_copy, edit)
    with pytest.raises(UserError, match="refused"):
        runtimes.open(artifact_copy)


def test_a_symlink_out_of_the_artifact_is_refused(artifact_copy, tmp_path):
    from groupvit_edge import runtimes
    outside = tmp_path / "outside.onnx"
    (artifact_copy / "image.onnx").rename(outside)
    (artifact_copy / "image.onnx").symlink_to(outside)
    with pytest.raises(UserError, match="outside the artifact"):
        runtimes.open(artifact_copy)


def test_only_the_tokenizer_files_the_manifest_names_are_read(artifact_copy):
    """A vocab.json dropped into the tokenizer folder would take precedence over the BPE file if the folder
    were searched; the artifact's runtime reads the verified file it names."""
    from groupvit_edge.segmentation import Segmenter
    (artifact_copy / "tokenizer" / "vocab.json").write_text('{"not": 0}')
    (artifact_copy / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    with Segmenter.open(artifact_copy, ["cat", "dog"]) as segmenter:
        assert segmenter.vocabulary.text_embeds.shape[0] == 2


def test_an_artifact_without_checksums_is_refused(artifact_copy):
    from groupvit_edge import runtimes
    _edit_manifest(artifact_copy, lambda data: data["graphs"]["text"].pop("sha256"))
    with pytest.raises(UserError, match="no sha256 for text.onnx"):
        runtimes.open(artifact_copy)
    _edit_manifest(artifact_copy, lambda data: data.update(schema_version=1))
    with pytest.raises(UserError, match="re-run `groupvit-edge export`"):
        runtimes.open(artifact_copy)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "groupvit_edge.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
