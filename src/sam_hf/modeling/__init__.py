"""SamHf modeling: one file per box of the paper's figure."""

from .mask_decoder import SamHfMaskDecoder
from .outputs import SamHfImageSegmentationOutput, SamHfVisionEncoderOutput
from .prompt_encoder import SamHfPromptEncoder
from .sam import SamHfModel, SamHfPreTrainedModel
from .image_encoder import SamHfVisionEncoder

__all__ = [
    "SamHfImageSegmentationOutput",
    "SamHfMaskDecoder",
    "SamHfModel",
    "SamHfPreTrainedModel",
    "SamHfPromptEncoder",
    "SamHfVisionEncoder",
    "SamHfVisionEncoderOutput",
]
