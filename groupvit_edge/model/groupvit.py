"""GroupViT (Xu et al., CVPR 2022) for inference and export.

Reads like the paper: PatchEmbed → grouping stages (transformer layers over image + group tokens, then a
GroupingBlock whose AssignAttention hard-assigns every image token to one group) → projection heads.
Parameter names equal those of `transformers.GroupViTModel`, so HF checkpoints load without remapping.

Differences from the training code, all deliberate for export:
- the assignment is the one-hot of the argmax over groups, built as ReduceMax + Equal + Cast (no Gumbel noise,
  no scatter, no straight-through arithmetic, no OneHot op, which older TensorRT parsers reject);
- the text pooling picks the first end-of-text token with float arithmetic (no ArgMax/Gather on int64);
- position embeddings can be passed in precomputed, so an export bakes the interpolated table in as a constant.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import GroupViTConfig, TextConfig, VisionConfig


def _activation(name: str):
    if name == "gelu":
        return nn.GELU()
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unsupported activation {name}")


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU, used by the text encoder."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, output_size: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = _activation(activation)
        self.fc2 = nn.Linear(intermediate_size, output_size)

    def forward(self, x):
        return self.fc2(self.activation_fn(self.fc1(x)))


class MixerMLP(MLP):
    """An MLP over the token axis: maps N group tokens to M group tokens."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention; cross-attention when `context` is given."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim ** -0.5
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, x):
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x, context=None, additive_mask=None):
        context = x if context is None else context
        query = self._split_heads(self.q_proj(x) * self.scale)
        key = self._split_heads(self.k_proj(context))
        value = self._split_heads(self.v_proj(context))
        scores = query @ key.transpose(-2, -1)
        if additive_mask is not None:
            scores = scores + additive_mask
        out = scores.softmax(dim=-1) @ value
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer (shared by the image stages and the text encoder)."""

    def __init__(self, hidden_size, intermediate_size, num_heads, activation, eps):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(hidden_size, eps=eps)
        self.self_attn = Attention(hidden_size, num_heads)
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = MLP(hidden_size, intermediate_size, hidden_size, activation)

    def forward(self, x, additive_mask=None):
        x = x + self.self_attn(self.layer_norm1(x), additive_mask=additive_mask)
        return x + self.mlp(self.layer_norm2(x))


# ----------------------------------------------------------------------------------------------- image encoder

class PatchEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size,
                                    kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values):
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class VisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.trained_grid = config.image_size // config.patch_size
        self.patch_embeddings = PatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.trained_grid ** 2, config.hidden_size))
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def position_embeddings_for(self, height: int, width: int) -> torch.Tensor:
        """The position table for an H×W input: bicubic interpolation of the trained grid, as transformers does."""
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        if (grid_h, grid_w) == (self.trained_grid, self.trained_grid):
            return self.position_embeddings
        dim = self.position_embeddings.shape[-1]
        table = self.position_embeddings.reshape(1, self.trained_grid, self.trained_grid, dim).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)

    def forward(self, pixel_values, position_embeddings=None):
        if position_embeddings is None:
            position_embeddings = self.position_embeddings_for(*pixel_values.shape[-2:])
        return self.layernorm(self.patch_embeddings(pixel_values)) + position_embeddings


class CrossAttentionLayer(nn.Module):
    """Group tokens attend to image tokens before assignment (the GroupingBlock's pre-assign attention)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.attn = Attention(config.hidden_size, config.num_attention_heads)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, config.hidden_size, config.hidden_act)
        self.norm_post = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, query, key):
        x = query + self.attn(query, context=key)
        x = x + self.mlp(self.norm2(x))
        return self.norm_post(x)


class AssignAttention(nn.Module):
    """Assigns every image token to one group token and merges the tokens of each group.

    Returns the merged group features and the soft assignment (softmax over groups), which is what the
    segmentation protocol multiplies across stages.
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.scale = config.hidden_size ** -0.5
        self.assign_eps = config.assign_eps
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, group_tokens, image_tokens):
        # [B, groups, tokens]: the group axis (-2) is the one each image token is assigned along.
        logits = (self.q_proj(group_tokens) @ self.k_proj(image_tokens).transpose(-2, -1)) * self.scale
        hard_assignment = (logits == logits.amax(dim=-2, keepdim=True)).to(logits.dtype)
        soft_assignment = logits.softmax(dim=-2)
        weights = hard_assignment / (hard_assignment.sum(dim=-1, keepdim=True) + self.assign_eps)
        merged = self.proj(weights @ self.v_proj(image_tokens))
        return merged, soft_assignment


class TokenAssign(nn.Module):
    """The GroupingBlock: project group tokens, let them look at the image, then assign and merge."""

    def __init__(self, config: VisionConfig, num_group_tokens: int, num_output_groups: int):
        super().__init__()
        tokens_dim, channels_dim = (int(r * config.hidden_size) for r in config.assign_mlp_ratio)
        eps = config.layer_norm_eps
        self.norm_tokens = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp_inter = MixerMLP(num_group_tokens, tokens_dim, num_output_groups, config.hidden_act)
        self.norm_post_tokens = nn.LayerNorm(config.hidden_size, eps=eps)
        self.norm_x = nn.LayerNorm(config.hidden_size, eps=eps)
        self.pre_assign_attn = CrossAttentionLayer(config)
        self.assign = AssignAttention(config)
        self.norm_new_x = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp_channels = MLP(config.hidden_size, channels_dim, config.hidden_size, config.hidden_act)

    def forward(self, image_tokens, group_tokens):
        group_tokens = self.norm_post_tokens(self.mlp_inter(self.norm_tokens(group_tokens)))
        image_tokens = self.norm_x(image_tokens)
        group_tokens = self.pre_assign_attn(group_tokens, image_tokens)
        merged, soft_assignment = self.assign(group_tokens, image_tokens)
        merged = merged + group_tokens
        return merged + self.mlp_channels(self.norm_new_x(merged)), soft_assignment


class GroupingStage(nn.Module):
    """Transformer layers over [image tokens; group tokens], then (if the stage groups) a GroupingBlock."""

    def __init__(self, config: VisionConfig, depth: int, num_prev_group_tokens: int, num_group_tokens: int,
                 num_output_groups: int):
        super().__init__()
        self.num_group_tokens = num_group_tokens
        self.group_token = nn.Parameter(torch.zeros(1, num_group_tokens, config.hidden_size)) \
            if num_group_tokens else None
        self.layers = nn.ModuleList(
            EncoderLayer(config.hidden_size, config.intermediate_size, config.num_attention_heads,
                         config.hidden_act, config.layer_norm_eps) for _ in range(depth))
        self.downsample = TokenAssign(config, num_group_tokens, num_output_groups) if num_group_tokens else None
        self.group_projector = nn.Sequential(
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
            MixerMLP(num_prev_group_tokens, config.hidden_size // 2, num_group_tokens, config.hidden_act),
        ) if num_prev_group_tokens and num_group_tokens else None

    def forward(self, image_tokens, prev_group_tokens=None):
        if self.group_token is None:
            for layer in self.layers:
                image_tokens = layer(image_tokens)
            return image_tokens, None, None
        group_tokens = self.group_token.expand(image_tokens.shape[0], -1, -1)
        if self.group_projector is not None:
            group_tokens = group_tokens + self.group_projector(prev_group_tokens)
        tokens = torch.cat([image_tokens, group_tokens], dim=1)
        for layer in self.layers:
            tokens = layer(tokens)
        image_tokens, group_tokens = tokens[:, :-self.num_group_tokens], tokens[:, -self.num_group_tokens:]
        merged, soft_assignment = self.downsample(image_tokens, group_tokens)
        return merged, group_tokens, soft_assignment


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.stages = nn.ModuleList(
            GroupingStage(config, depth=config.depths[i],
                          num_prev_group_tokens=config.num_output_groups[i - 1] if i else 0,
                          num_group_tokens=config.num_group_tokens[i],
                          num_output_groups=config.num_output_groups[i])
            for i in range(len(config.depths)))

    def forward(self, tokens):
        group_tokens, assignments = None, []
        for stage in self.stages:
            tokens, group_tokens, soft_assignment = stage(tokens, group_tokens)
            if soft_assignment is not None:
                assignments.append(soft_assignment)
        return tokens, assignments


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.embeddings = VisionEmbeddings(config)
        self.encoder = VisionEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values, position_embeddings=None):
        """Returns the final group tokens [B, G, C] and each grouping stage's soft assignment [B, G_s, N_s]."""
        tokens, assignments = self.encoder(self.embeddings(pixel_values, position_embeddings))
        return self.layernorm(tokens), assignments


# ------------------------------------------------------------------------------------------------ text encoder

class TextEmbeddings(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, token_ids):
        return self.token_embedding(token_ids) + self.position_embedding.weight[: token_ids.shape[-1]]


class TextEncoder(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(config.hidden_size, config.intermediate_size, config.num_attention_heads,
                         config.hidden_act, config.layer_norm_eps) for _ in range(config.num_hidden_layers))

    def forward(self, x, additive_mask):
        for layer in self.layers:
            x = layer(x, additive_mask=additive_mask)
        return x


class TextTransformer(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.eos_token_id = config.eos_token_id
        self.embeddings = TextEmbeddings(config)
        self.encoder = TextEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        length = config.max_position_embeddings
        causal = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def forward(self, token_ids):
        """Returns the hidden state of the first end-of-text token of each sequence [K, C]."""
        length = token_ids.shape[-1]
        hidden = self.final_layer_norm(self.encoder(self.embeddings(token_ids), self.causal_mask[:length, :length]))
        # First EOS without ArgMax/Gather on integers: weight positions by (length - index), keep the max.
        is_eos = (token_ids == self.eos_token_id).to(hidden.dtype)
        rank = is_eos * torch.arange(length, 0, -1, dtype=hidden.dtype, device=hidden.device)
        first_eos = (rank == rank.amax(dim=-1, keepdim=True)).to(hidden.dtype)
        return (first_eos.unsqueeze(-1) * hidden).sum(dim=1)


# ------------------------------------------------------------------------------------------------------- model

def _projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


def l2_normalize(x):
    return x / x.norm(dim=-1, keepdim=True)


class GroupViT(nn.Module):
    def __init__(self, config: GroupViTConfig | None = None):
        super().__init__()
        self.config = config or GroupViTConfig()
        c = self.config
        self.text_model = TextTransformer(c.text)
        self.vision_model = VisionTransformer(c.vision)
        self.visual_projection = _projection_head(c.vision.hidden_size, c.projection_intermediate_dim,
                                                  c.projection_dim)
        self.text_projection = _projection_head(c.text.hidden_size, c.projection_intermediate_dim, c.projection_dim)
        self.logit_scale = nn.Parameter(torch.tensor(c.logit_scale_init_value))

    def _project_groups(self, group_tokens):
        """The projection head has BatchNorm1d, which needs [N, C]: flatten batch and groups around it.

        Sizes come from the config, not the tensor, so exported graphs keep static group/embedding axes.
        """
        channels = self.config.vision.hidden_size
        projected = self.visual_projection(group_tokens.reshape(-1, channels))
        return projected.reshape(-1, self.config.num_final_groups, self.config.projection_dim)

    def encode_image(self, pixel_values, position_embeddings=None, with_stage1: bool = False):
        """pixels [B,3,H,W] → (group_embeds [B,G,D], image_embed [B,D], grouping [B,G,H/p,W/p]
        [, stage1_grouping [B,G1,H/p,W/p]]).

        Embeddings are L2-normalised. `grouping` is the product of the stages' soft assignments: entry (g, y, x)
        is the soft membership of patch (y, x) in final group g — the paper's segmentation protocol. With
        `with_stage1`, also the first stage's soft assignment alone (its 64 smaller groups).
        """
        group_tokens, assignments = self.vision_model(pixel_values, position_embeddings)
        group_embeds = l2_normalize(self._project_groups(group_tokens))
        image_embed = l2_normalize(self.visual_projection(group_tokens.mean(dim=1)))
        size = (*pixel_values.shape[-2:], self.config.vision.patch_size)
        grouping = grouping_maps(assignments, *size)
        if not with_stage1:
            return group_embeds, image_embed, grouping
        return group_embeds, image_embed, grouping, grouping_maps(assignments[:1], *size)

    def encode_text(self, token_ids):
        """token ids [K, L] → text_embeds [K, D], L2-normalised."""
        return l2_normalize(self.text_features(token_ids))

    def text_features(self, token_ids):
        """token ids [K, L] → the projected text features [K, D] before normalisation: the official class embedding
        averages these over a class's templates, so the text graph returns them."""
        return self.text_projection(self.text_model(token_ids))


def grouping_maps(assignments, height: int, width: int, patch_size: int):
    """Multiply the soft assignments across stages: [B,G1,N] · [B,G2,G1] … → [B,G_last,H/p,W/p]."""
    membership = assignments[0]
    for assignment in assignments[1:]:
        membership = assignment @ membership
    batch, groups, _ = membership.shape
    return membership.reshape(batch, groups, height // patch_size, width // patch_size)


def init_weights(model: GroupViT, seed: int) -> GroupViT:
    """Seeded initialisation following transformers' `GroupViTPreTrainedModel._init_weights`.

    Random weights stand in for the real checkpoint in tests and demos; matching HF's scheme keeps the
    activations in the ranges the real model sees (and so the numerics the exporters must survive).
    """
    generator = torch.Generator().manual_seed(seed)

    def normal_(tensor, std):
        with torch.no_grad():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)

    vision_layers = model.config.vision.num_hidden_layers
    text_layers = model.config.text.num_hidden_layers
    for name, module in model.named_modules():
        num_layers = text_layers if name.startswith("text_model") else vision_layers
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            normal_(module.weight, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            normal_(module.weight, 0.02)
        if isinstance(module, Attention):
            dim = module.q_proj.in_features
            in_std = dim ** -0.5 * (2 * num_layers) ** -0.5
            for projection in (module.q_proj, module.k_proj, module.v_proj):
                normal_(projection.weight, in_std)
            normal_(module.out_proj.weight, dim ** -0.5)
        elif isinstance(module, MLP):
            # HF sizes both MLP std's (token-mixing ones included) from the config's hidden size.
            hidden = (model.config.text if name.startswith("text_model") else model.config.vision).hidden_size
            normal_(module.fc1.weight, (2 * hidden) ** -0.5)
            normal_(module.fc2.weight, hidden ** -0.5 * (2 * num_layers) ** -0.5)
    for stage in model.vision_model.encoder.stages:
        if stage.group_token is not None:
            normal_(stage.group_token, 0.02)
    normal_(model.vision_model.embeddings.position_embeddings, 0.02)
    with torch.no_grad():
        model.logit_scale.fill_(model.config.logit_scale_init_value)
    return model
