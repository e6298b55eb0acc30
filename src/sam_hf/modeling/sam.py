"""SamHfModel: image encoder + prompt encoder + mask decoder, with transformers' SamModel weight names."""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from ..configuration import SamHfConfig
from .attention import IMPLEMENTATIONS
from .compile_support import eager_on_cpu_inference
from .image_encoder import SamHfVisionAttention, SamHfVisionEncoder
from .inputs import check_decoding_options, check_finite_embeddings, check_image_embeddings, check_prompts
from .layers import SamHfPositionalEmbedding
from .mask_decoder import SamHfMaskDecoder
from .outputs import SamHfImageSegmentationOutput, SamHfVisionEncoderOutput
from .prompt_encoder import SamHfPromptEncoder


class SamHfPreTrainedModel(PreTrainedModel):
    config_class = SamHfConfig
    config: SamHfConfig
    base_model_prefix = "sam_hf"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["SamHfVisionLayer"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # transformers' SamModel may store the tied copy of the Fourier matrix under the prompt encoder.
    _keys_to_ignore_on_load_unexpected = [r"prompt_encoder\.shared_embedding\.positional_embedding"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SamHfVisionAttention) and module.use_rel_pos:
            init.zeros_(module.rel_pos_h)
            init.zeros_(module.rel_pos_w)
        elif isinstance(module, SamHfVisionEncoder) and module.pos_embed is not None:
            init.zeros_(module.pos_embed)
        elif isinstance(module, SamHfPositionalEmbedding):
            init.normal_(module.positional_embedding, std=1.0)  # Meta's scale

    def _sync_attn_implementation(self) -> None:
        # transformers sets the top-level value directly; the setter carries it to the sub-configs
        # that the attention modules read.
        self.config._attn_implementation = self.config._attn_implementation

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Switch every attention of the model between "eager" and "sdpa"."""
        if attn_implementation not in IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {IMPLEMENTATIONS}, got {attn_implementation!r}")
        self.config._attn_implementation = attn_implementation

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, every_n_layers: int = 1) -> None:
        """transformers' hook behind `gradient_checkpointing_enable` / `activation_checkpointing_enable`: the ViT layers
        (every `every_n_layers`-th, from the first) recompute their activations in the backward pass, through
        `gradient_checkpointing_func` (transformers' `checkpoint` with its kwargs, or CPU offloading) when given."""
        if isinstance(every_n_layers, bool) or not isinstance(every_n_layers, int):
            raise TypeError(f"every_n_layers must be an int, got {type(every_n_layers).__name__}")
        if every_n_layers < 1:
            raise ValueError(f"every_n_layers must be at least 1, got {every_n_layers}")
        for module in self.modules():
            if isinstance(module, SamHfVisionEncoder):
                module.gradient_checkpointing = enable
                module.checkpoint_every = every_n_layers
                module.checkpoint_function = gradient_checkpointing_func


# transformers' SamModel ties the prompt encoder's copy of the Fourier matrix to the model's; a checkpoint may hold either
_TIED_POSITIONAL_KEYS = {r"^prompt_encoder\.shared_embedding\.positional_embedding$": "shared_image_embedding.positional_embedding"}


class SamHfModel(SamHfPreTrainedModel):
    """Segment Anything: `get_image_embeddings` once per image, then `forward` with prompts.

    Prompts live in the model-input frame (the resized, padded square image; the processor maps them
    from the original image). Shapes: B images, P prompts per image, N points per prompt, M masks.
    """

    mask_threshold: float = 0.0

    def __init__(self, config: SamHfConfig) -> None:
        if getattr(config, "model_type", None) != SamHfConfig.model_type:  # by type name: remote code has its own class
            raise TypeError(
                f"config must be a SamHfConfig, got {type(config).__name__}; a transformers SamConfig converts with "
                "SamHfConfig(**sam_config.to_dict()), and from_pretrained reads transformers-format folders as they are"
            )
        super().__init__(config)
        self.shared_image_embedding = SamHfPositionalEmbedding(num_pos_feats=config.vision_config.num_pos_feats)
        self.vision_encoder = SamHfVisionEncoder(config.vision_config)
        self.prompt_encoder = SamHfPromptEncoder(config.prompt_encoder_config)
        self.mask_decoder = SamHfMaskDecoder(config.mask_decoder_config)
        self.post_init()
        self._sync_attn_implementation()

    def mixed_precision(self, encoder_dtype: torch.dtype = torch.bfloat16) -> "SamHfModel":
        """The vision encoder in `encoder_dtype`, the rest (positional encoding, prompt encoder, mask decoder) in
        float32; in place, returns the model. The encoder holds nearly all of the weights and of the work for one
        prompt; the mask decoder then sees the low-precision embeddings but rounds nothing more itself (on the
        shipped model, segment everything finds all fp32 masks this way, where all-bf16 misses a few; see README)."""
        if not isinstance(encoder_dtype, torch.dtype) or not encoder_dtype.is_floating_point:
            raise TypeError(f"encoder_dtype must be a floating torch.dtype such as torch.bfloat16, got {encoder_dtype!r}")
        self.vision_encoder.to(encoder_dtype)
        for module in (self.shared_image_embedding, self.prompt_encoder, self.mask_decoder):
            module.to(torch.float32)
        return self

    def _record_dtypes(self) -> None:
        """Before saving: `config.vision_config.dtype`, the encoder's dtype where its weights share one (what the encoder
        alone, `SamHfVisionModel`, loads in with dtype "auto"), and `config.encoder_dtype`, that dtype where every other
        weight is in another one dtype (`mixed_precision()`), else None."""
        encoder = {p.dtype for p in self.vision_encoder.parameters()}
        rest = {p.dtype for name, p in self.named_parameters() if not name.startswith("vision_encoder.")}
        name = str(next(iter(encoder))).removeprefix("torch.") if len(encoder) == 1 else None
        if name is not None:
            self.config.vision_config.dtype = name
        self.config.encoder_dtype = name if len(rest) == 1 and encoder != rest else None

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' `from_pretrained`. A checkpoint that holds the positional matrix only under the prompt encoder's
        tied name (transformers' `prompt_encoder.shared_embedding.positional_embedding`) loads it. With `dtype="auto"`
        (transformers' default: no dtype given) a model saved after
        `mixed_precision()` loads as it was saved: its vision encoder in `config.encoder_dtype`, the rest in float32
        (loaded in float32, the encoder cast back: its weights are the saved ones, bit for bit)."""
        asked = kwargs.get("dtype") if kwargs.get("dtype") is not None else kwargs.get("torch_dtype")
        auto = asked is None or asked == "auto"  # transformers reads no dtype as "auto"
        # the Fourier matrix stored only under the prompt encoder's tied name loads too (a key_mapping given wins)
        kwargs["key_mapping"] = {**_TIED_POSITIONAL_KEYS, **(kwargs.get("key_mapping") or {})}
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True: (model, info)
        if auto and model.config.encoder_dtype is not None:
            model.mixed_precision(getattr(torch, model.config.encoder_dtype))
        return loaded

    def get_image_wide_positional_embeddings(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid -> (C, g, g)."""
        return self.shared_image_embedding.grid(self.config.prompt_encoder_config.image_embedding_size)

    @eager_on_cpu_inference
    def get_image_features(self, pixel_values: torch.Tensor, *, output_hidden_states: bool = False, output_attentions: bool = False) -> SamHfVisionEncoderOutput:
        embeddings, hidden, attentions = self.vision_encoder.encode(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        return SamHfVisionEncoderOutput(image_embeddings=embeddings, hidden_states=hidden, attentions=attentions)

    @torch.no_grad()
    def get_image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, S, S) -> image embeddings (B, C, g, g), without autograd, as transformers' `SamModel`
        (no graph of the ViT is kept: at 1024 pixels it would hold gigabytes). To train through the encoder, call the
        model on `pixel_values` or `get_image_features(pixel_values).image_embeddings`."""
        return self.get_image_features(pixel_values).image_embeddings

    @torch.no_grad()
    def get_prompt_embeddings(self, input_points: torch.Tensor | None = None, input_labels: torch.Tensor | None = None,
                              input_boxes: torch.Tensor | None = None, input_masks: torch.Tensor | None = None):
        """The prompt encoder's outputs, as transformers' `SamModel.get_prompt_embeddings` gives them: (sparse
        (B, P, T, C), or None without points and boxes; dense (B, C, g, g), or (B, P, C, g, g) for masks given per
        prompt). Prompts as `forward` takes them, checked alike: labels default to 1, and a point and box prompt
        ends in the box's two corners; padding slots (label -10) embed as zeros, as in transformers (`forward`
        also leaves them out of the attention). B is the prompts' batch size (1 without any prompt). Without
        autograd, as transformers' (train through `forward`)."""
        given = next((value for value in (input_points, input_boxes, input_masks) if value is not None), None)
        batch = given.shape[0] if isinstance(given, torch.Tensor) and given.dim() > 0 else 1  # else check_prompts raises
        check_prompts(batch_size=batch, input_points=input_points, input_labels=input_labels, input_boxes=input_boxes,
                      input_masks=input_masks, mask_size=self.config.prompt_encoder_config.mask_input_size)
        if input_points is not None and input_labels is None:
            input_labels = torch.ones(input_points.shape[:3], dtype=torch.long, device=input_points.device)
        sparse, _, dense = self.prompt_encoder(
            positional_embedding=self.shared_image_embedding, batch_size=batch, input_points=input_points,
            input_labels=input_labels, input_boxes=input_boxes, input_masks=input_masks,
        )  # sparse (B, P, T, C), dense (B, P or 1, C, g, g)
        return (None if input_points is None and input_boxes is None else sparse), (dense[:, 0] if dense.shape[1] == 1 else dense)

    @eager_on_cpu_inference
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_points: torch.Tensor | None = None,
        input_labels: torch.Tensor | None = None,
        input_boxes: torch.Tensor | None = None,
        input_masks: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        multimask_output: bool = True,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        mask_iou_threshold: float | None = None,
        image_cache: dict | None = None,
        attention_similarity: torch.Tensor | None = None,
        target_embedding: torch.Tensor | None = None,
        **kwargs,
    ) -> SamHfImageSegmentationOutput | tuple:
        r"""
        pixel_values (`(B, 3, S, S)`): preprocessed images; or give `image_embeddings` `(B, C, g, g)`.
        input_points (`(B, P, N, 2)`): x, y in the model-input frame.
        input_labels (`(B, P, N)` int): 1 positive, 0 negative, -1 not a point, -10 padding slot
            (ignored: padding never changes a result). Default: all 1.
        input_boxes (`(B, P, 4)`): x0, y0, x1, y1 in the model-input frame.
        input_masks (`(B, 1, 4g, 4g)` or `(B, P, 4g, 4g)`): low-res mask logits, one per image or per prompt.
        multimask_output (`bool`): three masks per prompt (True) or the single best-trained one.
        mask_iou_threshold (`float`, optional): skip the mask upscaling (and the mask tokens' final attention) of
            every prompt none of whose returned masks has a predicted IoU above this value; their `pred_masks` are -1e4
            everywhere (empty; -9984 in bf16, the nearest value it holds). `iou_scores` are always computed.
            Segment-everything uses it with its `pred_iou_thresh` (an exact shortcut there).
        image_cache (`dict`, optional): with `image_embeddings`, a dict (empty at first) that the caller passes to every
            call on the same embeddings: the decoder's prompt-independent work on the image (its tokens channels-last,
            the projections all prompts share) is computed in the first call and kept there; calls of one or two
            prompts without a mask input then take these projections too (without a kept cache they fold the
            prompts into them instead).
            Refilled when the embeddings, positional encoding or decoder weights change; used only where autograd
            records nothing. Segment everything passes one per crop, the predictor one per image, filled by
            `set_image` (see `modeling/image_cache.py`).
        attention_similarity (broadcastable to `(B*P, heads, T, HW)`), target_embedding (broadcastable to the decoder's
            tokens `(B, P, T, C)`): PerSAM's personalisation inputs, as transformers' `SamModel` takes them (T: the IoU
            token, the mask tokens, then the prompt's; see `modeling/persam.py`). A call with either runs the
            decoder's reference path.
        """
        unknown = set(kwargs) - {"original_sizes", "reshaped_input_sizes", "prompt_mask"}
        if unknown:
            raise TypeError(f"SamHfModel.forward got unexpected arguments {sorted(unknown)}")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError("give exactly one of pixel_values and image_embeddings")
        check_decoding_options(multimask_output, mask_iou_threshold)

        if image_cache is not None and pixel_values is not None:
            raise ValueError("image_cache keeps work on given image_embeddings: pass image_embeddings, not pixel_values, with it")
        computed_embeddings, hidden, vision_attn = None, None, None
        if pixel_values is not None:
            vision = self.get_image_features(pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
            image_embeddings, hidden, vision_attn = vision.image_embeddings, vision.hidden_states, vision.attentions
            computed_embeddings = image_embeddings
        else:
            prompt_cfg = self.config.prompt_encoder_config
            check_image_embeddings(image_embeddings, prompt_cfg.hidden_size, prompt_cfg.image_embedding_size)

        batch = image_embeddings.shape[0]
        prompts = check_prompts(
            batch_size=batch, input_points=input_points, input_labels=input_labels, input_boxes=input_boxes,
            input_masks=input_masks, mask_size=self.config.prompt_encoder_config.mask_input_size,
        )
        if image_embeddings.dtype == torch.float64:  # wider than any model dtype: computed as the decoder's
            image_embeddings = image_embeddings.to(self.mask_decoder.iou_token.weight.dtype)
        if prompts == 0:  # no prompt for any image: empty masks and scores of the usual shapes
            if computed_embeddings is None:  # given embeddings are checked as a decoder call checks them
                check_finite_embeddings(image_embeddings)
            output = self._no_prompt_output(image_embeddings, bool(multimask_output), computed_embeddings, hidden, vision_attn)
            return output if return_dict else output.transformers_tuple()
        if input_points is not None and input_labels is None:
            input_labels = torch.ones(input_points.shape[:3], dtype=torch.long, device=input_points.device)

        sparse, sparse_valid, dense = self.prompt_encoder(
            positional_embedding=self.shared_image_embedding, batch_size=batch, input_points=input_points,
            input_labels=input_labels, input_boxes=input_boxes, input_masks=input_masks,
        )
        masks, iou, decoder_attn = self.mask_decoder(
            image_embeddings=image_embeddings, image_pe=self.get_image_wide_positional_embeddings(),
            sparse_embeddings=sparse, sparse_valid=sparse_valid, dense_embeddings=dense,
            multimask_output=multimask_output, output_attentions=output_attentions, mask_iou_threshold=mask_iou_threshold,
            image_cache=image_cache, attention_similarity=attention_similarity, target_embedding=target_embedding,
        )
        output = SamHfImageSegmentationOutput(
            iou_scores=iou, pred_masks=masks, image_embeddings=computed_embeddings,
            vision_hidden_states=hidden, vision_attentions=vision_attn, mask_decoder_attentions=decoder_attn,
        )
        return output if return_dict else output.transformers_tuple()

    def _no_prompt_output(self, image_embeddings, multimask_output: bool, computed_embeddings, hidden, vision_attn):
        masks = self.config.mask_decoder_config.num_multimask_outputs if multimask_output else 1
        size = 4 * image_embeddings.shape[-1]
        dtype = self.mask_decoder.iou_token.weight.dtype
        return SamHfImageSegmentationOutput(
            iou_scores=image_embeddings.new_empty(image_embeddings.shape[0], 0, masks, dtype=dtype),
            pred_masks=image_embeddings.new_empty(image_embeddings.shape[0], 0, masks, size, size, dtype=dtype),
            image_embeddings=computed_embeddings, vision_hidden_states=hidden, vision_attentions=vision_attn,
        )

    # Meta's original checkpoints -------------------------------------------------------------
    @classmethod
    def from_meta_state_dict(cls, state_dict: dict, config: SamHfConfig) -> "SamHfModel":
        """Build a model from a state dict of Meta's `segment_anything` (strict: every key used)."""
        from ..checkpoints import load_meta_state_dict

        return load_meta_state_dict(cls, state_dict, config)

    @classmethod
    def from_meta_checkpoint(cls, path: str | os.PathLike, *, variant: str | None = None, config: SamHfConfig | None = None) -> "SamHfModel":
        """Load `sam_vit_{b,l,h}_*.pth` (`torch.load(weights_only=True)`); give `variant` or `config`."""
        from ..checkpoints import read_meta_checkpoint
        from ..variants import config_for_variant

        if (variant is None) == (config is None):
            raise ValueError("give exactly one of variant ('vit_b', 'vit_l', 'vit_h', 'tiny') and config")
        if config is None:
            config = config_for_variant(variant)
        return cls.from_meta_state_dict(read_meta_checkpoint(path), config)

    def push_to_hub(self, repo_id: str, *, model_card=None, processor=None, remote_code: bool = False, **kwargs):
        """transformers' `push_to_hub` (which uploads the saved processor too); with `model_card` (a ModelCard,
        kept as README.md), `processor` or `remote_code=True`: sam_hf's one-commit `sam_hf.hub.push_to_hub`."""
        if model_card is None and processor is None and not remote_code:
            return super().push_to_hub(repo_id, **kwargs)
        from ..hub.push import push_to_hub

        return push_to_hub(model=self, repo_id=repo_id, processor=processor, model_card=model_card, remote_code=remote_code, **kwargs)

    # Saving: a saved folder is complete (model, config and processor) --------------------------
    def save_pretrained(self, save_directory, *args, processor=None, **kwargs):
        """Save the model and, unless the folder already has one, a matching `SamHfProcessor`. A model whose vision
        encoder is in another dtype than the rest (`mixed_precision()`) records that dtype (`config.encoder_dtype`), so
        that `from_pretrained(..., dtype="auto")` restores the split."""
        self._record_dtypes()
        super().save_pretrained(save_directory, *args, **kwargs)
        has_processor = any(
            os.path.exists(os.path.join(save_directory, name)) for name in ("processor_config.json", "preprocessor_config.json")
        )
        if has_processor and processor is None:
            return
        if processor is None:
            from ..processing import SamHfImageProcessor, SamHfProcessor

            processor = SamHfProcessor(image_processor=SamHfImageProcessor.for_model(self.config))
        processor.save_pretrained(save_directory)
