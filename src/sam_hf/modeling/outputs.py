"""Output records of SamHfModel."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class SamHfImageSegmentationOutput(ModelOutput):
    """
    iou_scores (`torch.FloatTensor` of shape `(B, P, M)`):
        Predicted IoU of every mask (M = 3 with `multimask_output`, else 1).
    pred_masks (`torch.FloatTensor` of shape `(B, P, M, 4g, 4g)`):
        Low-resolution mask logits (256 x 256 for a 1024 input); `processor.post_process_masks` brings
        them to the original image, and they can be fed back as `input_masks`.
    vision_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        Output of the patch embedding and of every ViT block, each `(B, g, g, hidden_size)`.
    vision_attentions (`tuple(torch.FloatTensor)`, *optional*):
        Attention weights of every ViT block, `(B * windows, heads, L, L)`.
    mask_decoder_attentions (`tuple(torch.FloatTensor)`, *optional*):
        Attention weights of the two-way transformer: per block (self, token->image, image->token), then
        the final token->image attention, each `(B, P, heads, Lq, Lk)` (P may be 1 where the image side is
        still shared by all prompts).
    image_embeddings (`torch.FloatTensor` of shape `(B, C, g, g)`, *optional*):
        The image embeddings used, returned when the model computed them from `pixel_values` (sam_hf's addition:
        last, and left out of `transformers_tuple()`).
    """

    iou_scores: torch.FloatTensor | None = None
    pred_masks: torch.FloatTensor | None = None
    vision_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    vision_attentions: tuple[torch.FloatTensor, ...] | None = None
    mask_decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_embeddings: torch.FloatTensor | None = None

    def transformers_tuple(self) -> tuple:
        """What transformers' `SamModel` returns with `return_dict=False`: the fields it has, those that are set, in
        its order (so `iou_scores, pred_masks = model(..., return_dict=False)` unpacks as there)."""
        return tuple(value for name, value in self.items() if name != "image_embeddings")


@dataclass
class SamHfVisionEncoderOutput(ModelOutput):
    """
    image_embeddings (`torch.FloatTensor` of shape `(B, C, g, g)`): the neck's output.
    hidden_states / attentions: as in `SamHfImageSegmentationOutput`.
    """

    image_embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SamHfVisionModelOutput(ModelOutput):
    """`SamHfVisionModel`'s output, with transformers' `SamVisionModel` field names.

    last_hidden_state (`torch.FloatTensor` of shape `(B, C, g, g)`): the neck's output, the image embeddings.
    hidden_states / attentions: as `vision_hidden_states` / `vision_attentions` in `SamHfImageSegmentationOutput`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
