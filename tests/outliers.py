"""Stress checkpoints with a trained ViT's activation outliers, made from seeded random weights without changing
what the model computes.

Trained ViTs carry a few LayerNorm output channels tens to hundreds of times larger than the rest; seeded random
weights do not. In every image-encoder layer, `with_outliers` multiplies `channels` LayerNorm channels' gamma and
beta by `strength` and divides the matching input columns of the Linear layers that read that LayerNorm (q, k, v
after layer_norm1; fc1 after layer_norm2) by it: each reader's output is unchanged in exact arithmetic (fp32:
within ~1e-5), but the activations the INT8 path must quantize now have outlier channels.
"""
from __future__ import annotations

from pathlib import Path

import torch

READERS = {"layer_norm1": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "layer_norm2": ("mlp.fc1",)}


def image_encoder_layers(model) -> list:
    return [layer for stage in model.vision_model.encoder.stages for layer in stage.layers]


def outlier_channels(width: int, channels: int, seed: int) -> torch.Tensor:
    return torch.randperm(width, generator=torch.Generator().manual_seed(seed))[:channels]


@torch.no_grad()
def with_outliers(model, strength: float, channels: int = 4, seed: int = 0):
    """`model` (in place) with outlier channels of `strength` after every image-encoder LayerNorm; returns the
    channels chosen per (layer index, norm name)."""
    chosen = {}
    for index, layer in enumerate(image_encoder_layers(model)):
        for position, (norm_name, readers) in enumerate(READERS.items()):
            norm = getattr(layer, norm_name)
            picked = outlier_channels(norm.weight.numel(), channels, seed * 1000 + index * len(READERS) + position)
            norm.weight[picked] *= strength
            norm.bias[picked] *= strength
            for reader in readers:
                linear = layer.get_submodule(reader)
                linear.weight[:, picked] /= strength
            chosen[(index, norm_name)] = sorted(picked.tolist())
    return chosen


def save_outlier_checkpoint(directory: Path, strength: float, seed: int = 0, channels: int = 4) -> Path:
    """random:0 with outliers of `strength`, saved as a HuggingFace checkpoint directory (loaded by the real code)."""
    from groupvit_edge.model import load_model, save_pretrained
    model = load_model("random:0").model
    with_outliers(model, strength, channels, seed)
    return save_pretrained(model, Path(directory) / f"groupvit-random0-outliers{strength:g}-seed{seed}")
