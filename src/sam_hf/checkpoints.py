"""State-dict formats: Meta's `segment_anything` <-> ours (transformers' `SamModel` names).

One table of key templates serves both directions. Placeholders match whole dotted parts:
`{i}` an index, `{p}` weight/bias, `{proj}` a projection of the decoder attention, `{n}` a norm index.
The MLP heads are the one place where indices move (Meta's `layers.0..D-1` are our `proj_in`,
`layers.0..D-3`, `proj_out`), handled by `_mlp_key`. Loading is strict: every source key is used,
every target key is produced and every shape matches, or a `ValueError` lists what is wrong.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .configuration import SamHfConfig

# (Meta, ours)
KEY_TABLE: list[tuple[str, str]] = [
    ("image_encoder.patch_embed.proj.{p}", "vision_encoder.patch_embed.projection.{p}"),
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.blocks.{i}.norm{n}.{p}", "vision_encoder.layers.{i}.layer_norm{n}.{p}"),
    ("image_encoder.blocks.{i}.attn.{vproj}.{p}", "vision_encoder.layers.{i}.attn.{vproj}.{p}"),
    ("image_encoder.blocks.{i}.attn.{relpos}", "vision_encoder.layers.{i}.attn.{relpos}"),
    ("image_encoder.blocks.{i}.mlp.{lin}.{p}", "vision_encoder.layers.{i}.mlp.{lin}.{p}"),
    ("image_encoder.neck.0.weight", "vision_encoder.neck.conv1.weight"),
    ("image_encoder.neck.1.{p}", "vision_encoder.neck.layer_norm1.{p}"),
    ("image_encoder.neck.2.weight", "vision_encoder.neck.conv2.weight"),
    ("image_encoder.neck.3.{p}", "vision_encoder.neck.layer_norm2.{p}"),
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "shared_image_embedding.positional_embedding"),
    ("prompt_encoder.point_embeddings.{i}.weight", "prompt_encoder.point_embed.{i}.weight"),
    ("prompt_encoder.not_a_point_embed.weight", "prompt_encoder.not_a_point_embed.weight"),
    ("prompt_encoder.no_mask_embed.weight", "prompt_encoder.no_mask_embed.weight"),
    ("prompt_encoder.mask_downscaling.0.{p}", "prompt_encoder.mask_embed.conv1.{p}"),
    ("prompt_encoder.mask_downscaling.1.{p}", "prompt_encoder.mask_embed.layer_norm1.{p}"),
    ("prompt_encoder.mask_downscaling.3.{p}", "prompt_encoder.mask_embed.conv2.{p}"),
    ("prompt_encoder.mask_downscaling.4.{p}", "prompt_encoder.mask_embed.layer_norm2.{p}"),
    ("prompt_encoder.mask_downscaling.6.{p}", "prompt_encoder.mask_embed.conv3.{p}"),
    ("mask_decoder.transformer.layers.{i}.{attn}.{proj}.{p}", "mask_decoder.transformer.layers.{i}.{attn}.{proj}.{p}"),
    ("mask_decoder.transformer.layers.{i}.norm{n}.{p}", "mask_decoder.transformer.layers.{i}.layer_norm{n}.{p}"),
    ("mask_decoder.transformer.layers.{i}.mlp.{lin}.{p}", "mask_decoder.transformer.layers.{i}.mlp.{lin}.{p}"),
    ("mask_decoder.transformer.final_attn_token_to_image.{proj}.{p}", "mask_decoder.transformer.final_attn_token_to_image.{proj}.{p}"),
    ("mask_decoder.transformer.norm_final_attn.{p}", "mask_decoder.transformer.layer_norm_final_attn.{p}"),
    ("mask_decoder.iou_token.weight", "mask_decoder.iou_token.weight"),
    ("mask_decoder.mask_tokens.weight", "mask_decoder.mask_tokens.weight"),
    ("mask_decoder.output_upscaling.0.{p}", "mask_decoder.upscale_conv1.{p}"),
    ("mask_decoder.output_upscaling.1.{p}", "mask_decoder.upscale_layer_norm.{p}"),
    ("mask_decoder.output_upscaling.3.{p}", "mask_decoder.upscale_conv2.{p}"),
]

_PLACEHOLDERS = {
    "i": r"\d+",
    "n": r"[1-4]",
    "p": r"weight|bias",
    "vproj": r"qkv|proj",
    "relpos": r"rel_pos_h|rel_pos_w",
    "lin": r"lin1|lin2",
    "attn": r"self_attn|cross_attn_token_to_image|cross_attn_image_to_token",
    "proj": r"q_proj|k_proj|v_proj|out_proj",
}
_META_MLP = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.(weight|bias)$")
_OURS_MLP = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(proj_in|proj_out|layers\.(\d+))\.(weight|bias)$")


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, regex in _PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{regex})")
    return re.compile(f"^{pattern}$")


_META_TO_OURS = [(_compile(meta), ours) for meta, ours in KEY_TABLE]
_OURS_TO_META = [(_compile(ours), meta) for meta, ours in KEY_TABLE]


def _rename(key: str, rules) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict())
    return None


def _mlp_depth(keys, prefix: str) -> int:
    return sum(1 for k in keys if k.startswith(prefix + ".") and k.endswith(".weight"))


def meta_key_to_ours(key: str, mlp_depth: int) -> str | None:
    """Our name of one Meta key, or None if the key is not part of SAM."""
    match = _META_MLP.match(key)
    if match:
        prefix, index, param = match.group(1), int(match.group(2)), match.group(3)
        if index == 0:
            return f"{prefix}.proj_in.{param}"
        if index == mlp_depth - 1:
            return f"{prefix}.proj_out.{param}"
        return f"{prefix}.layers.{index - 1}.{param}" if 0 < index < mlp_depth - 1 else None
    return _rename(key, _META_TO_OURS)


def our_key_to_meta(key: str, mlp_depth: int) -> str | None:
    """Meta's name of one of our keys (the inverse of `meta_key_to_ours`)."""
    match = _OURS_MLP.match(key)
    if match:
        prefix, part, middle, param = match.groups()
        index = 0 if part == "proj_in" else mlp_depth - 1 if part == "proj_out" else int(middle) + 1
        return f"{prefix}.layers.{index}.{param}"
    return _rename(key, _OURS_TO_META)


def _convert(state_dict: dict, to_key, source: str) -> dict[str, torch.Tensor]:
    converted, unknown = {}, []
    for key, value in state_dict.items():
        prefix = _META_MLP.match(key) or _OURS_MLP.match(key)
        depth = _mlp_depth(state_dict, prefix.group(1)) if prefix else 0
        new = to_key(key, depth)
        if new is None:
            unknown.append(key)
        else:
            converted[new] = value
    if unknown:
        raise ValueError(f"state dict has {len(unknown)} key(s) that are not part of {source} SAM: {sorted(unknown)[:20]}")
    return converted


def convert_meta_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    """Meta `segment_anything` state dict -> ours. Raises ValueError on any foreign key."""
    _check_plain_state_dict(state_dict, "state_dict")
    return _convert(state_dict, meta_key_to_ours, "Meta's")


def convert_to_meta_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    """Our (transformers `SamModel`) state dict -> Meta's key names."""
    _check_plain_state_dict(state_dict, "state_dict")
    skipped = {k: v for k, v in state_dict.items() if k != "prompt_encoder.shared_embedding.positional_embedding"}
    return _convert(skipped, our_key_to_meta, "sam_hf's")


def _check_plain_state_dict(state_dict, name: str) -> None:
    if not isinstance(state_dict, dict):
        raise TypeError(f"{name} must be a dict of parameter name -> tensor, got {type(state_dict).__name__}")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{name} must map str -> torch.Tensor (a plain state dict), got other entries: {bad[:10]}")


def read_meta_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read Meta's `.pth` safely: `torch.load(weights_only=True)`, plain state dict only."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint path must be an existing file, got {path!r}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, foreign pickle, not a torch file
        raise ValueError(
            f"checkpoint {path!r} could not be read as a weights-only torch file (truncated, or not a plain "
            f"state dict of tensors): {type(error).__name__}: {str(error).splitlines()[0][:300]}"
        ) from error
    _check_plain_state_dict(state_dict, f"the object in {path!r}")
    return state_dict


def load_meta_state_dict(model_class, state_dict: dict, config: "SamHfConfig"):
    """Build `model_class(config)` from a Meta state dict, strictly (keys and shapes)."""
    converted = convert_meta_state_dict(state_dict)
    model = model_class(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(converted) & set(expected)) if converted[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            "the Meta checkpoint does not match the config: "
            f"missing (model keys not filled): {missing[:20]}; unexpected (checkpoint keys unused): {unexpected[:20]}; "
            f"shape mismatches: {wrong[:20]}"
        )
    model.load_state_dict(converted, strict=True)
    return model.eval()


def infer_meta_config(state_dict: dict) -> "SamHfConfig":
    """A `SamHfConfig` read off a Meta state dict's shapes (decoder head counts keep Meta's defaults). A key the
    shapes are read from is missing: ValueError naming it."""
    try:
        return _config_from_shapes(state_dict)
    except KeyError as err:
        raise ValueError(f"state_dict is not a complete Meta SAM checkpoint: {err.args[0]!r} is missing, "
                         "and the config is read from it (give the variant to convert a checkpoint that lacks it)") from None


def _config_from_shapes(state_dict: dict) -> "SamHfConfig":
    from .configuration import SamHfConfig

    proj = state_dict["image_encoder.patch_embed.proj.weight"]  # (C, 3, p, p)
    hidden, patch = proj.shape[0], proj.shape[-1]
    grid = state_dict["image_encoder.pos_embed"].shape[1]
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    rel = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    global_idx = [i for i, r in enumerate(rel) if r.shape[0] == 2 * grid - 1]
    windowed = [r for i, r in enumerate(rel) if i not in global_idx]
    window = (windowed[0].shape[0] + 1) // 2 if windowed else 0
    out_chans = state_dict["image_encoder.neck.0.weight"].shape[0]
    image_size = grid * patch
    return SamHfConfig(
        vision_config=dict(
            hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=hidden // rel[0].shape[1],
            global_attn_indexes=global_idx, window_size=window, image_size=image_size, patch_size=patch,
            output_channels=out_chans, num_pos_feats=state_dict["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape[1],
            mlp_dim=state_dict["image_encoder.blocks.0.mlp.lin1.weight"].shape[0],
        ),
        prompt_encoder_config=dict(
            hidden_size=out_chans, image_size=image_size, patch_size=patch,
            mask_input_channels=state_dict["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        ),
        mask_decoder_config=dict(
            hidden_size=out_chans, mlp_dim=state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            num_hidden_layers=len({k.split(".")[3] for k in state_dict if k.startswith("mask_decoder.transformer.layers.")}),
            num_multimask_outputs=state_dict["mask_decoder.mask_tokens.weight"].shape[0] - 1,
            iou_head_hidden_dim=state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
            iou_head_depth=_mlp_depth(state_dict, "mask_decoder.iou_prediction_head"),
        ),
    )
