"""The mask decoder's upscaling: image tokens and hypernetwork weights -> mask logits, by the compiled kernel, its
folded first convolution, the PyTorch path in bands of grid rows, or Meta's form (a mixin of `SamHfMaskDecoder`,
whose `upscale_conv1`, `upscale_layer_norm`, `upscale_conv2` and `transformer` it reads)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import kernel_for
from .decoder_attention import folds
from .export_form import convolutions as exports_convolutions
from .layers import linear_activation, records_nothing
from .module_calls import active as calling_modules
from .prompt_groups import prompt_group
from .upscaling_linear import conv_transpose_weight, linear_weights, upscale

# Bytes of the mask upscaling's largest temporary per step on CPU: a band of grid rows of one prompt whose
# temporaries stay in the caches (and below glibc's trim threshold); see `SamHfMaskUpscaling.upscale_masks`.
_UPSCALE_BAND_BUDGET = 2 * 2**20


class SamHfMaskUpscaling:
    """The upscaling's methods of `SamHfMaskDecoder` (the modules and weights are the decoder's own)."""

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
