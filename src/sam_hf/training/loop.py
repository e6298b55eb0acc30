"""One training step with simulated interactive prompts, and the evaluation of one batch.

`simulated_prompt_step` follows the paper's interactive training: a first prompt (a point or a jittered box)
for up to `max_prompts` instances per image, then a random number of refinement rounds, each adding a click
from the error region and feeding the previous logits back as the mask prompt. The refinement rounds run
without gradients on the unwrapped model (they only choose the prompts); the loss comes from one final
forward of the (possibly DDP-wrapped) model, so every process calls it exactly once per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import SamHfLoss, SamHfLossOutput
from .metrics import mask_iou
from .prompts import SimulatedPrompts, boxes_from_masks, initial_prompts, interior_points, refine_prompts
from .targets import valid_region


@dataclass(kw_only=True)
class PromptSimulationConfig:
    """How prompts are simulated: see the module docstring. `point_probability` is the chance that a
    step starts from points rather than boxes; `max_rounds` bounds the refinement rounds (uniform in
    0..max_rounds); a round feeds back the mask without a click with `mask_only_probability`."""

    max_prompts: int = 16
    point_probability: float = 0.5
    max_rounds: int = 4
    mask_only_probability: float = 0.2
    box_noise_std: float = 0.1
    box_max_noise: float = 20.0

    def __post_init__(self) -> None:
        if self.max_prompts < 1 or self.max_rounds < 0:
            raise ValueError(f"need max_prompts >= 1 and max_rounds >= 0, got {self.max_prompts} and {self.max_rounds}")
        for name in ("point_probability", "mask_only_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module


def _valid_regions(batch: dict, size: int, device) -> torch.Tensor:
    """(B, S, S) bool: the unpadded part of each image in the model frame."""
    return torch.stack([valid_region(tuple(hw), image_size=size, device=device) for hw in batch["original_sizes"].tolist()])


def select_prompts(gt_masks: torch.Tensor, gt_valid: torch.Tensor, regions: torch.Tensor, *, max_prompts: int,
                   generator: torch.Generator | None = None, shuffle: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets (B, P, S, S) and weights (B, P): up to `max_prompts` valid instances per image.

    Slots past an image's instance count hold its whole valid region (so that prompts can be drawn) with
    weight 0.
    """
    b = gt_masks.shape[0]
    counts = gt_valid.sum(1).tolist()
    p = max(1, min(max_prompts, max(counts)))
    targets = regions[:, None].repeat(1, p, 1, 1)  # (B, P, S, S)
    weights = torch.zeros(b, p, device=gt_masks.device)
    for i, count in enumerate(counts):
        index = gt_valid[i].nonzero().flatten()
        if shuffle:
            index = index[torch.randperm(count, generator=generator, device=generator.device if generator else "cpu").to(index.device)]
        index = index[:p]
        targets[i, : len(index)] = gt_masks[i, index]
        weights[i, : len(index)] = 1.0
    return targets, weights


def model_prompts(prompts: SimulatedPrompts, b: int, p: int) -> dict:
    """Flat (B * P, ...) prompts -> the model's keyword arguments with shapes (B, P, ...)."""
    kwargs = {}
    if prompts.points is not None:
        kwargs["input_points"] = prompts.points.reshape(b, p, -1, 2)  # (B, P, N, 2)
        kwargs["input_labels"] = prompts.labels.reshape(b, p, -1)  # (B, P, N)
    if prompts.boxes is not None:
        kwargs["input_boxes"] = prompts.boxes.reshape(b, p, 4)  # (B, P, 4)
    if prompts.mask_inputs is not None:
        kwargs["input_masks"] = prompts.mask_inputs.reshape(b, p, *prompts.mask_inputs.shape[-2:])  # (B, P, h, w)
    return kwargs


def simulated_prompt_step(
    model: torch.nn.Module,
    batch: dict,
    *,
    loss_fn: SamHfLoss,
    generator: torch.Generator,
    config: PromptSimulationConfig,
    train_encoder: bool = True,
) -> tuple[SamHfLossOutput, dict]:
    """Simulate prompts for a collated batch and return the loss of the final forward and what was drawn."""
    pixel_values = batch["pixel_values"]
    b, size = pixel_values.shape[0], pixel_values.shape[-1]
    regions = _valid_regions(batch, size, pixel_values.device)
    targets, weights = select_prompts(batch["gt_masks"], batch["gt_valid"], regions, max_prompts=config.max_prompts,
                                      generator=generator)
    p = targets.shape[1]
    flat_targets = targets.flatten(0, 1)  # (B * P, S, S)
    flat_regions = regions[:, None].expand(b, p, size, size).flatten(0, 1)  # (B * P, S, S)
    draw = lambda: float(torch.rand((), generator=generator, device=generator.device))  # noqa: E731
    mode = "point" if draw() < config.point_probability else "box"
    prompts = initial_prompts(flat_targets, mode=mode, generator=generator, valid=flat_regions,
                              box_noise_std=config.box_noise_std, box_max_noise=config.box_max_noise)
    rounds = int(torch.randint(0, config.max_rounds + 1, (), generator=generator, device=generator.device))
    embeddings = None
    if rounds > 0 or not train_encoder:
        with torch.no_grad():
            embeddings = _unwrap(model).get_image_embeddings(pixel_values)
    for _ in range(rounds):
        add_point = draw() >= config.mask_only_probability
        with torch.no_grad():
            out = _unwrap(model)(image_embeddings=embeddings, multimask_output=_multimask(prompts),
                                 **model_prompts(prompts, b, p))
        prompts = refine_prompts(prompts, pred_logits=out.pred_masks.flatten(0, 1), iou_scores=out.iou_scores.flatten(0, 1),
                                 target=flat_targets, generator=generator, valid=flat_regions, add_point=add_point)
    inputs = dict(pixel_values=pixel_values) if train_encoder else dict(image_embeddings=embeddings)
    out = model(**inputs, multimask_output=_multimask(prompts), **model_prompts(prompts, b, p))
    loss = loss_fn(out.pred_masks, out.iou_scores, targets, weights=weights)
    return loss, {"mode": mode, "rounds": rounds, "num_points": prompts.num_points, "num_prompts": int(weights.sum())}


def _multimask(prompts: SimulatedPrompts) -> bool:
    """Three candidates only for the ambiguous first prompt: one point, no box, no mask."""
    return prompts.boxes is None and prompts.num_points == 1 and prompts.mask_inputs is None


@torch.no_grad()
def evaluate_batch(model: torch.nn.Module, batch: dict, *, processor, max_prompts: int = 64) -> torch.Tensor:
    """Per image: [sum of single-point IoU, sum of box IoU, number of instances], (B, 3) float64.

    The point is each instance's most interior pixel, the box its tight box (both in the model frame);
    the point prediction is the candidate with the highest predicted IoU. IoU is measured at the original
    resolution against `batch["original_masks"]` after the processor's `post_process_masks`.
    """
    model = _unwrap(model)
    pixel_values = batch["pixel_values"]
    b, size = pixel_values.shape[0], pixel_values.shape[-1]
    regions = _valid_regions(batch, size, pixel_values.device)
    targets, weights = select_prompts(batch["gt_masks"], batch["gt_valid"], regions, max_prompts=max_prompts, shuffle=False)
    p = targets.shape[1]
    flat = targets.flatten(0, 1)  # (B * P, S, S)
    embeddings = model.get_image_embeddings(pixel_values)
    point = model(image_embeddings=embeddings, input_points=interior_points(flat).reshape(b, p, 1, 2),
                  input_labels=torch.ones(b, p, 1, dtype=torch.long, device=flat.device), multimask_output=True)
    box = model(image_embeddings=embeddings, input_boxes=boxes_from_masks(flat).reshape(b, p, 4), multimask_output=False)
    best = point.iou_scores.argmax(-1)[..., None, None, None]  # (B, P, 1, 1, 1)
    point_masks = point.pred_masks.gather(2, best.expand(-1, -1, 1, *point.pred_masks.shape[-2:]))  # (B, P, 1, h, w)
    sizes = (batch["original_sizes"], batch["reshaped_input_sizes"])
    results = torch.zeros(b, 3, dtype=torch.float64)
    for column, logits in ((0, point_masks), (1, box.pred_masks)):
        masks = processor.post_process_masks(logits.float(), *sizes)  # list of (P, 1, H, W)
        for i, (pred, truth) in enumerate(zip(masks, batch["original_masks"])):
            n = int(weights[i].sum())
            if n:
                results[i, column] = mask_iou(pred[:n, 0], truth[:n].to(pred.device)).double().sum()
    results[:, 2] = weights.sum(1).double()
    return results.to(pixel_values.device)
