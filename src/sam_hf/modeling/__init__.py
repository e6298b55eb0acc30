"""SamHf modeling: one file per box of the paper's figure."""

from .mask_decoder import SamHfMaskDecoder
from .outputs import SamHfImageSegmentationOutput, SamHfVisionEncoderOutput, SamHfVisionModelOutput
from .prompt_encoder import SamHfPromptEncoder
from .sam import SamHfModel, SamHfPreTrainedModel
from .image_encoder import SamHfVisionEncoder
from .vision_model import SamHfVisionModel

__all__ = [
    "SamHfImageSegmentationOutput",
    "SamHfMaskDecoder",
    "SamHfModel",
    "SamHfPreTrainedModel",
    "SamHfPromptEncoder",
    "SamHfVisionEncoder",
    "SamHfVisionEncoderOutput",
    "SamHfVisionModel",
    "SamHfVisionModelOutput",
]
