"""sam_hf: Meta's Segment Anything Model as a first-class Hugging Face package.

Importing defines the public names and registers them with transformers' Auto classes
(`AutoConfig`, `AutoModel`, `AutoModelForMaskGeneration`, `AutoImageProcessor`, `AutoProcessor`)
under model_type "sam_hf", and the encoder alone (`SamHfVisionModel`) under "sam_hf_vision_model". It does nothing else.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForMaskGeneration,
    AutoProcessor,
)

from . import allocator, hub, training  # allocator: keep_freed_memory(), which importing does not call
from .checkpoints import convert_meta_state_dict, convert_to_meta_state_dict, infer_meta_config
from .configuration import SamHfConfig, SamHfMaskDecoderConfig, SamHfPromptEncoderConfig, SamHfVisionConfig
from .modeling.layers import clear_workspace
from .modeling import (
    SamHfImageSegmentationOutput,
    SamHfModel,
    SamHfPreTrainedModel,
    SamHfVisionEncoderOutput,
    SamHfVisionModel,
    SamHfVisionModelOutput,
)
from .generation import SamHfAutomaticMaskGenerator
from .pipeline import SamHfMaskGenerationPipeline
from .predictor import ImageNotSetError, SamHfPredictor
from .processing import SamHfImageProcessor, SamHfProcessor, masks_to_low_res, post_process_masks
from .variants import VARIANTS, config_for_variant

__version__ = "0.1.0"

AutoConfig.register(SamHfConfig.model_type, SamHfConfig, exist_ok=True)
AutoModel.register(SamHfConfig, SamHfModel, exist_ok=True)
AutoModelForMaskGeneration.register(SamHfConfig, SamHfModel, exist_ok=True)
AutoImageProcessor.register(SamHfConfig, image_processor_classes={"pil": SamHfImageProcessor, "torchvision": SamHfImageProcessor}, exist_ok=True)
AutoProcessor.register(SamHfConfig, SamHfProcessor, exist_ok=True)
AutoConfig.register(SamHfVisionConfig.model_type, SamHfVisionConfig, exist_ok=True)
AutoModel.register(SamHfVisionConfig, SamHfVisionModel, exist_ok=True)

__all__ = [
    "VARIANTS",
    "ImageNotSetError",
    "SamHfPredictor",
    "masks_to_low_res",
    "post_process_masks",
    "SamHfConfig",
    "SamHfImageProcessor",
    "SamHfAutomaticMaskGenerator",
    "SamHfImageSegmentationOutput",
    "SamHfMaskGenerationPipeline",
    "SamHfMaskDecoderConfig",
    "SamHfModel",
    "SamHfPreTrainedModel",
    "SamHfProcessor",
    "SamHfPromptEncoderConfig",
    "SamHfVisionConfig",
    "SamHfVisionEncoderOutput",
    "SamHfVisionModel",
    "SamHfVisionModelOutput",
    "clear_workspace",
    "config_for_variant",
    "hub",
    "training",
    "convert_meta_state_dict",
    "convert_to_meta_state_dict",
    "infer_meta_config",
]
