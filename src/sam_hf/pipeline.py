"""SamHfMaskGenerationPipeline: segment everything through `pipeline(...)`, with Meta's full algorithm.

    from transformers import pipeline
    from sam_hf import SamHfMaskGenerationPipeline
    generator = pipeline("mask-generation", model="path/or/repo", pipeline_class=SamHfMaskGenerationPipeline,
                         points_per_side=32, pred_iou_thresh=0.88)
    records = generator("image.jpg", crop_n_layers=1, output_mode="coco_rle")

Every knob of `SamHfAutomaticMaskGenerator` is accepted at construction or per call; the result is Meta's
list of records per image. transformers' stock argument names are accepted as aliases
(`points_per_crop`, `crops_n_layers`, `crops_nms_thresh`). A progress bar shows on long runs
(`progress=True/False` forces it). The class is not registered for the task: importing sam_hf leaves
`pipeline("mask-generation")` to transformers for every other model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline

from .generation.generator import SamHfAutomaticMaskGenerator
from .generation.options import OPTION_NAMES, GeneratorOptions

# transformers' MaskGenerationPipeline argument names -> ours (Meta's).
STOCK_ALIASES = {"points_per_crop": "points_per_side", "crops_n_layers": "crop_n_layers", "crops_nms_thresh": "crop_nms_thresh"}
# Point batches from which the progress bar shows by default.
PROGRESS_MIN_BATCHES = 16


class SamHfMaskGenerationPipeline(Pipeline):
    """Automatic mask generation: image(s) in, Meta's records out (see `SamHfAutomaticMaskGenerator.generate`)."""

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not callable(getattr(self.model, "get_image_embeddings", None)):
            raise TypeError(f"model must be a SamHfModel (with get_image_embeddings), got {type(self.model).__name__}")

    def _sanitize_parameters(self, **kwargs):
        preprocess, forward = {}, {}
        if "timeout" in kwargs:
            preprocess["timeout"] = kwargs.pop("timeout")
        if "progress" in kwargs:
            forward["progress"] = kwargs.pop("progress")
        for stock, ours in STOCK_ALIASES.items():
            if stock in kwargs:
                if ours in kwargs:
                    raise ValueError(f"give {ours} or its alias {stock}, not both")
                kwargs[ours] = kwargs.pop(stock)
        unknown = sorted(set(kwargs) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(
                f"unknown arguments {unknown} for SamHfMaskGenerationPipeline; expected generator options "
                f"{list(OPTION_NAMES)}, their stock aliases {list(STOCK_ALIASES)}, timeout or progress"
            )
        # Explicit grids and points_per_side exclude each other: the one given last replaces the other.
        if kwargs.get("point_grids") is not None and "points_per_side" not in kwargs:
            kwargs["points_per_side"] = None
        elif kwargs.get("points_per_side") is not None and "point_grids" not in kwargs:
            kwargs["point_grids"] = None
        if kwargs:  # checked now, as the generator will check them: a bad option fails when given, not at the first image
            GeneratorOptions(**kwargs)
        if "progress" in forward and not isinstance(forward["progress"], (bool, type(None))):
            raise TypeError(f"progress must be a bool or None, got {type(forward['progress']).__name__}")
        if preprocess.get("timeout") is not None and (isinstance(preprocess["timeout"], bool) or not isinstance(preprocess["timeout"], (int, float))):
            raise TypeError(f"timeout must be a number of seconds or None, got {type(preprocess['timeout']).__name__}")
        forward.update(kwargs)
        return preprocess, forward, {}

    def preprocess(self, image, timeout: float | None = None) -> dict[str, Any]:
        # in a one-item list: with `batch_size`, transformers' collation lists the items' values as they are (a tensor
        # it would concatenate)
        if isinstance(image, (np.ndarray, torch.Tensor, Image.Image)):
            return {"images": [image]}
        from transformers.image_utils import load_image

        return {"images": [load_image(image, timeout=timeout)]}

    def _forward(self, model_inputs: dict[str, Any], progress: bool | None = None, **options) -> dict[str, Any]:
        """One image's records, or with `batch_size` > 1 (items collated: a list of one-image lists) each image's in turn,
        as a list that transformers' iterator hands out item by item: the generator batches points, not images."""
        images = model_inputs["images"]
        if isinstance(images[0], list):
            return {"records": [self._forward({"images": image}, progress, **options)["records"] for image in images]}
        if options.get("point_grids") is not None:
            options.setdefault("points_per_side", None)  # explicit grids replace the default 32 x 32
        elif "point_grids" in options:
            del options["point_grids"]
        generator = SamHfAutomaticMaskGenerator(self.model, self.image_processor, **options)
        if progress is None:
            per_batch = generator.points_per_batch
            batches = sum(4**layer * -(-len(grid) // per_batch) for layer, grid in enumerate(generator.point_grids[: generator.crop_n_layers + 1]))
            progress = batches >= PROGRESS_MIN_BATCHES
        return {"records": generator.generate(images[0], progress=progress)}

    def postprocess(self, model_outputs: dict[str, Any]) -> list[dict[str, Any]]:
        return model_outputs["records"]
