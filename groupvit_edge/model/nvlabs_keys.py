"""Key mapping between the original NVlabs GroupViT checkpoints and `transformers.GroupViTModel`.

The original release (github.com/NVlabs/GroupViT, e.g. ``group_vit_gcc_yfcc_30e-879422e0.pth``) stores its weights
under ``checkpoint['model']`` with the module names of the training code. This module renames them to the names of
``transformers.GroupViTModel`` (which our own model in ``groupvit.py`` shares) and back.

Sources read to build the table (names verified against each):
- NVlabs/GroupViT ``models/multi_label_contrastive.py``: ``MultiLabelContrastive`` holds ``img_encoder``,
  ``text_encoder``, ``logit_scale``, ``multi_label_logit_scale`` (only when trained with multi-label text, as the
  released gcc-yfcc / gcc-redcaps models are) and the ``ProjectMLP`` heads ``img_projector`` / ``text_projector``:
  ``linear_hidden = Sequential(Conv1d(k=1), BatchNorm1d, ReLU)`` and ``linear_out = Conv1d(k=1)``. Conv1d weights are
  ``[out, in, 1]``; HF uses ``Sequential(Linear, BatchNorm1d, ReLU, Linear)`` so indices 0, 1 and 3.
- NVlabs/GroupViT ``models/group_vit.py``: ``GroupViT`` (``patch_embed.proj`` / ``.norm``, ``pos_embed``,
  ``layers.{i}`` = ``GroupingLayer`` with ``group_token``, ``blocks.{j}`` = ``AttnBlock`` whose ``Attention`` uses a
  fused ``qkv`` Linear laid out ``[q; k; v]`` (forward reshapes to ``(B, N, 3, heads, head_dim)``), ``downsample`` =
  ``GroupingBlock``, ``group_projector`` = ``Sequential(LayerNorm, MixerMlp)``; final ``norm``). ``reduction`` and the
  extra ``group_projector`` Linear only exist when ``embed_factors`` change the width between stages, which no
  release does and HF cannot represent, so they are left unknown (and raise).
- NVlabs/GroupViT ``models/transformer.py`` and ``models/utils.py``: ``TextTransformer`` (``token_embedding``,
  ``positional_embedding`` (a bare Parameter), ``transformer.resblocks.{i}`` = CLIP ``ResidualAttentionBlock`` with
  ``nn.MultiheadAttention`` (fused ``in_proj_weight`` / ``in_proj_bias``, ``[q; k; v]``), ``ln_1``, ``ln_2``,
  ``mlp.c_fc``, ``mlp.c_proj``; ``ln_final``). The causal ``attn_mask`` is a plain attribute, not a buffer.
- huggingface/transformers ``src/transformers/models/groupvit/convert_groupvit_nvlab_to_hf.py`` (the one-off script
  with which HF published nvidia/groupvit-gcc-yfcc): same renames, q/k/v split by thirds, Conv1d weights squeezed,
  ``multi_label_logit_scale`` left over as the only unexpected key.

Every original key either matches exactly one rule below or is in ``NVLABS_DROPPED``; anything else raises
`UserError`, so a checkpoint of some other architecture can never half-load silently.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from ..errors import UserError

# --- the table -------------------------------------------------------------------------------------------------
# Each rule is (NVlabs key template, HF key template, kind). Placeholders in braces match the alternatives in
# _PLACEHOLDERS and carry over unchanged between the two sides. Kinds:
#   "copy"    - same tensor, new name;
#   "conv1x1" - a Conv1d(kernel_size=1) weight [out, in, 1] on the NVlabs side, a Linear weight [out, in] on HF's;
#   "fused"   - one NVlabs tensor stacked [q; k; v] along dim 0; the HF template has {x} for q / k / v.

_PLACEHOLDERS = {
    "i": r"\d+",
    "j": r"\d+",
    "p": "weight|bias",
    "fc": "fc1|fc2",
    "x": "q|k|v",
    "bn": "weight|bias|running_mean|running_var|num_batches_tracked",
}

_V = "img_encoder.layers.{i}"  # NVlabs vision stage
_H = "vision_model.encoder.stages.{i}"  # HF vision stage
_T = "text_encoder.transformer.resblocks.{i}"  # NVlabs text layer
_U = "text_model.encoder.layers.{i}"  # HF text layer

# GroupingBlock (stage downsample) parameters whose names HF kept verbatim.
_GROUPING_BLOCK_SAME = [
    "norm_tokens.{p}",
    "mlp_inter.{fc}.{p}",
    "norm_post_tokens.{p}",
    "norm_x.{p}",
    "pre_assign_attn.attn.{x}_proj.{p}",
    "pre_assign_attn.norm2.{p}",
    "pre_assign_attn.mlp.{fc}.{p}",
    "pre_assign_attn.norm_post.{p}",
    "assign.{x}_proj.{p}",
    "assign.proj.{p}",
    "norm_new_x.{p}",
    "mlp_channels.{fc}.{p}",
]

RULES: list[tuple[str, str, str]] = [
    ("logit_scale", "logit_scale", "copy"),
    # vision embeddings
    ("img_encoder.pos_embed", "vision_model.embeddings.position_embeddings", "copy"),
    ("img_encoder.patch_embed.proj.{p}", "vision_model.embeddings.patch_embeddings.projection.{p}", "copy"),
    ("img_encoder.patch_embed.norm.{p}", "vision_model.embeddings.layernorm.{p}", "copy"),
    # vision stages: group tokens, transformer blocks, grouping block, group-token projector
    (f"{_V}.group_token", f"{_H}.group_token", "copy"),
    (f"{_V}.blocks.{{j}}.norm1.{{p}}", f"{_H}.layers.{{j}}.layer_norm1.{{p}}", "copy"),
    (f"{_V}.blocks.{{j}}.attn.qkv.{{p}}", f"{_H}.layers.{{j}}.self_attn.{{x}}_proj.{{p}}", "fused"),
    (f"{_V}.blocks.{{j}}.attn.proj.{{p}}", f"{_H}.layers.{{j}}.self_attn.out_proj.{{p}}", "copy"),
    (f"{_V}.blocks.{{j}}.norm2.{{p}}", f"{_H}.layers.{{j}}.layer_norm2.{{p}}", "copy"),
    (f"{_V}.blocks.{{j}}.mlp.{{fc}}.{{p}}", f"{_H}.layers.{{j}}.mlp.{{fc}}.{{p}}", "copy"),
    *[(f"{_V}.downsample.{s}", f"{_H}.downsample.{s}", "copy") for s in _GROUPING_BLOCK_SAME],
    (
        f"{_V}.downsample.pre_assign_attn.attn.proj.{{p}}",
        f"{_H}.downsample.pre_assign_attn.attn.out_proj.{{p}}",
        "copy",
    ),
    (f"{_V}.group_projector.0.{{p}}", f"{_H}.group_projector.0.{{p}}", "copy"),
    (f"{_V}.group_projector.1.{{fc}}.{{p}}", f"{_H}.group_projector.1.{{fc}}.{{p}}", "copy"),
    ("img_encoder.norm.{p}", "vision_model.layernorm.{p}", "copy"),
    # text encoder
    ("text_encoder.token_embedding.weight", "text_model.embeddings.token_embedding.weight", "copy"),
    ("text_encoder.positional_embedding", "text_model.embeddings.position_embedding.weight", "copy"),
    (f"{_T}.ln_1.{{p}}", f"{_U}.layer_norm1.{{p}}", "copy"),
    (f"{_T}.attn.in_proj_{{p}}", f"{_U}.self_attn.{{x}}_proj.{{p}}", "fused"),
    (f"{_T}.attn.out_proj.{{p}}", f"{_U}.self_attn.out_proj.{{p}}", "copy"),
    (f"{_T}.ln_2.{{p}}", f"{_U}.layer_norm2.{{p}}", "copy"),
    (f"{_T}.mlp.c_fc.{{p}}", f"{_U}.mlp.fc1.{{p}}", "copy"),
    (f"{_T}.mlp.c_proj.{{p}}", f"{_U}.mlp.fc2.{{p}}", "copy"),
    ("text_encoder.ln_final.{p}", "text_model.final_layer_norm.{p}", "copy"),
    # projection heads (ProjectMLP with 2 layers: Conv1d, BatchNorm1d, ReLU | Conv1d)
    ("img_projector.linear_hidden.0.{p}", "visual_projection.0.{p}", "conv1x1"),
    ("img_projector.linear_hidden.1.{bn}", "visual_projection.1.{bn}", "copy"),
    ("img_projector.linear_out.{p}", "visual_projection.3.{p}", "conv1x1"),
    ("text_projector.linear_hidden.0.{p}", "text_projection.0.{p}", "conv1x1"),
    ("text_projector.linear_hidden.1.{bn}", "text_projection.1.{bn}", "copy"),
    ("text_projector.linear_out.{p}", "text_projection.3.{p}", "conv1x1"),
]

# Known keys with no counterpart on the other side.
NVLABS_DROPPED = frozenset({"multi_label_logit_scale"})  # temperature of the multi-label training loss only
HF_DROPPED = frozenset({"text_model.embeddings.position_ids"})  # arange buffer; old HF checkpoints persisted it

NVLABS_PREFIXES = ("img_encoder.", "text_encoder.", "img_projector.", "text_projector.")

_QKV = ("q", "k", "v")


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
    pattern = "".join(
        re.escape(part) if n % 2 == 0 else f"(?P<{part}>{_PLACEHOLDERS[part]})" for n, part in enumerate(parts)
    )
    return re.compile(pattern)


_NV_PATTERNS = [(_compile(nv), hf, kind) for nv, hf, kind in RULES]
_HF_PATTERNS = [(_compile(hf), nv, kind) for nv, hf, kind in RULES]


def _unknown(key: str, side: str, n_unknown: int, hint: str) -> UserError:
    others = f" (and {n_unknown - 1} more)" if n_unknown > 1 else ""
    return UserError(f"State-dict key '{key}'{others} is not a known {side} GroupViT key; {hint}.")


def _match(patterns, key: str):
    for pattern, template, kind in patterns:
        m = pattern.fullmatch(key)
        if m:
            return m.groupdict(), template, kind
    return None


# --- public API ----------------------------------------------------------------------------------------------


def is_nvlabs_state_dict(state_dict: Mapping[str, object]) -> bool:
    """True if the keys look like an original NVlabs GroupViT state dict (``img_encoder.*``, ``text_encoder.*`` ...)."""
    return any(isinstance(k, str) and k.startswith(NVLABS_PREFIXES) for k in state_dict)


def nvlabs_to_hf(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an original NVlabs GroupViT state dict (``checkpoint['model']``) to `transformers.GroupViTModel` names.

    Fused q/k/v tensors are split into views and Conv1d weights squeezed into views; nothing is copied and the input
    is not modified. Raises `UserError` naming the first key that is not recognised.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        raise UserError(
            "The state dict has a 'model' entry, so it is a whole NVlabs checkpoint; pass checkpoint['model'] instead."
        )
    unknown = [k for k in state_dict if k not in NVLABS_DROPPED and _match(_NV_PATTERNS, k) is None]
    if unknown:
        raise _unknown(
            unknown[0], "NVlabs", len(unknown),
            "pass checkpoint['model'] of an original NVlabs GroupViT .pth with the released (gcc-yfcc / gcc-redcaps) "
            "architecture",
        )

    out: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        if key in NVLABS_DROPPED:
            continue
        groups, hf_template, kind = _match(_NV_PATTERNS, key)
        if kind == "fused":
            for x, part in zip(_QKV, _split_qkv(key, tensor)):
                out[hf_template.format(x=x, **groups)] = part
        elif kind == "conv1x1":
            out[hf_template.format(**groups)] = _conv1x1_to_linear(key, tensor)
        else:
            out[hf_template.format(**groups)] = tensor
    return out


def hf_to_nvlabs(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `nvlabs_to_hf`: rename a `transformers.GroupViTModel` state dict to the original NVlabs names.

    q/k/v projections are concatenated back into the fused ``qkv`` / ``in_proj`` tensors (the only copies made) and
    projection-head weights get their Conv1d kernel dimension back. ``multi_label_logit_scale`` is not produced.
    """
    unknown = [k for k in state_dict if k not in HF_DROPPED and _match(_HF_PATTERNS, k) is None]
    if unknown:
        raise _unknown(
            unknown[0], "transformers", len(unknown), "pass GroupViTModel.state_dict() of the default architecture"
        )

    out: dict[str, Tensor] = {}
    order: list[str] = []       # NVlabs keys in the order their first HF tensor comes, fused ones included
    pending: dict[str, dict[str, Tensor]] = {}  # fused NVlabs key -> {"q": ..., "k": ..., "v": ...}
    for key, tensor in state_dict.items():
        if key in HF_DROPPED:
            continue
        groups, nv_template, kind = _match(_HF_PATTERNS, key)
        if kind == "fused":
            x = groups.pop("x")
            nv_key = nv_template.format(**groups)
            if nv_key not in pending:
                pending[nv_key] = {}
                order.append(nv_key)
            pending[nv_key][x] = tensor
        elif kind == "conv1x1":
            order.append(nv_template.format(**groups))
            out[order[-1]] = tensor.unsqueeze(-1) if groups["p"] == "weight" else tensor
        else:
            order.append(nv_template.format(**groups))
            out[order[-1]] = tensor
    for nv_key, parts in pending.items():
        missing = [x for x in _QKV if x not in parts]
        if missing:
            raise UserError(
                f"The {missing[0]}_proj tensor belonging to '{nv_key}' is missing from the state dict; "
                "pass a complete GroupViTModel.state_dict()."
            )
        out[nv_key] = torch.cat([parts[x] for x in _QKV], dim=0)
    return {key: out[key] for key in order}


# --- small helpers ---------------------------------------------------------------------------------------------


def _split_qkv(key: str, fused: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split a [3*D, ...] tensor stacked [q; k; v] into three views (q first, as in both NVlabs attention modules)."""
    if fused.dim() == 0 or fused.shape[0] % 3 != 0:
        raise UserError(
            f"State-dict key '{key}' should hold q, k and v stacked along dim 0 but has shape {tuple(fused.shape)}; "
            "pass an unmodified NVlabs GroupViT checkpoint."
        )
    q, k, v = fused.chunk(3, dim=0)
    return q, k, v


def _conv1x1_to_linear(key: str, weight: Tensor) -> Tensor:
    """A Conv1d(kernel_size=1) weight [out, in, 1] as a Linear weight [out, in] (a view); biases pass through."""
    if not key.endswith(".weight"):
        return weight
    if weight.dim() != 3 or weight.shape[-1] != 1:
        raise UserError(
            f"State-dict key '{key}' should be a Conv1d kernel-size-1 weight [out, in, 1] but has shape "
            f"{tuple(weight.shape)}; pass an unmodified NVlabs GroupViT checkpoint."
        )
    return weight.squeeze(-1)
