"""Configurations of SamHfModel and its three parts.

Field names follow transformers' `SamConfig` and its sub-configs, so a transformers `config.json`
(model_type "sam") converts field for field. Every value is checked when a config is built: a wrong
value raises `ValueError` (or `TypeError` for a wrong type) naming the field, what was expected and
what came. Configs are keyword-only dataclasses, as all configs in transformers 5.
"""

from __future__ import annotations

import math

import torch
from transformers import PretrainedConfig

_ACTIVATIONS = ("gelu", "relu", "silu", "gelu_new", "quick_gelu")


def _check_int(config: str, name: str, value, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{config}.{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{config}.{name} must be >= {minimum}, got {value}")


def _check_positive_float(config: str, name: str, value, *, allow_zero: bool = False, below: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{config}.{name} must be a number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) or (below is not None and value >= below):
        expected = f"a finite number {'>= 0' if allow_zero else '> 0'}" + (f" and < {below}" if below is not None else "")
        raise ValueError(f"{config}.{name} must be {expected}, got {value}")


def _check_activation(config: str, value) -> None:
    if value not in _ACTIVATIONS:
        raise ValueError(f"{config}.hidden_act must be one of {_ACTIVATIONS}, got {value!r}")


def _check_divisible(config: str, name: str, value: int, by_name: str, by: int) -> None:
    if value % by != 0:
        raise ValueError(f"{config}.{name} ({value}) must be divisible by {by_name} ({by})")


class SamHfVisionConfig(PretrainedConfig):
    """The ViT image encoder: patch embedding, windowed/global blocks with relative positions, neck.

    `image_size` is the padded square input (1024 for Meta's models); the embedding grid is
    `image_size // patch_size` on each side. Blocks listed in `global_attn_indexes` attend over the
    whole grid, the others over `window_size` x `window_size` windows (0 means global everywhere).
    """

    model_type = "sam_hf_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 768
    output_channels: int = 256
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 1024
    patch_size: int = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    initializer_range: float = 1e-10
    qkv_bias: bool = True
    mlp_ratio: float = 4.0
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: list[int] | tuple[int, ...] = (2, 5, 8, 11)
    num_pos_feats: int = 128
    mlp_dim: int | None = None

    def __post_init__(self, **kwargs):
        # Derived in transformers' config.json; recomputed here, never trusted from the file.
        kwargs.pop("scale", None)
        kwargs.pop("model_type", None)
        name = "SamHfVisionConfig"
        for field in ("hidden_size", "output_channels", "num_hidden_layers", "num_attention_heads",
                      "num_channels", "image_size", "patch_size", "num_pos_feats"):
            _check_int(name, field, getattr(self, field))
        _check_int(name, "window_size", self.window_size, minimum=0)
        _check_divisible(name, "hidden_size", self.hidden_size, "num_attention_heads", self.num_attention_heads)
        _check_divisible(name, "image_size", self.image_size, "patch_size", self.patch_size)
        _check_activation(name, self.hidden_act)
        _check_positive_float(name, "layer_norm_eps", self.layer_norm_eps)
        _check_positive_float(name, "mlp_ratio", self.mlp_ratio)
        _check_positive_float(name, "attention_dropout", self.attention_dropout, allow_zero=True, below=1)
        if self.mlp_dim is None:
            self.mlp_dim = int(self.hidden_size * self.mlp_ratio)
        _check_int(name, "mlp_dim", self.mlp_dim)
        if not isinstance(self.global_attn_indexes, (list, tuple)):
            raise TypeError(f"{name}.global_attn_indexes must be a list of ints, got {type(self.global_attn_indexes).__name__}")
        if any(isinstance(i, bool) or not isinstance(i, int) for i in self.global_attn_indexes):
            raise TypeError(f"{name}.global_attn_indexes must be a list of ints, got {list(self.global_attn_indexes)!r}")
        self.global_attn_indexes = list(self.global_attn_indexes)
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(f"{name}.global_attn_indexes must lie in [0, num_hidden_layers={self.num_hidden_layers}), got {bad}")
        if len(set(self.global_attn_indexes)) != len(self.global_attn_indexes):
            raise ValueError(f"{name}.global_attn_indexes must name each layer once, got {self.global_attn_indexes}")
        super().__post_init__(**kwargs)

    @property
    def grid_size(self) -> int:
        """Side of the image-embedding grid (64 for a 1024 input with 16-pixel patches)."""
        return self.image_size // self.patch_size

    @property
    def scale(self) -> int:
        """Initial scale of the random Fourier features (transformers' `SamVisionConfig.scale`)."""
        return self.hidden_size // 2


class SamHfPromptEncoderConfig(PretrainedConfig):
    """Points, boxes and mask logits to sparse (B, P, N, C) and dense (B, C, H, W) embeddings."""

    model_type = "sam_hf_prompt_encoder"
    base_config_key = "prompt_encoder_config"

    hidden_size: int = 256
    image_size: int = 1024
    patch_size: int = 16
    mask_input_channels: int = 16
    num_point_embeddings: int = 4
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6

    def __post_init__(self, **kwargs):
        kwargs.pop("image_embedding_size", None)  # derived, see the property
        kwargs.pop("model_type", None)
        name = "SamHfPromptEncoderConfig"
        for field in ("hidden_size", "image_size", "patch_size", "mask_input_channels"):
            _check_int(name, field, getattr(self, field))
        _check_divisible(name, "hidden_size", self.hidden_size, "2 (sin and cos halves)", 2)
        _check_divisible(name, "mask_input_channels", self.mask_input_channels, "4", 4)
        _check_divisible(name, "image_size", self.image_size, "patch_size", self.patch_size)
        if isinstance(self.num_point_embeddings, bool) or not isinstance(self.num_point_embeddings, int) or self.num_point_embeddings != 4:
            raise ValueError(f"{name}.num_point_embeddings must be 4 (positive, negative, two box corners), got {self.num_point_embeddings}")
        _check_activation(name, self.hidden_act)
        _check_positive_float(name, "layer_norm_eps", self.layer_norm_eps)
        super().__post_init__(**kwargs)

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mask_input_size(self) -> int:
        """Side of the low-resolution mask logits the prompt encoder takes (256 for SAM)."""
        return 4 * self.image_embedding_size


class SamHfMaskDecoderConfig(PretrainedConfig):
    """The two-way transformer and the mask/IoU heads."""

    model_type = "sam_hf_mask_decoder"
    base_config_key = "mask_decoder_config"

    hidden_size: int = 256
    hidden_act: str = "relu"
    mlp_dim: int = 2048
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    layer_norm_eps: float = 1e-6

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)
        name = "SamHfMaskDecoderConfig"
        for field in ("hidden_size", "mlp_dim", "num_hidden_layers", "num_attention_heads",
                      "attention_downsample_rate", "num_multimask_outputs", "iou_head_hidden_dim"):
            _check_int(name, field, getattr(self, field))
        _check_int(name, "iou_head_depth", self.iou_head_depth, minimum=2)
        _check_divisible(name, "hidden_size", self.hidden_size, "8 (upscaling channels)", 8)
        inner = self.hidden_size // self.attention_downsample_rate
        _check_int(name, "hidden_size // attention_downsample_rate (the cross-attention width)", inner)
        _check_divisible(name, "hidden_size // attention_downsample_rate", inner, "num_attention_heads", self.num_attention_heads)
        _check_divisible(name, "hidden_size", self.hidden_size, "num_attention_heads", self.num_attention_heads)
        _check_activation(name, self.hidden_act)
        _check_positive_float(name, "layer_norm_eps", self.layer_norm_eps)
        super().__post_init__(**kwargs)


class SamHfConfig(PretrainedConfig):
    """SamHfModel's configuration: `vision_config`, `prompt_encoder_config`, `mask_decoder_config`.

    Each part may be given as a config object or a dict of its fields. The parts must agree:
    the encoder's output channels, the prompt dimension and the decoder width are one number, and
    the encoder and the prompt encoder see the same image and patch sizes.
    """

    model_type = "sam_hf"
    sub_configs_defaults = {
        "vision_config": SamHfVisionConfig,
        "prompt_encoder_config": SamHfPromptEncoderConfig,
        "mask_decoder_config": SamHfMaskDecoderConfig,
    }

    vision_config: dict | PretrainedConfig | None = None
    prompt_encoder_config: dict | PretrainedConfig | None = None
    mask_decoder_config: dict | PretrainedConfig | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    # Written by SamHfModel.save_pretrained: the vision encoder's dtype ("bfloat16", ...) where its weights are in
    # another dtype than the rest (`mixed_precision()`), else None; from_pretrained(dtype="auto") restores that split.
    encoder_dtype: str | None = None

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a transformers "sam" config.json becomes ours
        for key, cls in self.sub_configs_defaults.items():
            value = getattr(self, key)
            if isinstance(value, PretrainedConfig) and not isinstance(value, cls.config_class):
                # A transformers Sam*Config (or any config): take its fields.
                setattr(self, key, value.to_dict())
            elif value is not None and not isinstance(value, (dict, PretrainedConfig)):
                raise TypeError(f"SamHfConfig.{key} must be a dict or {cls.config_class.__name__}, got {type(value).__name__}")
        for key in self.sub_configs_defaults:
            value = getattr(self, key)
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in ("model_type", "transformers_version")}
                setattr(self, key, value)
        _check_positive_float("SamHfConfig", "initializer_range", self.initializer_range, allow_zero=True)
        if self.encoder_dtype is not None and not (
            isinstance(self.encoder_dtype, str) and isinstance(getattr(torch, self.encoder_dtype, None), torch.dtype)
            and getattr(torch, self.encoder_dtype).is_floating_point
        ):
            raise ValueError(f"SamHfConfig.encoder_dtype must be None or a floating torch dtype's name such as 'bfloat16', "
                             f"got {self.encoder_dtype!r}")
        super().__post_init__(**kwargs)
        v, p, d = self.vision_config, self.prompt_encoder_config, self.mask_decoder_config
        if not v.output_channels == p.hidden_size == d.hidden_size:
            raise ValueError(
                "SamHfConfig: vision_config.output_channels, prompt_encoder_config.hidden_size and "
                f"mask_decoder_config.hidden_size must be equal, got {v.output_channels}, {p.hidden_size}, {d.hidden_size}"
            )
        if 2 * v.num_pos_feats != p.hidden_size:
            raise ValueError(
                "SamHfConfig: 2 * vision_config.num_pos_feats must equal prompt_encoder_config.hidden_size "
                f"(random Fourier features, sin and cos halves), got 2 * {v.num_pos_feats} and {p.hidden_size}"
            )
        if (v.image_size, v.patch_size) != (p.image_size, p.patch_size):
            raise ValueError(
                "SamHfConfig: vision_config and prompt_encoder_config must share image_size and patch_size, got "
                f"({v.image_size}, {v.patch_size}) and ({p.image_size}, {p.patch_size})"
            )
