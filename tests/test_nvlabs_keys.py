"""Key mapping NVlabs GroupViT checkpoint <-> transformers.GroupViTModel (groupvit_edge.model.nvlabs_keys).

Expected original names and shapes come from NVlabs/GroupViT models/group_vit.py, models/transformer.py,
models/utils.py and models/multi_label_contrastive.py with configs/group_vit_gcc_yfcc_30e.yml (embed_dim 384,
depths [6, 3, 3], group tokens [64, 8, 0], text width 256 x 12 layers, projector ProjectMLP 4096 -> 256).
"""
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is in the dev extra: the mapping oracle")

from groupvit_edge.errors import UserError  # noqa: E402
from groupvit_edge.model import nvlabs_keys  # noqa: E402
from groupvit_edge.model.nvlabs_keys import hf_to_nvlabs, is_nvlabs_state_dict, nvlabs_to_hf  # noqa: E402


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = transformers.GroupViTModel(transformers.GroupViTConfig()).eval()
    # give the BatchNorm buffers non-default values so the round trip would notice a mix-up
    for proj in (model.visual_projection[1], model.text_projection[1]):
        proj.running_mean.normal_()
        proj.running_var.uniform_(0.5, 2.0)
        proj.num_batches_tracked.fill_(1234)
    return model


@pytest.fixture(scope="module")
def hf_sd(hf_model):
    return hf_model.state_dict()


@pytest.fixture(scope="module")
def nv_sd(hf_sd):
    return hf_to_nvlabs(hf_sd)


# name -> shape in the released gcc-yfcc checkpoint, read off the NVlabs module definitions
EXPECTED_ORIGINAL = {
    "logit_scale": (),
    "img_encoder.pos_embed": (1, 196, 384),
    "img_encoder.patch_embed.proj.weight": (384, 3, 16, 16),
    "img_encoder.patch_embed.norm.bias": (384,),
    "img_encoder.layers.0.group_token": (1, 64, 384),
    "img_encoder.layers.1.group_token": (1, 8, 384),
    "img_encoder.layers.0.blocks.0.attn.qkv.weight": (3 * 384, 384),
    "img_encoder.layers.2.blocks.2.attn.qkv.bias": (3 * 384,),
    "img_encoder.layers.0.blocks.5.attn.proj.weight": (384, 384),
    "img_encoder.layers.0.blocks.0.norm1.weight": (384,),
    "img_encoder.layers.1.blocks.0.mlp.fc1.weight": (1536, 384),
    "img_encoder.layers.0.downsample.mlp_inter.fc1.weight": (192, 64),
    "img_encoder.layers.1.downsample.mlp_inter.fc2.weight": (8, 192),
    "img_encoder.layers.0.downsample.pre_assign_attn.attn.proj.weight": (384, 384),
    "img_encoder.layers.0.downsample.pre_assign_attn.attn.q_proj.weight": (384, 384),
    "img_encoder.layers.0.downsample.pre_assign_attn.norm_post.weight": (384,),
    "img_encoder.layers.0.downsample.assign.k_proj.bias": (384,),
    "img_encoder.layers.1.downsample.assign.proj.weight": (384, 384),
    "img_encoder.layers.1.downsample.norm_new_x.weight": (384,),
    "img_encoder.layers.1.group_projector.0.weight": (384,),
    "img_encoder.layers.1.group_projector.1.fc1.weight": (192, 64),
    "img_encoder.layers.1.group_projector.1.fc2.weight": (8, 192),
    "img_encoder.norm.weight": (384,),
    "text_encoder.token_embedding.weight": (49408, 256),
    "text_encoder.positional_embedding": (77, 256),
    "text_encoder.transformer.resblocks.0.attn.in_proj_weight": (3 * 256, 256),
    "text_encoder.transformer.resblocks.11.attn.in_proj_bias": (3 * 256,),
    "text_encoder.transformer.resblocks.0.attn.out_proj.weight": (256, 256),
    "text_encoder.transformer.resblocks.3.ln_1.weight": (256,),
    "text_encoder.transformer.resblocks.11.mlp.c_fc.weight": (1024, 256),
    "text_encoder.transformer.resblocks.11.mlp.c_proj.weight": (256, 1024),
    "text_encoder.ln_final.bias": (256,),
    "img_projector.linear_hidden.0.weight": (4096, 384, 1),
    "img_projector.linear_hidden.1.running_var": (4096,),
    "img_projector.linear_hidden.1.num_batches_tracked": (),
    "img_projector.linear_out.weight": (256, 4096, 1),
    "text_projector.linear_hidden.0.weight": (4096, 256, 1),
    "text_projector.linear_out.bias": (256,),
}


def test_converted_keys_look_like_the_original(nv_sd, hf_sd):
    for name, shape in EXPECTED_ORIGINAL.items():
        assert name in nv_sd, name
        assert tuple(nv_sd[name].shape) == shape, name
    assert all(k == "logit_scale" or k.startswith(nvlabs_keys.NVLABS_PREFIXES) for k in nv_sd)
    # identity GroupingBlock.reduction (dim == out_dim) and classifier head (num_classes=0) have no parameters
    assert not [k for k in nv_sd if ".reduction." in k or k.startswith("img_encoder.head")]
    # 6+3+3 vision blocks and 12 text layers each fuse 3 weights + 3 biases into 1 + 1
    assert len(nv_sd) == len(hf_sd) - 4 * (12 + 12)
    assert is_nvlabs_state_dict(nv_sd)
    assert not is_nvlabs_state_dict(hf_sd)


def test_round_trip_is_exact(nv_sd, hf_sd):
    back = nvlabs_to_hf(nv_sd)
    assert set(back) == set(hf_sd)
    for key, tensor in hf_sd.items():
        assert back[key].shape == tensor.shape, key
        assert back[key].dtype == tensor.dtype, key
        assert torch.equal(back[key], tensor), key


def test_converted_state_dict_loads_strictly(nv_sd):
    model = transformers.GroupViTModel(transformers.GroupViTConfig())
    result = model.load_state_dict(nvlabs_to_hf(nv_sd), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_every_key_matches_exactly_one_rule(nv_sd, hf_sd):
    for key in nv_sd:
        assert sum(p.fullmatch(key) is not None for p, _, _ in nvlabs_keys._NV_PATTERNS) == 1, key
    for key in hf_sd:
        assert sum(p.fullmatch(key) is not None for p, _, _ in nvlabs_keys._HF_PATTERNS) == 1, key


def test_multi_label_logit_scale_is_knowingly_dropped(nv_sd, hf_sd):
    with_extra = dict(nv_sd, multi_label_logit_scale=torch.tensor(2.6593))
    assert set(nvlabs_to_hf(with_extra)) == set(hf_sd)


def test_nothing_is_copied(nv_sd):
    back = nvlabs_to_hf(nv_sd)
    assert back["logit_scale"] is nv_sd["logit_scale"]
    qkv = nv_sd["img_encoder.layers.0.blocks.0.attn.qkv.weight"]
    k = back["vision_model.encoder.stages.0.layers.0.self_attn.k_proj.weight"]
    assert k.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr()
    conv = nv_sd["img_projector.linear_out.weight"]
    assert back["visual_projection.3.weight"].data_ptr() == conv.data_ptr()
    # the input is left alone
    assert conv.shape == (256, 4096, 1)


def _nvlabs_fused_attention(x, qkv_w, qkv_b, proj_w, proj_b, num_heads):
    """The forward of NVlabs models/group_vit.py Attention with qkv_fuse=True (no mask, no dropout)."""
    B, N, C = x.shape
    qkv = torch.nn.functional.linear(x, qkv_w, qkv_b).reshape(B, N, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (C // num_heads) ** -0.5).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(B, N, C)
    return torch.nn.functional.linear(out, proj_w, proj_b)


@torch.no_grad()
def test_fused_qkv_order_matches_the_original_attention(hf_model, nv_sd):
    torch.manual_seed(1)
    # vision: NVlabs fused Attention vs HF GroupViTAttention of the same block
    x = torch.randn(2, 10, 384)
    pre = "img_encoder.layers.1.blocks.2.attn."
    expected = _nvlabs_fused_attention(
        x, nv_sd[pre + "qkv.weight"], nv_sd[pre + "qkv.bias"], nv_sd[pre + "proj.weight"], nv_sd[pre + "proj.bias"], 6
    )
    got = hf_model.vision_model.encoder.stages[1].layers[2].self_attn(x)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # text: torch.nn.MultiheadAttention (what the NVlabs TextTransformer uses) vs HF attention of the same layer
    pre = "text_encoder.transformer.resblocks.4.attn."
    mha = torch.nn.MultiheadAttention(256, 4).eval()
    mha.load_state_dict({k[len(pre):]: v for k, v in nv_sd.items() if k.startswith(pre)}, strict=True)
    t = torch.randn(2, 7, 256)
    expected = mha(t.transpose(0, 1), t.transpose(0, 1), t.transpose(0, 1), need_weights=False)[0].transpose(0, 1)
    got = hf_model.text_model.encoder.layers[4].self_attn(t)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_unknown_nvlabs_key_raises_naming_it(nv_sd):
    bad = dict(nv_sd)
    bad["img_encoder.layers.0.downsample.reduction.1.weight"] = torch.zeros(384, 384)
    with pytest.raises(UserError, match=r"'img_encoder\.layers\.0\.downsample\.reduction\.1\.weight'"):
        nvlabs_to_hf(bad)
    with pytest.raises(UserError, match=r"'module\.logit_scale'"):
        nvlabs_to_hf({"module.logit_scale": torch.tensor(1.0)})
    with pytest.raises(UserError, match=r"checkpoint\['model'\]"):
        nvlabs_to_hf({"model": dict(nv_sd), "epoch": 29})


def test_bad_fused_shape_raises(nv_sd):
    bad = dict(nv_sd)
    bad["img_encoder.layers.0.blocks.0.attn.qkv.weight"] = torch.zeros(3 * 384 - 1, 384)
    with pytest.raises(UserError, match="qkv"):
        nvlabs_to_hf(bad)


def test_unknown_or_incomplete_hf_state_dict_raises(hf_sd):
    with pytest.raises(UserError, match=r"'vision_model\.something'"):
        hf_to_nvlabs(dict(hf_sd, **{"vision_model.something": torch.zeros(1)}))
    partial = {k: v for k, v in hf_sd.items() if k != "text_model.encoder.layers.3.self_attn.v_proj.bias"}
    with pytest.raises(UserError, match=r"resblocks\.3\.attn\.in_proj_bias"):
        hf_to_nvlabs(partial)
