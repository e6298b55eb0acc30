"""SamHfAutomaticMaskGenerator: every object in an image, from a grid of point prompts.

The steps are Meta's `SamAutomaticMaskGenerator`, with the same knobs, meanings and results:
1. tile the image into crops (layer 0 is the whole image) and embed each crop once;
2. prompt the decoder with batches of grid points (one positive point per prompt, 3 masks each);
3. keep masks by predicted IoU, then by stability (on the upscaled logits), drop masks touching an
   inner crop edge, NMS within the crop by predicted IoU (in a 16-bit dtype, where masks of one object
   often share a predicted IoU, equal ones by stability score: `filters.suppress_duplicates`);
4. NMS across crops preferring smaller crops; optionally remove small holes/islands and NMS again.
Reordered only where the result is the same: the predicted-IoU filter runs before upscaling (the
decoder skips its own 4x mask upscaling for points with no mask above it), so only
the survivors are upscaled (in chunks that bound memory on big images; on a CPU only inside the box where
each can pass a threshold, see upscale.py), and masks stay on the device as run boundaries until a crop is
done (see rle.py); nothing else moves to the host inside the batch loop on other devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ..processing.masks import upscale_and_crop
from ..processing.resize import get_preprocess_shape
from ..processing.thresholds import greater
from .crops import generate_crop_boxes, uncrop_boxes_xyxy, uncrop_points
from .filters import is_box_near_crop_edge, stability_score, suppress_duplicates
from .mask_data import MaskData
from .nms import batched_nms, box_area
from .options import GeneratorOptions
from .postprocess import postprocess_small_regions, to_records
from .upscale import upscale_in_boxes
from .rle import boundaries_to_rles, rle_to_mask, run_boundaries  # noqa: F401 (rle_to_mask: re-export)

# Upscaled float32 logits held at once while filtering a batch (elements): chunks of masks bound memory.
# 4 MiB: far under glibc's mmap threshold, so every chunk reuses warm heap memory (a 128 MiB budget
# page-faulted 1.4 million pages per 1024 x 683 image) and stays near the core's cache between passes.
UPSCALE_BUDGET = 1 << 20
# Bytes of low-res mask logits per decoder call on a CPU: a batch of points goes to the decoder in calls whose masks
# stay under glibc's largest mmap threshold (32 MiB), so each call's masks reuse freed heap memory; a 64-point ViT
# batch's 48 MiB were fresh pages every time (about 12 ms of page faults per call on a Zen 4 core). Each point is
# decoded on its own, so the masks are the same (a predicted IoU may differ in its last bits: token-side products
# of fewer rows may sum in another order); the calls share the image work through `image_cache`.
MASKS_PER_CALL_BUDGET = 12 * 2**20


def _image_processor(model, processor):
    if processor is None:
        from ..processing import SamHfImageProcessor

        return SamHfImageProcessor.for_model(model.config)
    image_processor = getattr(processor, "image_processor", processor)
    for method in ("preprocess", "post_process_masks"):
        if not callable(getattr(image_processor, method, None)):
            raise TypeError(
                f"processor must be a SamHfProcessor or SamHfImageProcessor (with preprocess and post_process_masks), "
                f"got {type(processor).__name__}"
            )
    return image_processor


class SamHfAutomaticMaskGenerator:
    """Segment everything: `generate(image)` returns one record per mask, as Meta's generator does.

    Arguments (keyword-only after the processor) have the meaning and defaults of Meta's
    `SamAutomaticMaskGenerator`; `mask_threshold` binarizes the logits and `multimask_output=False` asks
    one mask per point. `processor` defaults to a `SamHfImageProcessor` sized for the model.
    """

    def __init__(
        self,
        model,
        processor=None,
        *,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: float = 0,
        output_mode: str = "binary_mask",
        mask_threshold: float = 0.0,
        multimask_output: bool = True,
    ) -> None:
        if not (callable(getattr(model, "get_image_embeddings", None)) and hasattr(model, "config")):
            raise TypeError(f"model must be a SamHfModel (with get_image_embeddings), got {type(model).__name__}")
        self.model = model
        self.image_processor = _image_processor(model, processor)
        self.options = GeneratorOptions(
            points_per_side=points_per_side, points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh, crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio, crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            point_grids=point_grids, min_mask_region_area=min_mask_region_area, output_mode=output_mode,
            mask_threshold=mask_threshold, multimask_output=multimask_output,
        )

    def __getattr__(self, name: str) -> Any:
        # Meta's attribute names (generator.pred_iou_thresh, generator.point_grids, ...) read the options.
        options = self.__dict__.get("options")
        if options is not None and name in options.__dataclass_fields__:
            return getattr(options, name if name != "point_grids" else "layer_point_grids")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # Meta's attribute names set the options too, checked as the constructor checks them; explicit point grids
        # and points_per_side replace each other, as in the constructor (exactly one of them)
        options = self.__dict__.get("options")
        if options is None or name not in options.__dataclass_fields__:
            return super().__setattr__(name, value)
        changes = {name: value}
        if name == "point_grids" and value is not None:
            changes["points_per_side"] = None
        elif name == "points_per_side" and value is not None:
            changes["point_grids"] = None
        self.options = dataclasses.replace(options, **changes)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def generate(self, image, *, progress: bool = False) -> list[dict[str, Any]]:
        """Masks of one image (PIL, numpy HWC or torch CHW; see the processor) as a list of Meta's records.

        Each record: `segmentation` ((H, W) bool array, or an RLE dict per `output_mode`), `area` (int),
        `bbox` (XYWH), `predicted_iou`, `point_coords` ([[x, y]]), `stability_score`, `crop_box` (XYWH).
        No mask passing the filters gives an empty list. `progress` shows a progress bar over point batches.
        """
        from ..processing.images import to_rgb_uint8

        rgb = to_rgb_uint8(image, name="image")  # (H, W, 3) uint8
        if not self._fits(*rgb.shape[:2]):
            side = self.model.config.vision_config.image_size
            raise ValueError(f"image: an image of (H, W) = {rgb.shape[:2]} has a side of zero pixels once its longest side is "
                             f"resized to the model's {side}; crop or pad it first")
        data = self._generate_masks(rgb, progress)
        opts = self.options
        if opts.min_mask_region_area > 0:
            data = postprocess_small_regions(data, opts.min_mask_region_area, max(opts.box_nms_thresh, opts.crop_nms_thresh))
        return to_records(data, opts.output_mode)

    def generate_batch(self, images, *, progress: bool = False) -> list[list[dict[str, Any]]]:
        """`generate` for each image of a list; one list of records per image."""
        if not isinstance(images, (list, tuple)):
            raise TypeError(f"images must be a list of images, got {type(images).__name__}")
        return [self.generate(image, progress=progress) for image in images]

    # The steps -------------------------------------------------------------------------------
    def _generate_masks(self, rgb: np.ndarray, progress: bool) -> MaskData:
        orig_size = rgb.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.options.crop_n_layers, self.options.crop_overlap_ratio)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            total = sum(-(-len(self.options.layer_point_grids[layer]) // self.options.points_per_batch) for layer in layer_idxs)
            bar = tqdm(total=total, desc="segment everything", unit="batch")
        data = MaskData()
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
            x0, y0, x1, y1 = crop_box
            if self._fits(y1 - y0, x1 - x0):  # a crop of a very thin image can be thinner than one resized pixel: no mask
                data.cat(self._process_crop(rgb, crop_box, layer_idx, bar))
        if bar is not None:
            bar.close()
        if len(crop_boxes) > 1 and len(data) > 0:
            # Duplicates across crops: prefer the mask from the smaller crop.
            scores = 1 / box_area(data["crop_boxes"])
            keep = batched_nms(data["boxes"].float(), scores, torch.zeros(len(data)), iou_threshold=self.options.crop_nms_thresh)
            data.filter(keep)
        return data.to_numpy()

    def _fits(self, height: int, width: int) -> bool:
        """Whether an image of this size keeps at least one pixel a side once resized to the model's input side."""
        return min(get_preprocess_shape(height, width, self.model.config.vision_config.image_size)) >= 1

    def _process_crop(self, rgb: np.ndarray, crop_box: list[int], layer_idx: int, bar) -> MaskData:
        opts, device = self.options, self.device
        x0, y0, x1, y1 = crop_box
        crop = rgb[y0:y1, x0:x1]  # (h, w, 3)
        inputs = self.image_processor.preprocess(crop, return_tensors="pt")
        embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(device))  # (1, C, g, g)
        crop_h, crop_w = crop.shape[:2]
        resized_h, resized_w = (int(v) for v in inputs["reshaped_input_sizes"][0])
        grid = torch.from_numpy(opts.layer_point_grids[layer_idx]).to(device)  # (K, 2) float64 in [0, 1]
        points = grid * torch.tensor([crop_w, crop_h], dtype=torch.float64, device=device)  # (K, 2) crop pixels
        model_points = points * torch.tensor([resized_w / crop_w, resized_h / crop_h], dtype=torch.float64, device=device)

        batches, runs = [], []
        # the decoder's prompt-independent work on this crop's embeddings, done in the first batch only
        frame = dict(crop_box=crop_box, crop_size=(crop_h, crop_w), resized_size=(resized_h, resized_w), image_size=rgb.shape[:2],
                     image_cache={})
        per_call = self._points_per_call(embeddings)
        for start in range(0, len(points), opts.points_per_batch):
            stop = min(start + opts.points_per_batch, len(points))
            for first in range(start, stop, per_call):
                last = min(first + per_call, stop)
                batch, batch_runs = self._process_batch(embeddings, points[first:last], model_points[first:last], **frame)
                batches.append(batch)
                runs.append(batch_runs)
            if bar is not None:
                bar.update(1)
        data = MaskData()
        for batch in batches:
            data.cat(batch)
        del embeddings, batches

        # Duplicates within the crop, by predicted IoU (bf16 ties by stability); then back to the image frame.
        keep = suppress_duplicates(data["boxes"], data["iou_preds"], data["stability_score"], opts.box_nms_thresh)
        data.filter(keep)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box], dtype=torch.int64, device=device).repeat(len(data), 1)  # (n, 4)
        boundaries = torch.cat([r[0] for r in runs])
        per_mask = torch.cat([r[1] for r in runs])
        data["rles"] = boundaries_to_rles(boundaries, per_mask, rgb.shape[:2], select=keep)
        return data

    def _points_per_call(self, embeddings: torch.Tensor) -> int:
        """Points per decoder call: a whole batch, or on a CPU as many as keep its masks under MASKS_PER_CALL_BUDGET."""
        batch = self.options.points_per_batch
        if embeddings.device.type != "cpu":
            return batch
        masks = self.model.config.mask_decoder_config.num_multimask_outputs if self.options.multimask_output else 1
        side = 4 * embeddings.shape[-1]  # the decoder's low-res masks: 4x the embedding grid
        return max(1, min(batch, MASKS_PER_CALL_BUDGET // (masks * side * side * embeddings.element_size())))

    def _process_batch(self, embeddings, points, model_points, *, crop_box, crop_size, resized_size, image_size, image_cache):
        opts = self.options
        n_points = points.shape[0]
        outputs = self.model(
            image_embeddings=embeddings,
            input_points=model_points[None, :, None, :],  # (1, P, 1, 2)
            input_labels=torch.ones(1, n_points, 1, dtype=torch.int64, device=points.device),  # (1, P, 1)
            multimask_output=opts.multimask_output,
            # exact: masks at or below pred_iou_thresh are dropped next, so they need no upscaling
            mask_iou_threshold=opts.pred_iou_thresh if opts.pred_iou_thresh > 0.0 else None,
            image_cache=image_cache,
        )
        low_res = outputs.pred_masks[0]  # (P, M, L, L) logits
        n_masks = low_res.shape[1]
        iou_preds = outputs.iou_scores[0].flatten(0, 1)  # (P * M,)
        low_res = low_res.flatten(0, 1)  # (P * M, L, L)
        mask_points = points.repeat_interleave(n_masks, dim=0)  # (P * M, 2): each point's masks in a row

        # Predicted IoU does not depend on the upscaling: filter first, upscale only the survivors.
        if opts.pred_iou_thresh > 0.0:
            keep = iou_preds > opts.pred_iou_thresh
            iou_preds, low_res, mask_points = iou_preds[keep], low_res[keep], mask_points[keep]

        device = low_res.device
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        pieces = {
            "iou_preds": [iou_preds[:0]], "points": [mask_points[:0]],
            "stability_score": [torch.zeros(0, device=device)], "boxes": [empty.view(0, 4)],
        }
        runs = [(empty, empty)]
        height, width = image_size
        side = self.image_processor.pad_size if hasattr(self.image_processor, "pad_size") else max(resized_size)
        frame = dict(crop_box=crop_box, crop_size=crop_size, resized_size=resized_size, image_size=image_size, side=int(side))
        in_boxes = self._upscales_in_boxes(device)
        # elements held at once: the masks at the crop's size, or (in boxes) their first upscaling step
        per_mask = resized_size[0] * resized_size[1] if in_boxes else max(crop_size[0] * crop_size[1], int(side) ** 2)
        per_chunk = max(1, UPSCALE_BUDGET // per_mask)
        for start in range(0, len(low_res), per_chunk):
            chunk = slice(start, start + per_chunk)
            step = self._filter_in_boxes if in_boxes else self._filter_dense
            stability, keep, (flat, counts, boxes) = step(low_res[chunk], **frame)
            inner = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, width, height])
            pieces["iou_preds"].append(iou_preds[chunk][keep][inner])
            pieces["points"].append(mask_points[chunk][keep][inner])
            pieces["stability_score"].append(stability[keep][inner])
            pieces["boxes"].append(boxes[inner])
            runs.append((flat[inner.repeat_interleave(counts)], counts[inner]))
        batch = MaskData(**{k: torch.cat(v) for k, v in pieces.items()})
        return batch, (torch.cat([r[0] for r in runs]), torch.cat([r[1] for r in runs]))

    def _upscales_in_boxes(self, device: torch.device) -> bool:
        """On a CPU with sam_hf's own mask post-processing: masks are upscaled only where they can be (upscale.py)."""
        from ..processing import SamHfImageProcessor

        method = getattr(type(self.image_processor), "post_process_masks", None)
        return device.type == "cpu" and method is SamHfImageProcessor.post_process_masks

    def _stable(self, stability: torch.Tensor) -> torch.Tensor:
        if self.options.stability_score_thresh > 0.0:
            return stability >= self.options.stability_score_thresh
        return torch.ones_like(stability, dtype=torch.bool)

    def _filter_dense(self, low_res, *, crop_box, crop_size, resized_size, image_size, side):
        """Low-res logits (n, L, L) -> stability (n,), kept (n,) bool, and the kept masks' run boundaries, counts
        and crop-frame boxes: every mask upscaled to the crop's size (Meta's steps; any device)."""
        opts = self.options
        logits = self.image_processor.post_process_masks(
            low_res[None, :, None], [crop_size], [resized_size], binarize=False
        )[0][:, 0]  # (n, h, w) float32 at the crop's size
        stability = stability_score(logits, opts.mask_threshold, opts.stability_score_offset)
        keep = self._stable(stability)
        masks = greater(logits, opts.mask_threshold)  # (n, h, w) bool: index 1 byte per pixel, not 4
        del logits
        # runs in the image frame and boxes in the crop frame (batched_mask_to_box's), in one pass
        runs = run_boundaries(masks[keep], image_size, offset=(crop_box[0], crop_box[1]), return_boxes=True)
        return stability, keep, runs

    def _filter_in_boxes(self, low_res, *, crop_box, crop_size, resized_size, image_size, side):
        """`_filter_dense`'s results, each mask upscaled to the crop's size only inside the box where it can exceed
        a threshold (see upscale.py); the first upscaling step is post_process_masks' own."""
        opts = self.options
        resized = upscale_and_crop(low_res[:, None].float(), side, *resized_size)[:, 0]  # (n, h, w)
        upscaled = upscale_in_boxes(resized, crop_size, opts.mask_threshold, opts.stability_score_offset)
        stability = torch.tensor([u.high for u in upscaled], dtype=torch.int32) / torch.tensor([u.low for u in upscaled], dtype=torch.int32)
        keep = self._stable(stability)
        empty = torch.zeros(0, dtype=torch.int64)
        flat, counts, boxes = [empty], [], []
        for u in (u for u, k in zip(upscaled, keep.tolist()) if k):
            if u.mask.numel() == 0:
                counts.append(empty.new_zeros(1))
                boxes.append(empty.new_zeros(1, 4))
                continue
            f, c, b = run_boundaries(u.mask[None], image_size, offset=(crop_box[0] + u.x0, crop_box[1] + u.y0), return_boxes=True)
            flat.append(f)
            counts.append(c)
            boxes.append(b + torch.tensor([u.x0, u.y0, u.x0, u.y0]) * (c[:, None] > 0))  # box frame -> crop frame; empty stays 0
        if not counts:
            return stability, keep, (empty, empty, empty.view(0, 4))
        return stability, keep, (torch.cat(flat), torch.cat(counts), torch.cat(boxes))
