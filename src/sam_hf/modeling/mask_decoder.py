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

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import SamHfMaskDecoderConfig
from ..kernels import kernel_for
from .autocast import in_own_dtype
from .bf16_compute import fp32_for_bf16
from .compile_support import eager_on_cpu_inference
from .export_form import convolutions as exports_convolutions
from .module_calls import active as calling_modules, when_wrapped
from .persam import on_reference_path, persam_inputs
from .image_cache import cached, call_cache, holding_image_cache, kept
from .layers import SamHfFeedForward, SamHfLayerNorm2d, linear_activation, records_nothing
from .prompt_groups import prompt_group
from .decoder_attention import folds
from .two_way_transformer import SamHfTwoWayTransformer
from .zero_gradients import with_zero_gradients
from .upscaling_linear import conv_transpose_weight, linear_weights, upscale


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

# Bytes of the mask upscaling's largest temporary per step on CPU: a band of grid rows of one prompt whose
# temporaries stay in the caches (and below glibc's trim threshold); see `SamHfMaskDecoder.upscale_masks`.
_UPSCALE_BAND_BUDGET = 2 * 2**20


def _skipped_masks(like: torch.Tensor, shape: tuple[int, ...], out: torch.Tensor | None) -> torch.Tensor:
    """Masks of `shape` all SKIPPED_MASK_LOGIT: `out` filled when given, else a new tensor like `like`."""
    return like.new_full(shape, SKIPPED_MASK_LOGIT) if out is None else out.fill_(SKIPPED_MASK_LOGIT)


class SamHfMaskDecoder(nn.Module):
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

    def upscale_masks(self, image: torch.Tensor, hyper_in: torch.Tensor, grid: int, out: torch.Tensor | None = None,
                      index: torch.Tensor | None = None, folded: dict | None = None) -> torch.Tensor:
        """image tokens (N, g*g, C) and hypernetwork weights (N, M, C/8) -> mask logits (N, M, 4g, 4g), written into
        `out` (contiguous) when given. With `index` ((n,) int64): hyper_in (n, M, C/8), whose row k meets image
        tokens index[k] (read in place on CPU) -> (n, M, 4g, 4g).

        In fp32 or bf16 on CPU (see `_upscaling_kernel`) the compiled kernel runs it (ViT-B, one Zen 4 core: 9.9 against
        14.4 ms per prompt; two cores 4.8 against 6.9; bf16 on two cores 3.0 against 5.4). Else it runs over blocks whose largest temporary (the
        second upscaling's 16 * C/8 values per image token) stays under a budget: on CPU a band of grid rows of
        one prompt (cache-sized), on an accelerator groups of whole prompts (`prompt_group`). Every pixel depends
        only on its own image token, so this is exact. `folded` (`folded_operands`, for these image tokens as the
        decoder's two-way transformer made them): the kernel takes the first convolution in its folded form.
        """
        # layers wrapped (module_calls.py): Meta's form, every layer called; likewise in ONNX exports (export_form.py)
        if calling_modules() or (torch.compiler.is_exporting() and exports_convolutions()):
            return self._upscale_by_modules(image if index is None else image[index], hyper_in, grid, out)
        if torch.compiler.is_exporting():  # one block of all prompts (the loop below would fix their number in the program)
            masks = self._upscale(image if index is None else image[index], hyper_in, grid, self._linear_weights())
            return masks if out is None else out.copy_(masks)
        module = self._upscaling_kernel(image, hyper_in, out)
        if module is not None:
            out = image.new_empty(hyper_in.shape[0], hyper_in.shape[1], 4 * grid, 4 * grid) if out is None else out
            if folded is None:
                module.upscale_masks(image, index, hyper_in.float().contiguous(), *self._kernel_weights(), out)
            else:
                _, _, norm_weight, norm_bias, eps, conv2, bias2 = self._kernel_weights()
                module.upscale_masks_folded(index, hyper_in.float().contiguous(), folded["shared"], folded["mix"], folded["first"],
                                            folded["second"], folded["stats1"], folded["stats2"], folded["terms"], folded["bias1"],
                                            norm_weight, norm_bias, eps, conv2, bias2, out)
            return out
        batch, masks = hyper_in.shape[:2]
        per_row = 16 * grid * (image.shape[-1] // 8) * image.element_size()  # bytes of one grid row's largest temporary
        rows = _UPSCALE_BAND_BUDGET // per_row if image.device.type == "cpu" else prompt_group(per_row * grid, image.device) * grid
        rows = max(1, rows)
        out = image.new_empty(batch, masks, 4 * grid, 4 * grid) if out is None else out
        weights = self._linear_weights()  # once per call rather than once per block
        if rows >= grid:  # whole prompts per block
            group = rows // grid
            for n in range(0, batch, group):
                tokens = image[n : n + group] if index is None else image[index[n : n + group]]
                out[n : n + group] = self._upscale(tokens, hyper_in[n : n + group], grid, weights)
        else:  # bands of one prompt
            for n in range(batch):
                k = n if index is None else int(index[n])
                for i in range(0, grid, rows):
                    band = image[k : k + 1, i * grid : (i + rows) * grid]  # (1, R*g, C)
                    out[n : n + 1, :, 4 * i : 4 * (i + rows)] = self._upscale(band, hyper_in[n : n + 1], grid, weights)
        return out

    def _upscale_by_modules(self, image: torch.Tensor, hyper_in: torch.Tensor, grid: int, out: torch.Tensor | None) -> torch.Tensor:
        """`upscale_masks` as Meta's decoder computes it: image tokens (N, g*g, C) -> (N, C, g, g) maps through both
        transposed convolutions, the LayerNorm and the GELUs, then the hypernetwork product -> (N, M, 4g, 4g)."""
        maps = image.transpose(1, 2).reshape(image.shape[0], image.shape[2], grid, grid)
        upscaled = F.gelu(self.upscale_conv2(F.gelu(self.upscale_layer_norm(self.upscale_conv1(maps)))))  # (N, C/8, 4g, 4g)
        masks = (hyper_in @ upscaled.flatten(2)).view(hyper_in.shape[0], hyper_in.shape[1], 4 * grid, 4 * grid)
        return masks if out is None else out.copy_(masks)

    def _upscaling_kernel(self, image: torch.Tensor, hyper_in: torch.Tensor, out: torch.Tensor | None):
        """The compiled `mask_upscaling` module (`sam_hf.kernels`) where it may run `upscale_masks`: on CPU, image,
        hypernetwork weights, output and the upscaling's parameters all fp32, or all bf16 where the CPU runs oneDNN's
        bf16 products (AVX512-BF16), contiguous inputs and output, autograd recording nothing; else None (the
        PyTorch path below)."""
        if image.dtype not in (torch.float32, torch.bfloat16) or image.device.type != "cpu" or hyper_in.dtype != image.dtype:
            return None
        if any(p.dtype != image.dtype for p in self.upscale_parameters()) or (out is not None and out.dtype != image.dtype):
            return None
        if not (image.is_contiguous() and hyper_in.is_contiguous() and (out is None or out.is_contiguous())):
            return None
        if hyper_in.shape[1] > 8 or not records_nothing(image, hyper_in, *self.upscale_parameters()):
            return None
        return kernel_for("mask_upscaling", image.dtype)

    def _folds_upscaling(self, image: torch.Tensor, prompts: int, cache: dict) -> bool:
        """Whether a decoder call on the compiled kernels without `mask_iou_threshold` takes the folded first convolution
        (`folded_operands`): one image, its side shared by the prompts (no mask inputs), two blocks, the upscaling
        kernel usable for this dtype, and not the "fold" route (`folds`: more prompts than its, or a kept `image_cache`
        holding the image side's work). The shared product (one C x C convolution of the image, kept in `image_cache`
        when one is given) costs about what two prompts save; kept, it serves every later call (ViT-B, a kept cache,
        one-point clicks, one Zen 4 core, same process: fp32 37.4 against 35.2 ms per click, bf16 32.4 against 29.9).
        With a threshold (segment everything) it is not taken: every prompt's second attention pass would also record
        what the fold reads (the first pass records on a shared image side anyway, for the second pass's factored
        logits: `factored_passes.py`; about 0.9 MB per ViT-B prompt in fp32 each), and only the prompts above the
        threshold are upscaled."""
        if image.shape[0] != 1 or image.shape[1] != 1 or len(self.transformer.layers) != 2:
            return False
        if any(p.dtype != image.dtype for p in self.upscale_parameters()) or kernel_for("mask_upscaling", image.dtype) is None:
            return False
        return not folds(prompts, cache)

    def folded_operands(self, cache: dict | None, dtype: torch.dtype) -> dict | None:
        """The operands of the folded first convolution for the group the two-way transformer just ran (the record it
        left in `cache`, see `SamHfTwoWayTransformer._kernel_blocks`), else None.

        The final image tokens are x2 = LN2(x1 + w2 V2) and x1 = LN1(x0 + w1 V1): the shared image side x0, each
        token's softmax weights w1, w2 (h*T each) and values V1, V2 (h*T, C) per prompt. LN_i(z) = g_i (z - m_i) r_i + b_i
        with the token's mean m_i and 1 / std r_i. So the first convolution W1 x2 + c1 is, exactly up to rounding,
            r2 [r1 (x0 M^T + w1 V1 M^T - m1 M 1) + W1 (g2 b1) + w2 V2 (W1 G2)^T - m2 W1 g2] + W1 b2 + c1
        with G2 = diag(g2), M = W1 diag(g2 g1): x0 M^T once per image (cached), V1 M^T and V2 (W1 G2)^T once per prompt,
        and per token two h*T-long mixes (2 x 56 x 256 multiply-adds for ViT-B) instead of the 256 x 256 product. V_i's
        row (t, h) is v_(t,h) Wo_h^T + bo / heads (the value projection v of token t on head h's C'/h columns), so V1 M^T
        is v_(t,h) (M Wo_h)^T + M bo / heads: M Wo once per call, then C'/h instead of C multiply-adds per output. The
        attention kernel records r1 w1 and w2 (in the tokens' dtype); the upscaling kernel applies r2 per token."""
        entry = None if cache is None else cache.pop("upscaling_record", None)
        if entry is None:
            return None
        image_side, ((first, stats1, projected1, _), (second, stats2, projected2, _)) = entry
        weights = cache.get("upscale_fold_weights")  # from the parameters only: once per call, or per kept cache
        if weights is None:
            norm1, norm2 = (layer.layer_norm4 for layer in self.transformer.layers)
            conv1, bias1 = (t.float() for t in conv_transpose_weight(self.upscale_conv1))  # (C, C), (C,)
            g1, b1, g2, b2 = norm1.weight.float(), norm1.bias.float(), norm2.weight.float(), norm2.bias.float()
            inner, outer = conv1 * (g2 * g1), conv1 * g2  # M = W1 diag(g2 g1), W1 diag(g2)
            # per block: M Wo (C, C') and M bo / heads (C,), M = inner or outer
            attentions = [layer.cross_attn_image_to_token for layer in self.transformer.layers]
            mixing = [(m @ a.out_proj.weight.float(), m @ a.out_proj.bias.float() / a.num_heads) for m, a in zip((inner, outer), attentions)]
            weights = cache["upscale_fold_weights"] = (
                inner, mixing,
                torch.stack([conv1 @ (g2 * g1), conv1 @ (g2 * b1), conv1 @ g2]), conv1 @ b2 + bias1,  # a1, e1, a2; W1 b2 + c1
            )
        inner, mixing, terms, bias = weights
        tokens, channels = image_side.shape[-2:]
        grid, width = int(tokens**0.5), -(-int(tokens**0.5) // 16) * 16

        def shared() -> torch.Tensor:  # (g, C, G): per grid row channel-major, zero past g, as the kernel reads it
            rows = linear_activation(image_side.reshape(tokens, channels).float(), inner, None, None).view(grid, grid, channels)
            return (F.pad(rows, (0, 0, 0, width - grid)) if width > grid else rows).transpose(1, 2).contiguous()

        kept = cache.get("upscale_shared")  # kept with the image side it was made from (the cached tokens, one object)
        if kept is None or kept[0] is not image_side:
            kept = cache["upscale_shared"] = (image_side, shared())
        # (P, C, 2hT), columns (t, h) of each block: per head one small product of the value projections (h, P*T, C'/h)
        # by that head's columns of the folded (C, C'), written once into place
        prompts, per_prompt, internal = projected1.shape  # (P, T, C')
        n = first.shape[-1]
        heads = n // per_prompt
        mix = torch.empty(prompts, channels, 2 * n, dtype=dtype, device=projected1.device)
        for block, (projected, (weight, shift)) in enumerate(zip((projected1, projected2), mixing)):
            rows = projected.float().view(prompts * per_prompt, heads, internal // heads).transpose(0, 1)  # (h, P*T, d)
            product = torch.baddbmm(shift, rows, weight.view(channels, heads, -1).permute(1, 2, 0))  # (h, P*T, C)
            mix[:, :, block * n : (block + 1) * n].view(prompts, channels, per_prompt, heads).copy_(
                product.view(heads, prompts, per_prompt, channels).permute(1, 3, 2, 0))
        return {
            "shared": kept[1], "mix": mix,
            "first": first, "second": second, "stats1": stats1, "stats2": stats2,
            "terms": terms, "bias1": bias,
        }

    def upscale_parameters(self):
        """The parameters of the mask upscaling (both convolutions and the LayerNorm between them)."""
        return (*self.upscale_conv1.parameters(), *self.upscale_layer_norm.parameters(), *self.upscale_conv2.parameters())

    def _kernel_weights(self) -> tuple:
        """The upscaling's parameters as the `mask_upscaling` kernel takes them: conv1 ([a, b, C/4], C) and its
        bias, the LayerNorm's weight, bias and eps, conv2 per output-row offset (2, [d, C/8], C/4) and its bias."""
        (conv1, bias1), *second = self._linear_weights()
        norm = self.upscale_layer_norm
        return (conv1, bias1.float(), norm.weight.float().contiguous(), norm.bias.float().contiguous(), norm.eps,
                torch.stack([w for w, _ in second]), torch.stack([b for _, b in second]).float())

    def _linear_weights(self) -> tuple:
        """Both transposed convolutions as linear layers (`upscaling_linear.linear_weights`)."""
        return linear_weights(self.upscale_conv1, self.upscale_conv2)

    def _upscale(self, image: torch.Tensor, hyper_in: torch.Tensor, grid: int, weights) -> torch.Tensor:
        """The linear form of the upscaling on image tokens (N, R*g, C) of R whole grid rows (`upscaling_linear.upscale`)."""
        return upscale(self.upscale_layer_norm, image, hyper_in, grid, weights)

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
        if persam is not None:  # the reference path, every layer called (persam.py)
            with on_reference_path():
                return self._decode_all(tokens, output_tokens.shape[0], sparse_embeddings, sparse_valid, image_embeddings, image_pe,
                                        dense_embeddings, multimask_output, output_attentions, mask_iou_threshold, image_cache, persam)
        return self._decode_all(tokens, output_tokens.shape[0], sparse_embeddings, sparse_valid, image_embeddings, image_pe,
                                dense_embeddings, multimask_output, output_attentions, mask_iou_threshold, image_cache, None)

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
