"""The only package that knows GroupViT's internals. Needs torch (the export extra)."""
from .config import GroupViTConfig, TextConfig, VisionConfig
from .groupvit import GroupViT, init_weights
from .loading import LoadedModel, load_model, save_pretrained, state_dict_sha256

__all__ = ["GroupViT", "GroupViTConfig", "TextConfig", "VisionConfig", "LoadedModel", "init_weights",
           "load_model", "save_pretrained", "state_dict_sha256"]
