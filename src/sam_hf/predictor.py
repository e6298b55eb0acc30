"""SamHfPredictor: Meta's `SamPredictor` contract over `SamHfModel` (set the image once, prompt many times).

    predictor = SamHfPredictor(model, processor)
    predictor.set_image(image)                                   # (H, W, 3) uint8 RGB, as Meta
    masks, scores, low_res = predictor.predict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]))
    masks, scores, _ = predictor.predict(point_coords=..., point_labels=..., mask_input=low_res[None, scores.argmax()])

Same names, shapes and frames as Meta's: `predict` takes prompts in the original image frame and returns
numpy; `predict_torch` takes batched torch prompts already in the model-input frame (use
`predictor.transform.apply_coords_torch` / `apply_boxes_torch`, Meta's `ResizeLongestSide` interface).
"""

from __future__ import annotations

import numpy as np
import torch

from .modeling.module_calls import weights_readable
from .processing.image_processing import SamHfImageProcessor, normalize_and_pad
from .processing.images import to_rgb_uint8
from .processing.masks import post_process_masks
from .processing.prompts import COORDINATE_LIMIT
from .processing.processor import SamHfProcessor
from .processing.resize import ResizeLongestSide, get_preprocess_shape, scale_coords
from .real_numbers import is_whole_number

_NOT_SET = "an image must be set with .set_image(...) (or .set_torch_image(...)) before {what}"


def _numpy(value, name: str, kinds: str = "iuf") -> np.ndarray:
    """`value` as a float64 array; its values must be numbers of the numpy kinds `kinds` (i int, u unsigned, f float,
    b bool): not strings, objects or complex numbers, which a cast would turn into numbers silently."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.float().numpy() if value.dtype in (torch.bfloat16, torch.float16) else value.numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}") from err
    if array.dtype.kind not in kinds:
        expected = "a floating-point array (logits)" if kinds == "f" else "a numeric array"
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} of dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must hold finite values, got NaN or inf")
    if np.abs(array).max(initial=0.0) > COORDINATE_LIMIT:
        raise ValueError(f"{name} must hold values within float32's range, got {np.abs(array).max()}")
    return array


def _check_labels(labels, name: str, allowed: tuple[int, ...]) -> None:
    bad = sorted({v for v in np.unique(np.asarray(labels)).tolist() if v not in allowed})
    if bad:
        raise ValueError(f"{name} must hold labels in {set(allowed)}, got {bad}")


def _check_boxes(boxes: np.ndarray, name: str) -> None:
    bad = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if bad.any():
        raise ValueError(f"{name} must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1, got {boxes[bad].tolist()}")


def _check_dtype(tensor: torch.Tensor, name: str, *, floating: bool) -> None:
    """Coordinates and logits are real floating-point tensors, labels integer ones (not bool)."""
    ok = tensor.is_floating_point() if floating else not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)
    if not ok:
        raise TypeError(f"{name} must be {'a floating-point' if floating else 'an integer'} tensor, got dtype {tensor.dtype}")


class ImageNotSetError(ValueError, RuntimeError):
    """predict/predict_torch/get_image_embedding before set_image. A ValueError, and a RuntimeError as in
    Meta's SamPredictor, so code written for either catches it."""


class SamHfPredictor:
    """Computes the image embedding once (`set_image`), then predicts masks for many prompts.

    Args:
        model: a `SamHfModel` (any dtype/device; prompts follow it).
        processor: a `SamHfProcessor` or `SamHfImageProcessor` whose `longest_edge` is the model's input side;
            built from the model's config when None.
    """

    def __init__(self, model, processor: SamHfProcessor | SamHfImageProcessor | None = None) -> None:
        if not callable(getattr(model, "get_image_embeddings", None)) or not hasattr(getattr(model, "config", None), "vision_config"):
            raise TypeError(f"model must be a SamHfModel, got {type(model).__name__}")
        image_size = model.config.vision_config.image_size
        if processor is None:
            processor = SamHfImageProcessor.for_model(model.config)
        if isinstance(processor, SamHfProcessor):
            processor = processor.image_processor
        if not isinstance(processor, SamHfImageProcessor):
            raise TypeError(f"processor must be a SamHfProcessor or SamHfImageProcessor, got {type(processor).__name__}")
        if processor.longest_edge != image_size:
            raise ValueError(
                f"processor.longest_edge ({processor.longest_edge}) must equal the model's input side "
                f"config.vision_config.image_size ({image_size})"
            )
        self.model = model
        self.image_processor = processor
        self.transform = ResizeLongestSide(image_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_size(self) -> int:
        return self.image_processor.longest_edge

    @property
    def low_res_size(self) -> int:
        return self.model.config.prompt_encoder_config.mask_input_size

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features = None
        self.image_cache: dict = {}  # the decoder's prompt-independent work on `features`, kept between predict calls
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def set_image(self, image, image_format: str = "RGB") -> None:
        """Embed `image`: (H, W, 3) uint8 numpy as Meta (any image the image processor takes also works).

        `image_format` "BGR" flips the channels of a (H, W, 3) numpy array first (e.g. from cv2.imread).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if image_format == "BGR":
            if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3):
                got = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
                raise ValueError(f"image_format='BGR' needs an (H, W, 3) numpy array, got {got}")
            image = image[..., ::-1]
        rgb = to_rgb_uint8(image, name="image")  # (H, W, 3) uint8
        resized = self.image_processor.resize(rgb, name="image")  # (h, w, 3) uint8
        chw = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None]  # (1, 3, h, w)
        self.set_torch_image(chw, rgb.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Embed an image already resized (not normalized, not padded): (1, 3, h, w) on 0..255 values,
        its longest side the model's input side; `original_image_size` is (H, W) before resizing."""
        if not isinstance(transformed_image, torch.Tensor):
            raise TypeError(f"transformed_image must be a torch tensor, got {type(transformed_image).__name__}")
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or max(shape[2:]) != self.image_size:
            raise ValueError(
                f"transformed_image must be (1, 3, h, w) with max(h, w) = {self.image_size}, got shape {shape}"
            )
        if not (isinstance(original_image_size, (tuple, list, torch.Size, np.ndarray)) and len(original_image_size) == 2
                and all(is_whole_number(v) and v >= 1 for v in original_image_size)):
            raise ValueError(f"original_image_size must be (H, W) of positive ints, got {original_image_size!r}")
        original = (int(original_image_size[0]), int(original_image_size[1]))
        expected = get_preprocess_shape(*original, self.image_size)
        if expected != shape[2:]:
            raise ValueError(
                f"transformed_image (h, w) = {shape[2:]} is not original_image_size {original} resized to "
                f"longest side {self.image_size}, which gives {expected}"
            )
        self.reset_image()
        pixel_values = normalize_and_pad(
            transformed_image.to(self.device), pad_size=self.image_size,
            pixel_mean=self.image_processor.pixel_mean, pixel_std=self.image_processor.pixel_std,
        )  # (1, 3, S, S) float32
        self.features = self.model.get_image_embeddings(pixel_values.to(self.model.dtype))  # (1, C, g, g)
        self.original_size = original
        self.input_size = shape[2:]
        self._prepare_image_cache()
        self.is_image_set = True

    def _prepare_image_cache(self) -> None:
        """The decoder's prompt-independent work on the new embeddings, made now, while the image is set: one decoder
        call on a point at the image's centre (its result dropped) fills `image_cache`, so that every click, the first
        one too, only does its own prompt's work (ViT-B, two Zen 4 cores, fp32: about 33 ms here, next to seconds for
        the embedding, against a first click 16 ms slower than the next ones). Skipped where the decoder's layers are
        wrapped (adapters, hooks: `modeling/module_calls.py`), whose calls keep nothing across calls."""
        if not weights_readable(self.model.mask_decoder):
            return
        height, width = self.input_size
        point = torch.tensor([[[[width / 2, height / 2]]]], dtype=torch.float32, device=self.device)  # (1, 1, 1, 2)
        label = torch.ones(1, 1, 1, dtype=torch.int64, device=self.device)
        self.model(image_embeddings=self.features, input_points=point, input_labels=label, multimask_output=False,
                   image_cache=self.image_cache)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prompts in the original image frame -> (masks (M, H, W), scores (M,), low-res logits (M, L, L)).

        point_coords (N, 2) x, y pixels with point_labels (N,) in {1, 0, -1}; box (4,) x0, y0, x1, y1;
        mask_input (1, L, L) low-res logits, e.g. one of a previous call's. Masks are bool, or float logits
        with `return_logits`. M = 3 with `multimask_output`, else 1.
        """
        if not self.is_image_set:
            raise ImageNotSetError(_NOT_SET.format(what="predict"))
        if (point_coords is None) != (point_labels is None):
            given = "point_coords" if point_labels is None else "point_labels"
            raise ValueError(f"{given} was given without its partner: pass point_coords and point_labels together")
        coords = labels = boxes = masks = None
        if point_coords is not None:
            points = _numpy(point_coords, "point_coords")
            if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
                raise ValueError(f"point_coords must be (N, 2) x, y with N >= 1, got shape {points.shape}")
            label_values = _numpy(point_labels, "point_labels")
            if label_values.shape != (len(points),):
                raise ValueError(f"point_labels must be ({len(points)},), one per point, got shape {label_values.shape}")
            _check_labels(label_values, "point_labels", (1, 0, -1))
            scaled = scale_coords(points, self.original_size, self.image_size)  # (N, 2) float64
            coords = torch.as_tensor(scaled, dtype=torch.float32, device=self.device)[None]  # (1, N, 2)
            labels = torch.as_tensor(label_values, dtype=torch.int64, device=self.device)[None]  # (1, N)
        if box is not None:
            box_values = _numpy(box, "box")
            if box_values.shape not in ((4,), (1, 4)):
                raise ValueError(f"box must be (4,) x0, y0, x1, y1, got shape {box_values.shape}")
            box_values = box_values.reshape(1, 4)  # (1, 4)
            _check_boxes(box_values, "box")
            scaled = scale_coords(box_values.reshape(-1, 2, 2), self.original_size, self.image_size)  # (1, 2, 2)
            boxes = torch.as_tensor(scaled.reshape(1, 4), dtype=torch.float32, device=self.device)  # (1, 4)
        if mask_input is not None:
            size = self.low_res_size
            mask_values = _numpy(mask_input, "mask_input", kinds="f")  # logits, as a previous call returned them
            if mask_values.shape != (1, size, size):
                raise ValueError(f"mask_input must be (1, {size}, {size}) low-res logits, got shape {mask_values.shape}")
            masks = torch.as_tensor(mask_values, dtype=torch.float32, device=self.device)[None]  # (1, 1, L, L)
        out_masks, scores, low_res = self.predict_torch(coords, labels, boxes, masks, multimask_output, return_logits)
        return (
            out_masks[0].cpu().numpy(),  # (M, H, W) bool, or float32 logits
            scores[0].detach().float().cpu().numpy(),  # (M,)
            low_res[0].detach().float().cpu().numpy(),  # (M, L, L)
        )

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts in the model-input frame -> (masks (P, M, H, W), iou (P, M), low-res (P, M, L, L)).

        point_coords (P, N, 2), point_labels (P, N) in {1, 0, -1} (or -10 for a padding slot), boxes (P, 4),
        mask_input (P, 1, L, L). Masks are at the original size: bool, or float32 logits with `return_logits`.
        """
        if not self.is_image_set:
            raise ImageNotSetError(_NOT_SET.format(what="predict_torch"))
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together (or both None)")
        for name, value in (("multimask_output", multimask_output), ("return_logits", return_logits)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        multimask_output, return_logits = bool(multimask_output), bool(return_logits)
        counts = {}
        if point_coords is not None:
            if not isinstance(point_coords, torch.Tensor) or point_coords.ndim != 3 or point_coords.shape[-1] != 2:
                raise ValueError(f"point_coords must be a (P, N, 2) tensor, got {_shape(point_coords)}")
            if not isinstance(point_labels, torch.Tensor) or tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
                raise ValueError(f"point_labels must be a {tuple(point_coords.shape[:2])} tensor (P, N), got {_shape(point_labels)}")
            _check_dtype(point_coords, "point_coords", floating=True)
            _check_dtype(point_labels, "point_labels", floating=False)
            if not torch.isfinite(point_coords).all():
                raise ValueError("point_coords must hold finite values, got NaN or inf")
            _check_labels(point_labels.cpu(), "point_labels", (1, 0, -1, -10))
            counts["point_coords"] = point_coords.shape[0]
        if boxes is not None:
            if not isinstance(boxes, torch.Tensor) or boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be a (P, 4) tensor, got {_shape(boxes)}")
            _check_dtype(boxes, "boxes", floating=True)
            if not torch.isfinite(boxes).all():
                raise ValueError("boxes must hold finite values, got NaN or inf")
            _check_boxes(boxes.detach().cpu().numpy(), "boxes")
            counts["boxes"] = boxes.shape[0]
        if mask_input is not None:
            size = self.low_res_size
            if not isinstance(mask_input, torch.Tensor) or mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != (1, size, size):
                raise ValueError(f"mask_input must be a (P, 1, {size}, {size}) tensor, got {_shape(mask_input)}")
            _check_dtype(mask_input, "mask_input", floating=True)
            counts["mask_input"] = mask_input.shape[0]
        if len(set(counts.values())) > 1:
            raise ValueError(f"the prompt count P must agree across inputs, got {counts}")

        outputs = self.model(
            image_embeddings=self.features,
            input_points=None if point_coords is None else point_coords.to(self.device, torch.float32)[None],  # (1, P, N, 2)
            input_labels=None if point_labels is None else point_labels.to(self.device, torch.int64)[None],  # (1, P, N)
            input_boxes=None if boxes is None else boxes.to(self.device, torch.float32)[None],  # (1, P, 4)
            input_masks=None if mask_input is None else mask_input.to(self.device, self.model.dtype).reshape(1, -1, size, size),  # (1, P, L, L)
            multimask_output=multimask_output,
            image_cache=self.image_cache,
        )
        low_res = outputs.pred_masks[0]  # (P, M, L, L)
        iou = outputs.iou_scores[0]  # (P, M)
        masks = post_process_masks(
            [low_res], [self.original_size], [self.input_size], pad_size=self.image_size,
            mask_threshold=getattr(self.model, "mask_threshold", 0.0), binarize=not return_logits,
        )[0]  # (P, M, H, W)
        return masks, iou, low_res

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding, (1, C, g, g)."""
        if not self.is_image_set:
            raise ImageNotSetError(_NOT_SET.format(what="get_image_embedding"))
        return self.features


def _shape(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__
