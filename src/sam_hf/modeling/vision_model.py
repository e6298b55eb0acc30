"""SamHfVisionModel: the image encoder alone, as transformers' `SamVisionModel` (image features, a backbone).

It holds the `vision_encoder` of `SamHfModel` under the same weight names, so a whole SAM checkpoint (sam_hf's, or
transformers' `facebook/sam-vit-*`) loads into it: the prompt encoder's and mask decoder's weights are left out
unread, and the config's `vision_config` is taken. It runs the same encoder paths (compiled attention kernel on
CPUs, kept workspaces), and returns the image embeddings as `last_hidden_state`.
"""

from __future__ import annotations

import torch

from ..configuration import SamHfVisionConfig
from .compile_support import eager_on_cpu_inference
from .image_encoder import SamHfVisionEncoder
from .outputs import SamHfVisionModelOutput
from .sam import SamHfPreTrainedModel


class SamHfVisionModel(SamHfPreTrainedModel):
    """pixel_values (B, 3, S, S) -> image embeddings (B, C, g, g) (`last_hidden_state`)."""

    config_class = SamHfVisionConfig
    config: SamHfVisionConfig
    # a whole SAM checkpoint loads into the encoder alone: the other parts' weights are not read
    _keys_to_ignore_on_load_unexpected = [r"^(prompt_encoder|mask_decoder|shared_image_embedding)\."]

    def __init__(self, config: SamHfVisionConfig) -> None:
        if getattr(config, "model_type", None) != SamHfVisionConfig.model_type:  # by type name: remote code has its own class
            raise TypeError(f"config must be a SamHfVisionConfig, got {type(config).__name__}; the vision_config of a "
                            "SamHfConfig is one, and from_pretrained reads it from a whole SAM folder")
        super().__init__(config)
        self.vision_encoder = SamHfVisionEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.vision_encoder.patch_embed

    @eager_on_cpu_inference
    def forward(self, pixel_values: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs) -> SamHfVisionModelOutput | tuple:
        """pixel_values (B, 3, S, S), normalised and padded as the processor makes them -> `SamHfVisionModelOutput`
        (with `return_dict=False` the tuple of its fields that are set, as transformers')."""
        if kwargs:
            raise TypeError(f"SamHfVisionModel.forward got unexpected arguments {sorted(kwargs)}")
        if pixel_values is None:
            raise ValueError("pixel_values must be given, got None")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        embeddings, hidden, attentions = self.vision_encoder.encode(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        output = SamHfVisionModelOutput(last_hidden_state=embeddings, hidden_states=hidden, attentions=attentions)
        return output if return_dict else output.to_tuple()
