"""The only package that knows GroupViT's internals. The modules, loading and export graphs need torch (the export
extra); `model.blocks` (block names and where they sit in the exported graph) does not, because a device that
runs artifacts has no torch — so the names below are imported on first use (PEP 562), not with the package."""
from __future__ import annotations

import importlib

_HOMES = {"GroupViTConfig": "config", "TextConfig": "config", "VisionConfig": "config", "GroupViT": "groupvit",
          "init_weights": "groupvit", "LoadedModel": "loading", "load_model": "loading",
          "save_pretrained": "loading", "state_dict_sha256": "loading"}
__all__ = list(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value
