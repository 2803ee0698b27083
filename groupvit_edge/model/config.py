"""Architecture configuration, read from (and written as) a HuggingFace `config.json`.

Defaults are those of `nvidia/groupvit-gcc-yfcc`, so `GroupViTConfig()` is the architecture we ship.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError


@dataclass
class VisionConfig:
    hidden_size: int = 384
    intermediate_size: int = 1536
    depths: tuple[int, ...] = (6, 3, 3)
    num_group_tokens: tuple[int, ...] = (64, 8, 0)
    num_output_groups: tuple[int, ...] = (64, 8, 8)
    num_attention_heads: int = 6
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    assign_eps: float = 1.0
    assign_mlp_ratio: tuple[float, float] = (0.5, 4)

    @property
    def num_hidden_layers(self) -> int:
        return sum(self.depths)


@dataclass
class TextConfig:
    vocab_size: int = 49408
    hidden_size: int = 256
    intermediate_size: int = 1024
    num_hidden_layers: int = 12
    num_attention_heads: int = 4
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407


@dataclass
class GroupViTConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection_dim: int = 256
    projection_intermediate_dim: int = 4096
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_hf_dict(cls, hf: dict) -> GroupViTConfig:
        """Read the fields we use from a HF `GroupViTConfig` dict; unknown fields are ignored."""
        def pick(sub_cls, values: dict | None):
            values = values or {}
            kwargs = {}
            for f in dataclasses.fields(sub_cls):
                if f.name in values and values[f.name] is not None:
                    value = values[f.name]
                    kwargs[f.name] = tuple(value) if isinstance(value, list) else value
            return sub_cls(**kwargs)

        top = {k: hf[k] for k in ("projection_dim", "projection_intermediate_dim", "logit_scale_init_value")
               if k in hf}
        config = cls(vision=pick(VisionConfig, hf.get("vision_config")),
                     text=pick(TextConfig, hf.get("text_config")), **top)
        config.validate()
        return config

    @classmethod
    def from_json(cls, path: str | Path) -> GroupViTConfig:
        try:
            hf = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read model config {path}: {error}; pass a HuggingFace GroupViT "
                            "config.json") from None
        if hf.get("model_type", "groupvit") != "groupvit":
            raise UserError(f"{path} describes a '{hf.get('model_type')}' model, not GroupViT: pass a GroupViT "
                            "checkpoint")
        return cls.from_hf_dict(hf)

    def to_hf_dict(self) -> dict:
        """A config.json that `transformers.GroupViTModel` loads, so our checkpoints stay interchangeable."""
        vision = dataclasses.asdict(self.vision)
        vision.update(model_type="groupvit_vision_model", num_hidden_layers=self.vision.num_hidden_layers)
        text = dataclasses.asdict(self.text)
        text["model_type"] = "groupvit_text_model"
        return {
            "model_type": "groupvit",
            "architectures": ["GroupViTModel"],
            "projection_dim": self.projection_dim,
            "projection_intermediate_dim": self.projection_intermediate_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "vision_config": {k: list(v) if isinstance(v, tuple) else v for k, v in vision.items()},
            "text_config": text,
        }

    def validate(self) -> None:
        v = self.vision
        if not (len(v.depths) == len(v.num_group_tokens) == len(v.num_output_groups)):
            raise UserError("config.json vision_config: depths, num_group_tokens and num_output_groups must have "
                            "the same length; fix the checkpoint's config")
        if v.hidden_size % v.num_attention_heads or self.text.hidden_size % self.text.num_attention_heads:
            raise UserError("config.json: hidden_size must be divisible by num_attention_heads; fix the "
                            "checkpoint's config")

    @property
    def num_final_groups(self) -> int:
        """Groups that reach the output: decided by the last stage that has group tokens."""
        v = self.vision
        return [out for tokens, out in zip(v.num_group_tokens, v.num_output_groups) if tokens][-1]
