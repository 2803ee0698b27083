"""The export-friendly model equals transformers' GroupViT, and every checkpoint format loads through one path."""
from __future__ import annotations

import importlib
import json
import pickle

import pytest
import torch
from conftest import hub_cache

from groupvit_edge.errors import UserError
from groupvit_edge.model import GroupViT, GroupViTConfig, load_model, save_pretrained

transformers = pytest.importorskip("transformers", reason="transformers is in the dev extra: it is the parity oracle")

# Same architecture, same weights, same float32 arithmetic up to op order: the outputs differ by ~1e-7, and 1e-4
# leaves three orders of magnitude of room above that while still catching any wrong weight or op.
PARITY_ATOL = 1e-4
TOKENS = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 269, 49407] + [0] * 69,
                       [49406, 320, 1125, 539, 320, 1929, 49407] + [0] * 70])


@pytest.fixture(scope="module")
def hf_model(random_checkpoint):
    """transformers' own GroupViT, loaded from the checkpoint our code wrote."""
    return transformers.GroupViTModel.from_pretrained(str(random_checkpoint)).eval()


@pytest.fixture(scope="module")
def ours(random_checkpoint):
    return load_model(str(random_checkpoint))


def test_parity_with_transformers_at_224(hf_model, ours):
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(input_ids=TOKENS, pixel_values=pixels)
        _, image_embed, _ = ours.model.encode_image(pixels)
        text_embeds = ours.model.encode_text(TOKENS.int())
        logits_per_image = image_embed @ text_embeds.T * ours.model.logit_scale.exp()
    diffs = {"image_embeds": (expected.image_embeds - image_embed).abs().max().item(),
             "text_embeds": (expected.text_embeds - text_embeds).abs().max().item(),
             "logits_per_image": (expected.logits_per_image - logits_per_image).abs().max().item()}
    print("max abs diff vs transformers at 224²:", diffs)
    assert max(diffs.values()) < PARITY_ATOL


def test_vision_parity_with_transformers_at_448(hf_model, ours):
    """transformers 5 drops `interpolate_pos_encoding` inside GroupViTVisionTransformer, so drive its parts."""
    pixels = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(2))
    vision = hf_model.vision_model
    with torch.no_grad():
        hidden = vision.embeddings(pixels, interpolate_pos_encoding=True)
        encoded = vision.encoder(hidden, output_attentions=True, return_dict=True)
        expected_tokens = vision.layernorm(encoded.last_hidden_state)
        tokens, assignments = ours.model.vision_model(pixels)
    token_diff = (expected_tokens - tokens).abs().max().item()
    assignment_diffs = [(a - b).abs().max().item() for a, b in zip(encoded.attentions, assignments)]
    print(f"max abs diff vs transformers at 448²: tokens {token_diff:.2e}, soft assignments {assignment_diffs}")
    assert token_diff < PARITY_ATOL and max(assignment_diffs) < PARITY_ATOL
    assert len(assignments) == 2


def test_grouping_equals_transformers_protocol(hf_model, ours):
    """Our grouping maps are transformers' `get_grouping_from_attentions` before its resize."""
    from transformers.models.groupvit.modeling_groupvit import get_grouping_from_attentions
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        attentions = hf_model.vision_model(pixels, output_attentions=True).attentions
        expected = get_grouping_from_attentions(attentions, (14, 14))
        _, _, grouping = ours.model.encode_image(pixels)
    assert grouping.shape == (1, 8, 14, 14)
    assert (expected - grouping).abs().max().item() < PARITY_ATOL


def test_non_square_position_embeddings_match_transformers(hf_model, ours):
    embeddings = hf_model.vision_model.embeddings
    pixels = torch.randn(1, 3, 224, 352)
    with torch.no_grad():
        expected = embeddings.interpolate_pos_encoding(embeddings.patch_embeddings(pixels, True), 224, 352)
        table = ours.model.vision_model.embeddings.position_embeddings_for(224, 352)
    assert table.shape == (1, 14 * 22, 384)
    assert (expected - table).abs().max().item() < 1e-6


def test_assignment_is_hard_one_hot_without_noise(ours):
    """Two runs agree exactly (no Gumbel noise) and every image token lands in exactly one group."""
    block = ours.model.vision_model.encoder.stages[0].downsample.assign
    groups, tokens = torch.randn(1, 64, 384), torch.randn(1, 196, 384)
    with torch.no_grad():
        first = block(groups, tokens)[0]
        second = block(groups, tokens)[0]
        logits = (block.q_proj(groups) @ block.k_proj(tokens).transpose(-2, -1)) * block.scale
    assert torch.equal(first, second)
    hard = (logits == logits.amax(dim=-2, keepdim=True)).float()
    assert torch.all(hard.sum(dim=-2) == 1)


def test_random_spec_is_seeded(ours):
    a, b, c = load_model("random:0"), load_model("random:0"), load_model("random:1")
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    assert ours.weights_sha256 == a.weights_sha256   # the saved checkpoint holds exactly random:0


def test_pytorch_model_bin_directory(tmp_path, ours):
    directory = tmp_path / "bin-ckpt"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(ours.model.config.to_hf_dict()))
    state = dict(ours.model.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]   # older HF checkpoints carry it
    torch.save(state, directory / "pytorch_model.bin")
    assert load_model(str(directory)).weights_sha256 == ours.weights_sha256


HUB_ID = "nvidia/groupvit-gcc-yfcc"


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """An empty HF_HUB_CACHE and HF_HUB_OFFLINE=1, given to huggingface_hub the way a user's shell does. It reads
    both when first imported, so its constants are re-read here (and again once the variables are restored)."""
    import huggingface_hub.constants as constants
    cache = tmp_path / "hf-hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    importlib.reload(constants)
    assert constants.HF_HUB_CACHE == str(cache) and constants.HF_HUB_OFFLINE
    yield cache
    monkeypatch.undo()
    importlib.reload(constants)


def test_hub_id_loads_offline_from_the_huggingface_cache(offline_hub, random_checkpoint, ours):
    with pytest.raises(UserError, match="is not in the HuggingFace cache"):   # the variable, not ~/.cache, is read
        load_model(HUB_ID)
    hub_cache(offline_hub, HUB_ID, random_checkpoint)
    loaded = load_model(HUB_ID)
    assert loaded.model_id == HUB_ID and loaded.weights_sha256 == ours.weights_sha256


def test_a_cached_snapshot_that_huggingface_hub_calls_incomplete_still_loads(offline_hub, random_checkpoint, ours):
    """`hf download ID config.json model.safetensors` caches the repo's whole listing but two files: offline,
    huggingface_hub then refuses the snapshot for the patterns we ask (pytorch_model.bin, the tokenizer), though
    it holds a whole checkpoint."""
    sizes = {name: (random_checkpoint / name).stat().st_size for name in ("config.json", "model.safetensors")}
    hub_cache(offline_hub, HUB_ID, random_checkpoint,
              tree={**sizes, "pytorch_model.bin": 10, "vocab.json": 10, "merges.txt": 10, "README.md": 10})
    assert load_model(HUB_ID).weights_sha256 == ours.weights_sha256


def test_a_cached_config_without_weights_says_how_to_complete_it(offline_hub, random_checkpoint):
    snapshot = hub_cache(offline_hub, HUB_ID, random_checkpoint, files=("config.json",))
    with pytest.raises(UserError) as error:
        load_model(HUB_ID)
    assert str(error.value) == (f"the cached {HUB_ID} ({snapshot}) has no model.safetensors or pytorch_model.bin: "
                                f"complete it with `hf download {HUB_ID}` while online, or pass a local checkpoint "
                                f"directory")


def test_a_model_cached_at_another_revision_names_its_snapshot(offline_hub, random_checkpoint, ours):
    """A download by commit hash writes no refs/main: the snapshot is named, not guessed at."""
    snapshot = hub_cache(offline_hub, HUB_ID, random_checkpoint, ref=None)
    with pytest.raises(UserError) as error:
        load_model(HUB_ID)
    message = str(error.value)
    assert "cached only at another revision than main" in message and str(snapshot) in message, message
    assert load_model(str(snapshot)).weights_sha256 == ours.weights_sha256      # the fix it names works


def test_hub_id_offline_and_not_cached_is_one_sentence_saying_how_to_get_it(offline_hub):
    with pytest.raises(UserError) as error:
        load_model(HUB_ID)
    assert str(error.value) == (f"{HUB_ID} is not in the HuggingFace cache ({offline_hub}) and HF_HUB_OFFLINE is "
                                f"set: download it once with `hf download {HUB_ID}` (or load it once online), or "
                                f"pass a local checkpoint directory")


@pytest.mark.parametrize("spec, needle", [
    ("./does-not-exist", "does not exist"),
    ("random:abc", "seed must be an integer"),
])
def test_bad_model_specs(spec, needle):
    with pytest.raises(UserError, match=needle):
        load_model(spec)


def test_corrupt_and_mismatched_checkpoints(tmp_path, ours):
    corrupt = tmp_path / "corrupt"
    save_pretrained(ours.model, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="safetensors"):
        load_model(str(corrupt))

    no_config = tmp_path / "no-config"
    no_config.mkdir()
    with pytest.raises(UserError, match="config.json"):
        load_model(str(no_config))

    wrong = tmp_path / "wrong-config"
    save_pretrained(ours.model, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["vision_config"]["hidden_size"] = 192
    config["vision_config"]["num_attention_heads"] = 3
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="does not belong|does not match"):
        load_model(str(wrong))

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(pickle.dumps("x")[:3])
    with pytest.raises(UserError, match="garbage.pth"):
        load_model(str(garbage))


def test_config_roundtrip_reads_hf_config():
    hf_config = transformers.GroupViTConfig().to_dict()
    config = GroupViTConfig.from_hf_dict(hf_config)
    assert config == GroupViTConfig()
    assert GroupViTConfig.from_hf_dict(config.to_hf_dict()) == config
    assert config.num_final_groups == 8
    assert GroupViT(config).state_dict().keys() == transformers.GroupViTModel(
        transformers.GroupViTConfig()).state_dict().keys()
