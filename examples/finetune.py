#!/usr/bin/env python
"""Fine-tune (or train from scratch) a SamHf model on an instance-segmentation dataset with Accelerate.

    python examples/finetune.py --synthetic 512 --config_variant tiny --max_train_steps 200 --output_dir out
    accelerate launch --num_processes 2 examples/finetune.py ...   # same script, one process per GPU
    ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2 examples/finetune.py ...   # two CPU processes
    python examples/finetune.py --dataset_path my_ds --mask_column objects.segmentation \
        --model_name_or_path path/to/sam-hf-vit-base --trainable decoder --output_dir out

The dataset needs an image column and one or more instance-mask columns: lists of mask images, COCO RLEs
or COCO polygons, or one instance-id image (see `sam_hf.training.decode_instance_masks`). Prompts are
simulated from the masks as in the SAM paper (points, jittered boxes, corrective clicks with the previous
logits fed back) and the loss is the paper's (focal : dice = 20 : 1 plus IoU MSE). Only sam_hf's public
API is used: SamHfModel, SamHfProcessor, sam_hf.training and sam_hf.hub.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shlex
import sys

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from transformers import get_scheduler

from sam_hf import SamHfConfig, SamHfImageProcessor, SamHfModel, SamHfProcessor, config_for_variant
from sam_hf.hub import training_model_card
from sam_hf.training import (
    PromptSimulationConfig,
    SamHfLoss,
    SamHfSegmentationCollator,
    build_synthetic_dataset,
    deepen_vision_encoder,
    evaluate_batch,
    resize_image_size,
    simulated_prompt_step,
)

logger = logging.getLogger("finetune")
TRAINABLE = {"decoder": ("mask_decoder",), "prompt_decoder": ("prompt_encoder", "mask_decoder"), "all": None}
UNLOGGED_FILE = "unlogged_losses_{}.json"  # in each step_N folder, one per process index (save_checkpoint)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data = p.add_argument_group("data")
    data.add_argument("--dataset_name", help="a dataset name for datasets.load_dataset")
    data.add_argument("--dataset_config_name")
    data.add_argument("--dataset_path", help="a folder written by Dataset(Dict).save_to_disk")
    data.add_argument("--synthetic", type=int, help="build a synthetic dataset of this many training images")
    data.add_argument("--synthetic_eval", type=int, default=64, help="held-out synthetic images (another seed)")
    data.add_argument("--synthetic_image_size", type=int, nargs=2, default=[192, 320], metavar=("MIN", "MAX"))
    data.add_argument("--synthetic_seed", type=int, default=0)
    data.add_argument("--train_split", default="train")
    data.add_argument("--eval_split", help="default: 'validation' or 'test' if present, else --eval_fraction of train")
    data.add_argument("--eval_fraction", type=float, default=0.05)
    data.add_argument("--image_column", default="image")
    data.add_argument("--mask_column", nargs="+", default=["masks"], help="instance-mask column(s); dots reach nested fields")
    data.add_argument("--max_train_samples", type=int)
    data.add_argument("--max_eval_samples", type=int)
    data.add_argument("--max_instances", type=int, default=32, help="instances kept per image (largest first)")
    model = p.add_argument_group("model")
    model.add_argument("--model_name_or_path", help="a saved SamHf model folder or Hub id")
    model.add_argument("--config_variant", choices=["tiny", "vit_b", "vit_l", "vit_h"], help="train this preset from scratch")
    model.add_argument("--image_size", type=int,
                       help="input side (custom config, or override of the variant); with --model_name_or_path the loaded "
                            "model is moved to this side (sam_hf.training.resize_image_size: same patches, finer grid)")
    model.add_argument("--patch_size", type=int, help="patch side of the ViT (the embedding grid is image_size / patch_size)")
    model.add_argument("--vision_hidden_size", type=int)
    model.add_argument("--vision_layers", type=int)
    model.add_argument("--vision_heads", type=int)
    model.add_argument("--window_size", type=int)
    model.add_argument("--global_attn_indexes", type=int, nargs="*")
    model.add_argument("--prompt_dim", type=int, help="width of prompts, decoder and encoder output")
    model.add_argument("--decoder_mlp_dim", type=int)
    model.add_argument("--decoder_heads", type=int)
    model.add_argument("--init", choices=["hf", "fan_in"], default="hf",
                       help="from scratch: transformers' N(0, 0.02) (hf) or N(0, 1/fan_in) weights (fan_in; see init_from_scratch)")
    model.add_argument("--add_vision_layers", type=int,
                       help="append this many identity-initialized global-attention ViT layers to the loaded model "
                            "(sam_hf.training.deepen_vision_encoder: same outputs at step 0, more capacity)")
    model.add_argument("--trainable", choices=sorted(TRAINABLE), help="default: decoder when fine-tuning, all from scratch")
    model.add_argument("--gradient_checkpointing", type=int, default=0, metavar="N",
                       help="recompute every N-th ViT layer's activations in the backward pass; 0: off. Only where the encoder "
                            "trains (ViT-B, one image, fp32, N=1: peak 4.4 -> 2.3 GB, each step 16%% longer)")
    train = p.add_argument_group("training")
    train.add_argument("--output_dir", required=True)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--per_device_train_batch_size", type=int, default=4)
    train.add_argument("--per_device_eval_batch_size", type=int, default=4)
    train.add_argument("--learning_rate", type=float, default=1e-4)
    train.add_argument("--weight_decay", type=float, default=0.01)
    train.add_argument("--max_grad_norm", type=float, default=1.0)
    train.add_argument("--num_train_epochs", type=int, default=1)
    train.add_argument("--max_train_steps", type=int,
                       help="overrides --num_train_epochs; 0: no training, only evaluate and save the loaded model "
                            "(after --image_size / --add_vision_layers)")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--lr_scheduler_type", default="cosine")
    train.add_argument("--num_warmup_steps", type=int, default=0)
    train.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], help="default: accelerate's config")
    train.add_argument("--max_prompts_per_image", type=int, default=16)
    train.add_argument("--point_probability", type=float, default=0.5)
    train.add_argument("--max_refinement_rounds", type=int, default=4)
    train.add_argument("--focal_weight", type=float, default=20.0)
    train.add_argument("--focal_alpha", type=float, default=0.25, help="focal foreground weight (< 0: none)")
    train.add_argument("--focal_gamma", type=float, default=2.0, help="focal exponent (0 with alpha < 0: plain BCE)")
    train.add_argument("--dice_weight", type=float, default=1.0)
    train.add_argument("--iou_weight", type=float, default=1.0)
    train.add_argument("--logging_steps", type=int, default=10)
    train.add_argument("--eval_steps", type=int, help="evaluate every N optimizer steps (and at the end)")
    train.add_argument("--checkpointing_steps", type=int, help="save_state every N optimizer steps")
    train.add_argument("--resume_from_checkpoint", help="a step_N folder, or 'latest' in --output_dir")
    train.add_argument("--stop_after_steps", type=int, help="stop this run after N steps (checkpointed), e.g. preemptible jobs")
    train.add_argument("--report_to", default="none", help="accelerate tracker(s): tensorboard, wandb, all, none")
    train.add_argument("--push_to_hub", action="store_true")
    train.add_argument("--hub_model_id")
    train.add_argument("--model_name", help="name in the model card (default: output folder name)")
    args = p.parse_args(argv)
    sources = [args.dataset_name, args.dataset_path, args.synthetic]
    if sum(s is not None for s in sources) != 1:
        p.error("give exactly one of --dataset_name, --dataset_path and --synthetic")
    if (args.model_name_or_path is None) == (args.config_variant is None and args.vision_layers is None):
        p.error("give --model_name_or_path, or --config_variant / a custom config (--vision_layers ...)")
    if args.model_name_or_path is not None:
        fixed = [f"--{name}" for name in ("patch_size", "vision_hidden_size", "vision_heads", "window_size", "global_attn_indexes",
                                          "prompt_dim", "decoder_mlp_dim", "decoder_heads") if getattr(args, name) is not None]
        if fixed:
            p.error(f"{', '.join(fixed)} shape(s) a model built from scratch; --model_name_or_path loads one, got both")
    if args.add_vision_layers is not None and (args.model_name_or_path is None or args.add_vision_layers < 1):
        p.error(f"--add_vision_layers needs --model_name_or_path and a count >= 1, got {args.add_vision_layers}")
    if args.max_train_steps is not None and (args.max_train_steps < 0 or args.max_train_steps == 0 and args.model_name_or_path is None):
        p.error(f"--max_train_steps must be >= 1, or 0 (no training) with --model_name_or_path, got {args.max_train_steps}")
    return args


def save_checkpoint(accelerator, model, processor, path: str, *, unlogged: list[list[float]]) -> None:
    """`save_state` (weights, optimizer, scheduler, random states: exact resume), plus the model's config and the
    processor, so that the folder also loads as a model: `SamHfModel.from_pretrained(path)` (accelerate writes
    the weights as model.safetensors with the model's own key names).

    `unlogged` is this process's [loss, mask_iou] per micro-batch since the last training-loss record; every
    process writes its own (the record averages over processes), so that the first record after a resume
    averages the same micro-batches as in a run that was not interrupted (`load_unlogged`)."""
    accelerator.save_state(path)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).config.save_pretrained(path)
        processor.save_pretrained(path)
    os.makedirs(path, exist_ok=True)
    record = {"process_index": accelerator.process_index, "num_processes": accelerator.num_processes, "unlogged": unlogged}
    with open(os.path.join(path, UNLOGGED_FILE.format(accelerator.process_index)), "w") as f:
        json.dump(record, f)


def load_unlogged(accelerator, path: str) -> list[list[float]]:
    """This process's [loss, mask_iou] pairs that `save_checkpoint` wrote to `path` and no record had logged yet.
    A checkpoint without them (written before they were saved) resumes with none, as it did then: the first
    record after the resume averages only the micro-batches since the resume, which this says."""
    file = os.path.join(path, UNLOGGED_FILE.format(accelerator.process_index))
    if not os.path.exists(file):
        logger.warning(f"{path} holds no {os.path.basename(file)} (a checkpoint from before the unlogged training losses "
                       "were saved, or from fewer processes): the first loss record after this resume averages only the "
                       "micro-batches since the resume, not all of those since the previous record")
        return []
    with open(file) as f:
        record = json.load(f)
    if record["num_processes"] != accelerator.num_processes:
        logger.warning(f"{file} was written by process {record['process_index']} of {record['num_processes']}, resumed "
                       f"on {accelerator.num_processes} processes: the first loss record after this resume mixes the two")
    return [[float(loss), float(iou)] for loss, iou in record["unlogged"]]


def build_config(args) -> SamHfConfig:
    vision = {k: v for k, v in dict(hidden_size=args.vision_hidden_size, num_hidden_layers=args.vision_layers,
                                    num_attention_heads=args.vision_heads, window_size=args.window_size,
                                    global_attn_indexes=args.global_attn_indexes).items() if v is not None}
    if args.patch_size is not None:
        vision["patch_size"] = args.patch_size
    if args.config_variant is not None and args.prompt_dim is None and args.decoder_mlp_dim is None and args.patch_size is None:
        return config_for_variant(args.config_variant, image_size=args.image_size, **vision)
    base = config_for_variant(args.config_variant or "tiny")
    image_size = args.image_size or base.vision_config.image_size
    dim = args.prompt_dim or base.prompt_encoder_config.hidden_size
    vision = dict(base.vision_config.to_dict(), **vision, image_size=image_size, output_channels=dim, num_pos_feats=dim // 2)
    if args.vision_hidden_size is not None:
        vision.pop("mlp_dim", None)  # derived again from the new width
    decoder = dict(base.mask_decoder_config.to_dict(), hidden_size=dim, iou_head_hidden_dim=dim)
    decoder.update({k: v for k, v in dict(mlp_dim=args.decoder_mlp_dim, num_attention_heads=args.decoder_heads).items() if v})
    prompt = dict(base.prompt_encoder_config.to_dict(), hidden_size=dim, image_size=image_size,
                  patch_size=vision.get("patch_size", base.prompt_encoder_config.patch_size))
    return SamHfConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


@torch.no_grad()
def init_from_scratch(model: torch.nn.Module) -> None:
    """Variance-preserving initialization for training from scratch: every Linear / Conv2d weight ~
    N(0, 1 / fan_in) and every ConvTranspose2d (kernel = stride) ~ N(0, 1 / in_channels), biases 0.

    transformers' default (N(0, 0.02) everywhere) suits wide pretrained-size models; in a narrow model the
    mask logits, a product of several such layers (hypernetwork MLP x upscaled image features), start
    near 1e-4, so sigmoid is 0.5 everywhere, the gradients vanish and training stalls or collapses to
    background. Positional embeddings, LayerNorms and the learned prompt embeddings keep their init.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.ConvTranspose2d):
            torch.nn.init.normal_(module.weight, std=module.in_channels ** -0.5)
        elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            fan_in = module.weight[0].numel()
            torch.nn.init.normal_(module.weight, std=fan_in ** -0.5)
        else:
            continue
        if module.bias is not None:
            module.bias.zero_()


def load_data(args, accelerator):
    import datasets

    with accelerator.main_process_first():
        if args.synthetic is not None:
            size = tuple(args.synthetic_image_size)
            train = build_synthetic_dataset(num_images=args.synthetic, seed=args.synthetic_seed, image_size=size)
            evaluation = build_synthetic_dataset(num_images=args.synthetic_eval, seed=args.synthetic_seed + 10_000, image_size=size)
            return train, evaluation
        if args.dataset_path is not None:
            raw = datasets.load_from_disk(args.dataset_path)
        else:
            raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
    if isinstance(raw, datasets.Dataset):
        raw = datasets.DatasetDict({args.train_split: raw})
    train = raw[args.train_split]
    eval_split = args.eval_split or next((s for s in ("validation", "test") if s in raw), None)
    if eval_split is not None:
        evaluation = raw[eval_split]
    else:
        split = train.train_test_split(test_size=args.eval_fraction, seed=args.seed)
        train, evaluation = split["train"], split["test"]
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    return train, evaluation


def evaluate(model, dataloader, processor, accelerator) -> dict:
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
    for batch in dataloader:
        totals += accelerator.gather_for_metrics(evaluate_batch(model, batch, processor=processor)).sum(0)
    model.train()
    count = max(float(totals[2]), 1.0)
    return {"eval_point_miou": float(totals[0]) / count, "eval_box_miou": float(totals[1]) / count, "eval_instances": int(totals[2])}


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state)
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    if args.model_name_or_path:
        model = SamHfModel.from_pretrained(args.model_name_or_path)
        processor = SamHfProcessor.from_pretrained(args.model_name_or_path)
        if args.add_vision_layers:
            model = deepen_vision_encoder(model, num_layers=args.add_vision_layers)
        if args.image_size is not None and args.image_size != model.config.vision_config.image_size:
            model = resize_image_size(model, image_size=args.image_size)
            old = processor.image_processor
            processor = SamHfProcessor(image_processor=SamHfImageProcessor(
                longest_edge=args.image_size, pixel_mean=old.pixel_mean, pixel_std=old.pixel_std))
    else:
        model = SamHfModel(build_config(args))
        if args.init == "fan_in":
            init_from_scratch(model)
        processor = SamHfProcessor(image_processor=SamHfImageProcessor(longest_edge=model.config.vision_config.image_size))
    trainable = args.trainable or ("decoder" if args.model_name_or_path else "all")
    for name, param in model.named_parameters():
        param.requires_grad = TRAINABLE[trainable] is None or name.startswith(TRAINABLE[trainable])
    train_encoder = TRAINABLE[trainable] is None
    if args.gradient_checkpointing < 0:
        raise ValueError(f"--gradient_checkpointing must be 0 (off) or a positive layer step, got {args.gradient_checkpointing}")
    if args.gradient_checkpointing and train_encoder:
        model.activation_checkpointing_enable(every_n_layers=args.gradient_checkpointing)

    train_data, eval_data = load_data(args, accelerator)
    collate = SamHfSegmentationCollator(processor=processor, image_column=args.image_column,
                                        mask_columns=args.mask_column, max_instances=args.max_instances)
    eval_collate = SamHfSegmentationCollator(processor=processor, image_column=args.image_column, mask_columns=args.mask_column,
                                             max_instances=args.max_instances, keep_original_masks=True)
    train_loader = torch.utils.data.DataLoader(train_data, batch_size=args.per_device_train_batch_size, shuffle=True,
                                               collate_fn=collate, drop_last=True)
    eval_loader = torch.utils.data.DataLoader(eval_data, batch_size=args.per_device_eval_batch_size, collate_fn=eval_collate)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)  # per process, after sharding
    max_steps = args.max_train_steps if args.max_train_steps is not None else args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    # Stepped once per optimizer step on every process, so not wrapped by prepare(); saved with the state.
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=args.num_warmup_steps,
                              num_training_steps=max_steps)
    accelerator.register_for_checkpointing(scheduler)
    if accelerator.is_main_process:
        accelerator.init_trackers("sam_hf_finetune", {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    step, start_epoch, skip_batches, running = 0, 0, 0, []
    if args.resume_from_checkpoint:
        path = args.resume_from_checkpoint
        if path == "latest":
            found = [d for d in os.listdir(args.output_dir) if re.fullmatch(r"step_\d+", d)]
            path = os.path.join(args.output_dir, max(found, key=lambda d: int(d[5:]))) if found else None
        if path is not None:
            accelerator.load_state(path)
            running = load_unlogged(accelerator, path)
            step = int(re.search(r"step_(\d+)", path).group(1))
            start_epoch, skip_batches = step // steps_per_epoch, (step % steps_per_epoch) * args.gradient_accumulation_steps
            logger.info(f"resumed from {path} at step {step} (epoch {start_epoch}, skipping {skip_batches} batches)")

    loss_fn = SamHfLoss(focal_weight=args.focal_weight, dice_weight=args.dice_weight, iou_weight=args.iou_weight,
                        focal_alpha=args.focal_alpha, focal_gamma=args.focal_gamma)
    simulation = PromptSimulationConfig(max_prompts=args.max_prompts_per_image, point_probability=args.point_probability,
                                        max_rounds=args.max_refinement_rounds)
    log_path = os.path.join(args.output_dir, "log.jsonl")
    metrics, micro = {}, 0
    stop_at = min(max_steps, step + args.stop_after_steps) if args.stop_after_steps else max_steps
    model.train()
    for epoch in range(start_epoch, num_epochs):
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, skip_batches) if epoch == start_epoch and skip_batches else train_loader
        for batch in loader:
            # Every random draw of a micro-batch comes from (seed, step, micro-batch, process): resumable exactly.
            generator = torch.Generator().manual_seed(hash((args.seed, step, micro, accelerator.process_index)) % 2**63)
            micro = (micro + 1) % args.gradient_accumulation_steps
            with accelerator.accumulate(model):
                out, info = simulated_prompt_step(model, batch, loss_fn=loss_fn, generator=generator, config=simulation,
                                                  train_encoder=train_encoder)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            running.append([out.loss.item(), out.mask_iou.item()])
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            if step % args.logging_steps == 0 or step == stop_at:
                mean = accelerator.reduce(torch.tensor(running, device=accelerator.device).mean(0), "mean").tolist()
                if step % args.logging_steps == 0:
                    # A stop between two records logs a partial one but keeps its micro-batches for the checkpoint:
                    # the resumed run's next record averages them again, as the uninterrupted run's does.
                    running = []
                record = {"step": step, "epoch": epoch, "loss": mean[0], "train_mask_iou": mean[1], "lr": scheduler.get_last_lr()[0]}
                _log(accelerator, record, log_path)
            if args.eval_steps and step % args.eval_steps == 0 and step < max_steps:
                metrics = evaluate(model, eval_loader, processor, accelerator)
                _log(accelerator, {"step": step, **metrics}, log_path)
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, model, processor, os.path.join(args.output_dir, f"step_{step}"), unlogged=running)
            if step >= stop_at:
                break
        if step >= stop_at:
            break

    if step < max_steps:
        if not (args.checkpointing_steps and step % args.checkpointing_steps == 0):
            save_checkpoint(accelerator, model, processor, os.path.join(args.output_dir, f"step_{step}"), unlogged=running)
        logger.info(f"stopped at step {step} of {max_steps}; continue with --resume_from_checkpoint latest")
        accelerator.end_training()
        return
    metrics = evaluate(model, eval_loader, processor, accelerator)
    _log(accelerator, {"step": step, **metrics}, log_path)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(args.output_dir, processor=processor)
        command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + (argv or sys.argv[1:]))
        card = training_model_card(
            model_name=args.model_name or os.path.basename(os.path.abspath(args.output_dir)), config=unwrapped.config,
            command=command, metrics=metrics, base_model=args.model_name_or_path if args.model_name_or_path and not os.path.isdir(args.model_name_or_path) else None,
            dataset=args.dataset_name or ("synthetic shapes (sam_hf.training.build_synthetic_dataset)" if args.synthetic else args.dataset_path),
            training_steps=step, loss=_describe_loss(args),
            notes="" if step else "No optimizer step was taken (`--max_train_steps 0`): the loaded model was only "
                                  "converted (input size, added layers) and evaluated; the loss above is what training would use.",
        )
        card.save(os.path.join(args.output_dir, "README.md"))
        if args.push_to_hub:
            repo_id = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
            unwrapped.push_to_hub(repo_id)
            processor.push_to_hub(repo_id)
            card.push_to_hub(repo_id)
    accelerator.end_training()


def _describe_loss(args) -> str:
    """The loss of this run in words, for the model card."""
    if args.focal_alpha < 0 and args.focal_gamma == 0:
        pixel = "binary cross-entropy"
    else:
        pixel = f"focal (alpha {args.focal_alpha:g}, gamma {args.focal_gamma:g})"
    if (args.focal_weight, args.dice_weight, args.iou_weight, args.focal_alpha, args.focal_gamma) == (20, 1, 1, 0.25, 2):
        return "the SAM paper's loss (focal : dice = 20 : 1 plus MSE on the predicted IoU)"
    return (f"{args.focal_weight:g} x {pixel} + {args.dice_weight:g} x dice on the mask logits plus "
            f"{args.iou_weight:g} x MSE on the predicted IoU (the paper uses focal : dice = 20 : 1)")


def _log(accelerator, record: dict, path: str) -> None:
    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
    if accelerator.is_main_process:
        logger.info(json.dumps(record))
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
