"""Model cards for the Hub, generated from the templates in `templates.py` (used by conversion and training).

The YAML header always has `license`, `library_name: transformers`, `pipeline_tag: mask-generation` and tags;
`base_model` and `datasets` when they apply. The body says where the weights come from, the command that
made them, measured numbers, usage and the citation.
"""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from . import templates

BASE_TAGS = ["sam_hf", "segment-anything", "sam", "mask-generation", "vision"]
META_REPOS = {"vit_b": "facebook/sam-vit-base", "vit_l": "facebook/sam-vit-large", "vit_h": "facebook/sam-vit-huge"}


def _check_text(name: str, value) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def describe_config(config) -> str:
    """One Markdown list describing a `SamHfConfig` (sizes, parameter-free)."""
    v, p, d = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    return "\n".join([
        f"- Image encoder: ViT, {v.num_hidden_layers} layers, width {v.hidden_size}, {v.num_attention_heads} heads, "
        f"patch {v.patch_size}, window {v.window_size}, global attention in layers {list(v.global_attn_indexes)}",
        f"- Input: {v.image_size} x {v.image_size} (longest side resized, then padded); embeddings "
        f"{v.output_channels} x {v.image_size // v.patch_size} x {v.image_size // v.patch_size}",
        f"- Prompt encoder width {p.hidden_size}; mask decoder: {d.num_hidden_layers} two-way layers, MLP {d.mlp_dim}, "
        f"{d.num_attention_heads} heads, {d.num_multimask_outputs} multimask outputs",
    ])


def metrics_table(metrics: dict | None) -> str:
    """A Markdown table of numbers, or a line saying there are none yet."""
    if not metrics:
        return "Not measured yet."
    rows = ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        rows.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    return "\n".join(rows)


def _card(data: ModelCardData, body: str) -> ModelCard:
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def training_model_card(
    *,
    model_name: str,
    config,
    command: str,
    metrics: dict | None = None,
    base_model: str | None = None,
    dataset: str | None = None,
    dataset_ids: list[str] | None = None,
    training_steps: int | None = None,
    notes: str = "",
    repo_id: str | None = None,
    license: str = "apache-2.0",
    loss: str | None = None,
) -> ModelCard:
    """Card of a model trained or fine-tuned with `examples/finetune.py`.

    `loss` describes the loss actually used (default: the paper's, focal : dice = 20 : 1 plus IoU MSE).
    """
    _check_text("model_name", model_name)
    _check_text("command", command)
    provenance = f"fine-tuned from `{base_model}`" if base_model else "trained from scratch"
    training = f"With `examples/finetune.py` (Accelerate) on {dataset or 'a custom dataset'}"
    training += f" for {training_steps} optimizer steps" if training_steps else ""
    loss = loss or "the SAM paper's loss (focal : dice = 20 : 1 plus MSE on the predicted IoU)"
    training += (f": {loss} and simulated "
                 "interactive prompts (points, jittered boxes, corrective clicks with the previous logits fed back).")
    if notes:
        training += "\n\n" + notes
    size = config.vision_config.image_size
    data = ModelCardData(license=license, library_name="transformers", pipeline_tag="mask-generation",
                         tags=BASE_TAGS + (["fine-tuned"] if base_model else ["trained-from-scratch"]),
                         base_model=base_model, datasets=dataset_ids or None)
    body = templates.TRAINED.format(
        model_name=model_name, provenance=provenance, architecture=describe_config(config), training=training,
        command=command, results=metrics_table(metrics), citation=templates.CITATION,
        usage=templates.USAGE.format(repo_id=repo_id or model_name, point_x=size // 2, point_y=size // 2),
    )
    return _card(data, body)


def conversion_model_card(
    *,
    variant: str,
    config,
    command: str,
    checkpoint: str | None = None,
    metrics: dict | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """Card of Meta's ViT-B/L/H weights converted to the sam_hf format."""
    if variant not in META_REPOS:
        raise ValueError(f"variant must be one of {sorted(META_REPOS)}, got {variant!r}")
    _check_text("command", command)
    from ..variants import META_CHECKPOINTS

    title = {"vit_b": "ViT-B", "vit_l": "ViT-L", "vit_h": "ViT-H"}[variant]
    name = repo_id or f"sam-hf-{variant.replace('_', '-')}"
    data = ModelCardData(license=license, library_name="transformers", pipeline_tag="mask-generation",
                         tags=BASE_TAGS + ["converted", variant.replace("_", "-")], base_model=META_REPOS[variant])
    body = templates.CONVERTED.format(
        model_name=name, variant_title=title, checkpoint=checkpoint or META_CHECKPOINTS[variant],
        architecture=describe_config(config), command=command, results=metrics_table(metrics),
        usage=templates.USAGE.format(repo_id=name, point_x=450, point_y=600), citation=templates.CITATION,
    )
    return _card(data, body)
