"""Mask decoder: output tokens + prompt tokens through the two-way transformer, then mask upscaling,
hypernetwork MLPs (one per mask token) and the IoU head.

The two 2x2 stride-2 transposed convolutions of the upscaling touch disjoint pixels, so each is a plain
matmul per input pixel (C -> 2*2*C'), done channels-last; the first one's pixels are put in raster order by
its LayerNorm, and the second runs per output-row offset, so the hypernetwork products come out as whole rows
of the masks (see `upscaling_linear.py`). In fp32 on CPUs with AVX-512 or AVX2, and in bf16 where the CPU runs oneDNN's bf16
products (AVX512-BF16), where autograd records nothing, the compiled `mask_upscaling` kernel (`sam_hf.kernels`)
does the whole upscaling and hypernetwork product instead, one grid row of one prompt at a time in cache, the rows
spread over the threads.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..configuration import SamHfMaskDecoderConfig
from .autocast import in_own_dtype
from .bf16_compute import fp32_for_bf16
from .compile_support import eager_on_cpu_inference
from .module_calls import when_wrapped
from .persam import on_reference_path, persam_inputs
from .image_cache import cached, call_cache, holding_image_cache, kept
from .layers import SamHfFeedForward, SamHfLayerNorm2d
from .prompt_groups import prompt_group
from .two_way_transformer import SamHfTwoWayTransformer
from .zero_gradients import with_zero_gradients
from .mask_upscaling import SamHfMaskUpscaling


def channels_last_tokens(maps: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """maps (B, C, g, g) + dense (B, P', C, g, g) -> image tokens (B, P', g*g, C), contiguous: one 2-D transposing
    copy per map, about 5x faster than PyTorch's N-dimensional one (one Zen 4 core, a ViT-B image, fp32: 0.6 vs
    3.0 ms). A spatially constant `dense` (the no-mask embedding, expanded) is added per channel after the copy."""
    if torch.compiler.is_compiling():  # traced: one expression (the loop below would fix B and P' in the graph)
        return (maps[:, None] + dense).flatten(-2).transpose(-1, -2).contiguous()
    constant = dense.shape[1] == 1 and dense.stride(-1) == 0 and dense.stride(-2) == 0
    summed = maps[:, None] if constant else maps[:, None] + dense
    flat = summed.flatten(-2)  # (B, P', C, g*g)
    out = flat.new_empty(*flat.shape[:-2], flat.shape[-1], flat.shape[-2], dtype=torch.promote_types(maps.dtype, dense.dtype))
    sources, targets = flat.reshape(-1, *flat.shape[-2:]), out.view(-1, *out.shape[-2:])
    for index in range(sources.shape[0]):  # indexing, not iteration: unbind's views may not be written under autograd
        targets[index].copy_(sources[index].t())
    if constant:
        out += dense[:, :, :, 0, 0].unsqueeze(2)  # (B, 1, 1, C)
    return out


# The logit of every pixel of a mask that `mask_iou_threshold` skipped: empty at any sensible threshold, and
# finite, so that interpolation in post-processing gives no NaN (0 * -inf).
SKIPPED_MASK_LOGIT = -1e4

def _skipped_masks(like: torch.Tensor, shape: tuple[int, ...], out: torch.Tensor | None) -> torch.Tensor:
    """Masks of `shape` all SKIPPED_MASK_LOGIT: `out` filled when given, else a new tensor like `like`."""
    return like.new_full(shape, SKIPPED_MASK_LOGIT) if out is None else out.fill_(SKIPPED_MASK_LOGIT)


class SamHfMaskDecoder(SamHfMaskUpscaling, nn.Module):
    def __init__(self, config: SamHfMaskDecoderConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, hidden)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, hidden)
        self.transformer = SamHfTwoWayTransformer(config)
        self.upscale_conv1 = nn.ConvTranspose2d(hidden, hidden // 4, kernel_size=2, stride=2)
        self.upscale_layer_norm = SamHfLayerNorm2d(hidden // 4, eps=config.layer_norm_eps)
        self.upscale_conv2 = nn.ConvTranspose2d(hidden // 4, hidden // 8, kernel_size=2, stride=2)
        self.output_hypernetworks_mlps = nn.ModuleList(
            SamHfFeedForward(input_dim=hidden, hidden_dim=hidden, output_dim=hidden // 8, num_layers=3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = SamHfFeedForward(
            input_dim=hidden, hidden_dim=config.iou_head_hidden_dim, output_dim=self.num_mask_tokens, num_layers=config.iou_head_depth
        )

    @eager_on_cpu_inference
    @holding_image_cache
    @in_own_dtype
    @fp32_for_bf16(keep_weights=True, kept_inputs=("image_embeddings", "image_pe"))
    @when_wrapped
    def forward(
        self,
        *,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        sparse_valid: torch.Tensor,
        dense_embeddings: torch.Tensor,
        multimask_output: bool,
        output_attentions: bool = False,
        mask_iou_threshold: float | None = None,
        image_cache: dict | None = None,
        attention_similarity: torch.Tensor | None = None,
        target_embedding: torch.Tensor | None = None,
    ):
        """image_embeddings (B, C, g, g), image_pe (C, g, g), sparse (B, P, T, C), sparse_valid (B, P, T),
        dense (B, P or 1, C, g, g) -> masks (B, P, M, 4g, 4g), iou (B, P, M), attention weights.
        Prompts with no IoU prediction above `mask_iou_threshold` (when given) are not upscaled: their masks are
        SKIPPED_MASK_LOGIT everywhere. `image_cache`: a dict kept by the caller across calls on the same embeddings,
        where the prompt-independent work on the image is kept (see `image_cache.py`). `attention_similarity`,
        `target_embedding`: PerSAM's, as transformers takes them (persam.py); a call with either runs the reference
        path, every layer called."""
        batch, prompts, _, channels = sparse_embeddings.shape
        grid = image_embeddings.shape[-1]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])  # (1 + M', C)
        tokens = torch.cat([output_tokens.expand(batch, prompts, -1, -1), sparse_embeddings.to(output_tokens.dtype)], dim=2)
        persam = persam_inputs(attention_similarity, target_embedding, batch=batch, prompts=prompts, tokens=tokens.shape[2],
                               heads=self.transformer.layers[0].cross_attn_token_to_image.num_heads, image_tokens=grid * grid,
                               channels=channels, dtype=tokens.dtype)
        with on_reference_path() if persam is not None else contextlib.nullcontext():  # PerSAM: every layer called (persam.py)
            return self._decode_all(tokens, output_tokens.shape[0], sparse_embeddings, sparse_valid, image_embeddings, image_pe,
                                    dense_embeddings, multimask_output, output_attentions, mask_iou_threshold, image_cache, persam)

    def _decode_all(self, tokens, output_count, sparse_embeddings, sparse_valid, image_embeddings, image_pe, dense_embeddings,
                    multimask_output, output_attentions, mask_iou_threshold, image_cache, persam):
        """`forward` on its tokens (B, P, T, C): the `output_count` output tokens, then the prompts' (`sparse_embeddings`)."""
        batch, prompts, _, channels = tokens.shape
        grid = image_embeddings.shape[-1]
        if persam is not None and persam.target is not None:
            # transformers adds it in place to the tokens, which are also their own positional encoding (persam.py)
            tokens = tokens + persam.target
        token_mask = None  # (B, P, T'), only when some slot is padding (always while torch.compile traces: no data-dependent branch)
        if torch.compiler.is_compiling() or not bool(sparse_valid.all()):
            token_mask = torch.cat([sparse_valid.new_ones(batch, prompts, output_count), sparse_valid], dim=2)

        # prompt-independent projections (of the positional encoding, and of an image side shared by all
        # prompts), computed once for all groups, and with `image_cache` once for all calls on these embeddings
        cache = call_cache(image_cache, image_embeddings, image_pe, self.parameters(), sparse_embeddings, dense_embeddings)
        cache["prompts"] = prompts
        # channels-last once: every image-token op below reads rows of C (a strided (C, g*g) view costs a gather per use)
        constant = dense_embeddings.shape[1] == 1 and dense_embeddings.stride(-1) == 0 and dense_embeddings.stride(-2) == 0
        # a kept cache's work on the image side serves later calls only where that side is the embeddings' own (no mask
        # input): then small calls take it too (`decoder_attention.folds`)
        cache["reuses_image_side"] = constant and kept(cache)
        if constant:
            # the same dense embedding everywhere (no mask input): the image side is prompt-independent
            image = cached(cache, "tokens", lambda: channels_last_tokens(image_embeddings, dense_embeddings), dense_embeddings[:, 0, :, 0, 0])
        else:
            image = channels_last_tokens(image_embeddings, dense_embeddings)  # (B, P or 1, g*g, C)
        pe = cached(cache, "pe", lambda: image_pe.flatten(1).t().to(image.dtype))  # (g*g, C)
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)

        # Prompts are decoded in groups whose per-prompt image tokens stay under the allocator budget:
        # exact, and much faster on CPU than touching fresh half-gigabyte buffers (see prompt_groups.py).
        per_prompt = batch * grid * grid * channels * image.element_size()
        kernel = self.transformer.kernel_for(image, tokens, pe, output_attentions) is not None
        cache["fold_upscaling"] = kernel and mask_iou_threshold is None and self._folds_upscaling(image, prompts, cache)
        cache.pop("upscaling_record", None)  # only this call's groups leave records (a failed call's must not be read)
        # while torch.export traces, one group: a loop over groups would fix P in the exported program
        one_group = output_attentions or torch.compiler.is_exporting() or persam is not None  # PerSAM's inputs span the prompts
        group = prompts if one_group else prompt_group(per_prompt, image.device, kernel=kernel, fold=cache["fold_upscaling"])
        # one image's groups write their masks straight into the output (no concatenation of B x P x M x 4g x 4g logits)
        masks = None
        if not one_group and batch == 1 and group < prompts:
            masks = image.new_empty(batch, prompts, len(range(self.num_mask_tokens)[mask_slice]), 4 * grid, 4 * grid)
        results = [
            self._decode(tokens[:, i : i + group], None if token_mask is None else token_mask[:, i : i + group],
                         image if image.shape[1] == 1 else image[:, i : i + group], pe, mask_slice, output_attentions, cache,
                         mask_iou_threshold, out=None if masks is None else masks[0, i : i + group], persam=persam)
            for i in ([0] if one_group else range(0, prompts, group))
        ]
        if masks is None:
            masks = torch.cat([r[0] for r in results], dim=1) if len(results) > 1 else results[0][0]
        iou_pred = torch.cat([r[1] for r in results], dim=1) if len(results) > 1 else results[0][1]
        return masks, iou_pred, results[0][2]

    def _dropped_hypernetworks_tied(self, iou_pred: torch.Tensor, chosen: range) -> torch.Tensor:
        """`iou_pred`, through which the hypernetwork MLPs whose masks are not returned get zero gradients, as in the
        original (`zero_gradients.py`); where autograd records nothing (every inference call) `iou_pred` itself."""
        if not torch.is_grad_enabled():
            return iou_pred
        dropped = [w for i, mlp in enumerate(self.output_hypernetworks_mlps) if i not in chosen for w in mlp.parameters()]
        return with_zero_gradients(iou_pred, dropped)

    def _decode(self, tokens, token_mask, image, pe, mask_slice, output_attentions, cache, mask_iou_threshold=None, out=None, persam=None):
        """One group of prompts: tokens (B, p, T', C), image (B, p or 1, g*g, C) -> masks, iou, weights; the masks
        written into `out` (B*p, M, 4g, 4g), contiguous, when given."""
        batch, prompts, _, channels = tokens.shape
        grid = int(image.shape[2] ** 0.5)
        chosen = range(self.num_mask_tokens)[mask_slice]
        if mask_iou_threshold is not None and not output_attentions:
            return self._decode_above(tokens, token_mask, image, pe, mask_slice, cache, mask_iou_threshold, out, persam)
        # only the IoU token and the chosen mask tokens are read after the transformer (all of them when the
        # attention weights are returned, which keep their full shape)
        read = list(range(tokens.shape[2])) if output_attentions else [0] + [1 + i for i in chosen]
        tokens, image, weights = self.transformer(tokens, image, pe, token_mask, output_attentions, cache,
                                                  output_tokens=None if output_attentions else read, persam=persam)
        folded = self.folded_operands(cache, image.dtype)
        position = {token: row for row, token in enumerate(read)}  # token index -> row of `tokens`
        iou_pred = self.iou_prediction_head(tokens[:, :, position[0]])[..., mask_slice]  # (B, p, M)
        iou_pred = self._dropped_hypernetworks_tied(iou_pred, chosen)
        hyper_in = torch.stack([self.output_hypernetworks_mlps[i](tokens[:, :, position[1 + i]]) for i in chosen], dim=2)  # (B, p, M, C/8)
        image, hyper_in = image.reshape(batch * prompts, grid * grid, channels), hyper_in.flatten(0, 1)
        if mask_iou_threshold is None:
            masks = self.upscale_masks(image, hyper_in, grid, out=out, folded=folded)
        else:  # with the attention weights asked for: every token went through the final attention
            needed = (iou_pred > mask_iou_threshold).any(-1).flatten()  # (B * p,)
            masks = _skipped_masks(image, (batch * prompts, len(chosen), 4 * grid, 4 * grid), out)
            if bool(needed.any()):
                masks[needed] = self.upscale_masks(image[needed], hyper_in[needed], grid)
        return masks.view(batch, prompts, len(chosen), 4 * grid, 4 * grid), iou_pred, weights

    def _decode_above(self, tokens, token_mask, image, pe, mask_slice, cache, mask_iou_threshold, out=None, persam=None):
        """`_decode` for prompts of which only those with some IoU prediction above `mask_iou_threshold` need masks:
        the final attention runs for the IoU token of every prompt, then for the chosen mask tokens of those prompts
        only, which alone get hypernetworks and upscaling; the others' masks are SKIPPED_MASK_LOGIT. Exact: the
        final attention and its LayerNorm treat each token of each prompt on its own."""
        batch, prompts, _, channels = tokens.shape
        grid = int(image.shape[2] ** 0.5)
        chosen = range(self.num_mask_tokens)[mask_slice]
        transformer = self.transformer
        # (B, p, T, C), (B, p, HW, C) and the IoU token through the final attention
        queries, image, _, fold, (iou_token, _) = transformer.blocks(tokens, image, pe, token_mask, False, cache, final_rows=slice(0, 1),
                                                                     persam=persam)
        iou_pred = self.iou_prediction_head(iou_token[:, :, 0])[..., mask_slice]  # (B, p, M)
        iou_pred = self._dropped_hypernetworks_tied(iou_pred, chosen)
        needed = (iou_pred > mask_iou_threshold).any(-1).flatten()  # (B * p,)
        masks = _skipped_masks(image, (batch * prompts, len(chosen), 4 * grid, 4 * grid), out)
        if bool(needed.any()):
            # the needed prompts' image tokens are read where they are (a copy costs about a millisecond per ViT prompt)
            rows = [1 + i for i in chosen]
            image = image.reshape(1, batch * prompts, grid * grid, channels)  # (1, B*p, HW, C)
            index = None if bool(needed.all()) else needed.nonzero().squeeze(1)  # (n,)
            pick = (lambda t: t) if index is None else (lambda t: t.index_select(0, index))  # noqa: E731
            queries = pick(queries.reshape(batch * prompts, *queries.shape[2:]))[None, :, rows]  # (1, n, M, C)
            prompt_tokens = pick(tokens.reshape(batch * prompts, *tokens.shape[2:]))[None, :, rows]
            mask_tokens, _ = transformer.final(queries, prompt_tokens, image, pe, False, cache, fold, keys_index=index)
            hyper_in = torch.stack([self.output_hypernetworks_mlps[i](mask_tokens[0, :, k]) for k, i in enumerate(chosen)], dim=1)  # (n, M, C/8)
            if index is None:
                masks = self.upscale_masks(image[0], hyper_in, grid, out=masks)
            else:
                masks[index] = self.upscale_masks(image[0], hyper_in, grid, index=index)
        return masks.view(batch, prompts, len(chosen), 4 * grid, 4 * grid), iou_pred, None
