"""The two exported graphs. They stop where the vocabulary starts: the image graph knows no labels.

Names of inputs and outputs here are the artifact's contract (see DESIGN.md) and every runtime relies on them.
"""
from __future__ import annotations

import torch
from torch import nn

from .groupvit import GroupViT

IMAGE_INPUT = "pixels"
IMAGE_OUTPUTS = ("group_embeds", "image_embed", "grouping", "stage1_grouping")
TEXT_INPUT = "token_ids"
TEXT_OUTPUTS = ("text_features",)   # see artifact.TEXT_OUTPUT: earlier artifacts return normalised "text_embeds"


class ImageGraph(nn.Module):
    """pixels [B,3,H,W] → group_embeds [B,G,D], image_embed [B,D], grouping [B,G,H/p,W/p] and the first stage's
    soft groups stage1_grouping [B,G1,H/p,W/p], at one fixed H×W.

    The position table interpolated for H×W is computed once here and becomes a constant of the graph.
    """

    def __init__(self, model: GroupViT, height: int, width: int):
        super().__init__()
        self.model = model
        with torch.no_grad():
            table = model.vision_model.embeddings.position_embeddings_for(height, width).detach().clone()
        self.register_buffer("position_embeddings", table)

    def forward(self, pixels):
        return self.model.encode_image(pixels, self.position_embeddings, with_stage1=True)


class TextGraph(nn.Module):
    """token_ids [K,77] (int32, which every backend indexes with) → text_features [K,D], unnormalised."""

    def __init__(self, model: GroupViT):
        super().__init__()
        self.model = model

    def forward(self, token_ids):
        return self.model.text_features(token_ids)
