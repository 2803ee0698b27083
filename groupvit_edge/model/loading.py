"""Turn a model spec into a GroupViT in eval mode. Kept apart from the architecture (timm's `load_pretrained`).

Specs, in the order they are tried:
- `random:SEED`          the gcc-yfcc architecture with seeded, transformers-style random weights;
- an existing directory  a HuggingFace checkpoint: config.json + model.safetensors or pytorch_model.bin;
- an existing file       an original NVlabs checkpoint (.pth, keys remapped) or a bare HF state dict;
- `owner/name`           a HuggingFace Hub id, downloaded with huggingface_hub.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..imports import require
from ..listing import listed
from .config import GroupViTConfig
from .groupvit import GroupViT, init_weights
from .nvlabs_keys import is_nvlabs_state_dict, nvlabs_to_hf
from .specs import is_random

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_PATTERNS = ["config.json", "model.safetensors", "pytorch_model.bin", "vocab.json", "merges.txt"]
# Keys some HF checkpoints carry that hold no weights.
IGNORED_KEYS = re.compile(r"(^|\.)position_ids$|num_batches_tracked$")


@dataclass(frozen=True)
class LoadedModel:
    model: GroupViT
    model_id: str            # what the user passed, e.g. "random:0" or "nvidia/groupvit-gcc-yfcc"
    weights_sha256: str      # of the tensors, not the file: the same weights hash alike in any format
    tokenizer_dir: Path | None = None   # where vocab.json/merges.txt were found, if any


def load_model(spec: str) -> LoadedModel:
    spec = str(spec)
    if is_random(spec):
        return _load_random(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _finish(_load_hf_dir(path), spec, tokenizer_dir=path)
    if path.is_file():
        return _finish(_load_state_dict_file(path), spec)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.startswith((".", "/")):
        local = _download_from_hub(spec)
        return _finish(_load_hf_dir(local), spec, tokenizer_dir=local)
    raise UserError(f"model {spec!r} does not exist: pass a checkpoint directory, a .pth/.bin file, "
                    f"a HuggingFace Hub id or random:SEED")


def _load_random(spec: str) -> LoadedModel:
    try:
        seed = int(spec.split(":", 1)[1])
    except ValueError:
        raise UserError(f"model {spec!r}: the seed must be an integer, e.g. random:0") from None
    model = init_weights(GroupViT(GroupViTConfig()), seed).eval()
    return _finish(model, spec)


def _finish(model: GroupViT, spec: str, tokenizer_dir: Path | None = None) -> LoadedModel:
    has_vocab = tokenizer_dir is not None and (tokenizer_dir / "vocab.json").is_file()
    return LoadedModel(model.eval(), spec, state_dict_sha256(model.state_dict()),
                       tokenizer_dir if has_vocab else None)


def state_dict_sha256(state_dict: dict) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_hf_dir(directory: Path) -> GroupViT:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UserError(f"{directory} has no config.json: pass a HuggingFace GroupViT checkpoint directory")
    config = GroupViTConfig.from_json(config_path)
    weights = next((directory / name for name in WEIGHT_FILES if (directory / name).is_file()), None)
    if weights is None:
        raise UserError(f"{directory} has neither {' nor '.join(WEIGHT_FILES)}: add the weights file")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state_dict = load_file(str(weights))
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise UserError(f"{weights} is not a readable safetensors file ({error}); re-download it") from None
    else:
        state_dict = _torch_load(weights)
    return _build(config, state_dict, weights)


def _load_state_dict_file(path: Path) -> GroupViT:
    checkpoint = _torch_load(path)
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise UserError(f"{path} does not hold a state dict: pass a GroupViT checkpoint")
    if is_nvlabs_state_dict(state_dict):
        state_dict = nvlabs_to_hf(state_dict)
    # Original checkpoints carry no config.json; their published models all use the gcc-yfcc architecture
    # (the released yfcc and redcap checkpoints included), so that is what we build.
    return _build(GroupViTConfig(), state_dict, path)


def _build(config: GroupViTConfig, state_dict: dict, source: Path) -> GroupViT:
    model = GroupViT(config)
    state_dict = {k: v for k, v in state_dict.items() if not IGNORED_KEYS.search(k) or k in model.state_dict()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise UserError(f"{source} does not match the GroupViT architecture of its config "
                        f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {detail}): "
                        f"pass a GroupViT checkpoint")
    for key, tensor in state_dict.items():
        if tensor.shape != expected[key].shape:
            raise UserError(f"{source}: {key} has shape {tuple(tensor.shape)} but the config asks for "
                            f"{tuple(expected[key].shape)}; the config.json does not belong to these weights")
    model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return model


def _torch_load(path: Path):
    """torch.load with the weights-only unpickler, never the permissive one: a pickle can name any callable.

    Original NVlabs checkpoints pickle their training config (omegaconf objects) beside the weights. Those names,
    and only those, are mapped to an inert class (`_InertConfig`) that runs nothing and keeps nothing; a
    checkpoint naming anything else is refused.
    """
    try:
        return _weights_only_load(path)
    except pickle.UnpicklingError:
        foreign = _foreign_globals(path)
    except Exception as error:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}); "
                        f"check the file or re-download it") from None
    refused = [name for name in foreign if not _is_training_config_global(name)]
    if refused or not foreign:
        what = (f"names {refused[0]}, which loading weights would have to run" if refused else
                "holds a pickle that the weights-only loader refuses and that cannot be inspected safely")
        raise UserError(f"{path} {what}: refused; convert the checkpoint to safetensors where it was made "
                        f"(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) and pass that")
    try:
        with torch.serialization.safe_globals([(_InertConfig, name) for name in foreign]):
            return _weights_only_load(path)
    except Exception as error:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}); "
                        f"check the file or re-download it") from None


def _weights_only_load(path: Path):
    with warnings.catch_warnings():
        # torch warns about pickle protocols before refusing; the refusal is what the user needs to read.
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


# The globals a pickled omegaconf DictConfig (NVlabs' `config` entry) names, listed from a torch.save of one:
# omegaconf's node and container classes, and the Python types its metadata refers to.
TRAINING_CONFIG_MODULE = "omegaconf."
TRAINING_CONFIG_GLOBALS = frozenset({
    "typing.Any", "collections.defaultdict", "builtins.dict", "builtins.list", "builtins.int", "builtins.float",
    "builtins.str", "builtins.bool", "builtins.tuple"})


def _is_training_config_global(name: str) -> bool:
    return name.startswith(TRAINING_CONFIG_MODULE) or name in TRAINING_CONFIG_GLOBALS


def _foreign_globals(path: Path) -> list[str]:
    """The globals the weights-only unpickler does not allow by default; [] when the file is not a torch zip."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:   # legacy (non-zip) files and opcodes torch's scanner lacks cannot be listed safely
        return []


class _InertConfig:
    """Stands in for every training-config object: takes any arguments and state, keeps none, does nothing."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _download_from_hub(repo_id: str) -> Path:
    """The snapshot directory of `repo_id` in the HuggingFace cache, downloaded first when the Hub is reachable.

    Where the cache lives and whether to go online are huggingface_hub's own settings (HF_HOME, HF_HUB_CACHE,
    HF_HUB_OFFLINE), read by huggingface_hub itself, so a model cached by `hf download` or transformers is found.
    """
    hub = _hub(repo_id)
    try:
        snapshot = Path(hub.snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as error:
        snapshot = _cached_snapshot_despite(error, repo_id)
    if not (snapshot / "config.json").is_file() or not any((snapshot / name).is_file() for name in WEIGHT_FILES):
        lacking = "config.json" if not (snapshot / "config.json").is_file() else " or ".join(WEIGHT_FILES)
        raise UserError(f"the cached {repo_id} ({snapshot}) has no {lacking}: complete it with "
                        f"`{_download_command()} {repo_id}` while online, or pass a local checkpoint directory")
    return snapshot


def _hub(repo_id: str, module: str = ""):
    """huggingface_hub (or one of its modules), or the UserError saying how to install it."""
    return require("huggingface_hub" + (f".{module}" if module else ""), "export", package="huggingface_hub",
                   what=f"loading {repo_id} from the Hub", otherwise=", or pass a local checkpoint directory")


def _cached_snapshot_despite(error: Exception, repo_id: str) -> Path:
    """The cached snapshot to load although snapshot_download failed, or the UserError saying how to get one."""
    utils = _hub(repo_id, "utils")
    if not isinstance(error, utils.LocalEntryNotFoundError):
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"could not download {repo_id} from the HuggingFace Hub ({reason}); pass a local "
                        f"checkpoint directory instead, e.g. --model ./groupvit-gcc-yfcc "
                        f"(config.json + model.safetensors)") from None
    incomplete = getattr(error, "snapshot_path", None)    # an IncompleteSnapshotError's (newer huggingface_hub)
    if incomplete is not None:
        # HUB_PATTERNS names alternatives (either weights file) and optional files (the tokenizer), and offline
        # huggingface_hub calls a snapshot incomplete when any of them is absent; whether it holds a whole
        # checkpoint is for the caller to judge.
        return Path(incomplete)
    constants = _hub(repo_id, "constants")
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the HuggingFace Hub could not be reached"
    folder = Path(constants.HF_HUB_CACHE) / _hub(repo_id, "file_download").repo_folder_name(
        repo_id=repo_id, repo_type="model")
    others = sorted(str(path) for path in (folder / "snapshots").glob("*") if path.is_dir())
    command = f"`{_download_command()} {repo_id}`"
    if others:
        raise UserError(f"{repo_id} is cached only at another revision than main ({listed(others, 2)}) and {why}: "
                        f"pass that snapshot directory instead, or run {command} while online") from None
    raise UserError(f"{repo_id} is not in the HuggingFace cache ({constants.HF_HUB_CACHE}) and {why}: download it "
                    f"once with {command} (or load it once online), or pass a local checkpoint directory") from None


def _download_command() -> str:
    """The download command of the huggingface_hub installed: `hf` from 0.34 on, `huggingface-cli` before."""
    version = tuple(int(part) for part in re.findall(r"\d+", importlib.metadata.version("huggingface_hub"))[:2])
    return "hf download" if version >= (0, 34) else "huggingface-cli download"


def save_pretrained(model: GroupViT, directory: str | Path) -> Path:
    """Write config.json + model.safetensors, the layout `load_model` and `transformers` both read."""
    from safetensors.torch import save_file
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2))
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
