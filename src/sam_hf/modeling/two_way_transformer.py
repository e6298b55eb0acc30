"""The two-way transformer: prompt tokens and image tokens attend to each other.

Each block: token self-attention, tokens -> image cross-attention, token MLP, image -> tokens
cross-attention; a final tokens -> image attention closes the stack. Key-padding masks keep padded
prompt slots invisible to every other token.

Tensors keep the prompt axis: tokens (B, P, T, C); image tokens (B, P', HW, C) where P' is 1 while the
image side is still the same for every prompt of an image (before the first image -> token attention,
and without per-prompt mask inputs). That prompt-independent work is done once per image, not once per
prompt. Positional encodings enter the projections as `W (x + pe) + b = W x + (W pe + b)`, so the sum
`x + pe` is never materialised for the large image side.

How each attention reaches the image tokens (the "shared", "per_prompt" and "fold" routes, and the compiled
kernel): `decoder_attention.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration import SamHfMaskDecoderConfig
from .decoder_attention import SamHfAttention, folds
from .decoder_kernel_pass import normed_image_to_tokens
from .kernel_inputs import decoder_kernel
from .layers import SamHfMLPBlock, layer_norm_into


class SamHfTwoWayAttentionBlock(nn.Module):
    def __init__(self, config: SamHfMaskDecoderConfig, *, skip_first_layer_pe: bool) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.self_attn = SamHfAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.cross_attn_token_to_image = SamHfAttention(config, downsample_rate=config.attention_downsample_rate)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = SamHfMLPBlock(hidden_size=config.hidden_size, mlp_dim=config.mlp_dim, hidden_act=config.hidden_act)
        self.layer_norm3 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.layer_norm4 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.cross_attn_image_to_token = SamHfAttention(config, downsample_rate=config.attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def token_attention(self, queries, query_pe, token_mask, output_attentions=False):
        """The tokens' self-attention and its LayerNorm: (B, P, T, C) -> (B, P, T, C), weights."""
        if self.skip_first_layer_pe:
            queries, w_self = self.self_attn(queries, queries, queries, token_mask, output_attentions)
        else:
            q = queries + query_pe
            out, w_self = self.self_attn(q, q, queries, token_mask, output_attentions)
            queries = queries + out
        return self.layer_norm1(queries), w_self

    def token_update(self, queries, attended):
        """After the token -> image attention (its output `attended`): residual, LayerNorm, MLP, LayerNorm (B, P, T, C)."""
        queries = self.layer_norm2(queries + attended)
        return self.layer_norm3(queries + self.mlp(queries))

    def forward(self, queries, keys, query_pe, key_pe, token_mask, output_attentions=False, cache=None, fold=False, attention_bias=None):
        """queries (B, P, T, C) tokens, keys (B, P', HW, C) image, query_pe (B, P, T, C), key_pe (HW, C);
        `fold`: the attentions take the "fold" route (see `SamHfAttention.route`); `attention_bias`: PerSAM's, added
        to the token -> image attention's logits (persam.py). PyTorch's path: the compiled kernel's runs in
        `SamHfTwoWayTransformer.blocks`."""
        queries, w_self = self.token_attention(queries, query_pe, token_mask, output_attentions)
        with_pe = SamHfAttention.with_positions(keys, key_pe, cache) if fold else None  # read by both cross-attentions
        out, w_t2i = self.cross_attn_token_to_image.tokens_to_image(queries, query_pe, keys, key_pe, output_attentions, cache, fold, with_pe,
                                                                    attention_bias=attention_bias)
        queries = self.token_update(queries, out)

        # image -> tokens: queries are the image tokens; a shared image side broadcasts over the prompts.
        # Inside a decoder call on CPU the (B, P, HW, C) residual goes to one workspace buffer, the LayerNorm
        # overwrites it in place, and the next block's residual is added in place too: one buffer for the
        # group's image tokens, not two, so more of them stays in cache between products
        shape = (*queries.shape[:2], *keys.shape[2:])
        buffer = SamHfAttention.scratch(cache, "decoder_image_tokens", shape, keys, queries)
        residual, w_i2t = self.cross_attn_image_to_token.image_to_tokens(
            keys, key_pe, queries, query_pe, token_mask, output_attentions, cache, out=buffer, fold=fold, image_with_pe=with_pe)
        if buffer is None:
            keys = self.layer_norm4(residual)  # (B, P, HW, C)
        else:
            keys = layer_norm_into(self.layer_norm4, residual, buffer)
        return queries, keys, (w_self, w_t2i, w_i2t)


class SamHfTwoWayTransformer(nn.Module):
    def __init__(self, config: SamHfMaskDecoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SamHfTwoWayAttentionBlock(config, skip_first_layer_pe=i == 0) for i in range(config.num_hidden_layers)
        )
        self.final_attn_token_to_image = SamHfAttention(config, downsample_rate=config.attention_downsample_rate)
        self.layer_norm_final_attn = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, tokens, image, image_pe, token_mask=None, output_attentions=False, cache=None, output_tokens=None, persam=None):
        """tokens (B, P, T, C), image (B, P', HW, C) with P' in {1, P}, image_pe (HW, C), token_mask (B, P, T);
        `cache` (a dict for one decoder call) shares the prompt-independent projections across prompt groups; with
        it, on CPU where autograd records nothing, the image tokens returned live in this thread's workspace
        (see `layers.workspace`) and are overwritten by the next decoder call's groups.
        `cache["prompts"]` (set by the decoder: prompts per image in the whole call, else this call's P) picks the
        "fold" route for calls of at most `FOLD_UP_TO_PROMPTS` prompts without a kept `image_cache` (`folds`).
        `output_tokens` (indices into T): only these tokens leave the final attention, in that order. Exact:
        the final attention and LayerNorm treat each token on its own, so the tokens nobody reads (the prompt
        tokens, an unused mask token) are not attended with.

        `persam` (`persam.PerSamInputs`, on the reference path): see `blocks`.

        Returns tokens (B, P, T or len(output_tokens), C), image (B, P, HW, C) and the attention weights when asked for.
        """
        rows = slice(None) if output_tokens is None else output_tokens
        _, keys, weights, _, (queries, w_final) = self.blocks(tokens, image, image_pe, token_mask, output_attentions, cache, final_rows=rows,
                                                              persam=persam)
        return queries, keys, (weights + (w_final,) if output_attentions else None)

    def blocks(self, tokens, image, image_pe, token_mask=None, output_attentions=False, cache=None, final_rows=None, persam=None):
        """The attention blocks: -> queries (B, P, T, C), image tokens (B, P, HW, C), the blocks' attention weights (a
        tuple; empty without `output_attentions`), `fold` (the route flag for `final`, see `forward`) and, for
        `final_rows` (indices or a slice into T), what `final` gives for those rows: (tokens (B, P, T', C), weights),
        else None. Inside a decoder call in fp32 or bf16 on CPU with autograd recording nothing, the compiled kernel runs
        them (see `_kernel_blocks`). `persam` (`persam.PerSamInputs`, on the reference path): its attention bias
        enters every block's token -> image attention, its target embedding the queries before every block after the
        first (the caller added it to `tokens` itself, which the first block and every positional use then see, as in
        transformers)."""
        fold = folds(tokens.shape[1] if cache is None else cache.get("prompts", tokens.shape[1]), cache)
        if cache is not None:
            cache["image"] = image  # the decoder passes the same shared image side for every group of prompts
        module = self.kernel_for(image, tokens, image_pe, output_attentions) if cache is not None and persam is None else None
        if module is not None:
            return self._kernel_blocks(module, tokens, image, image_pe, token_mask, cache, fold, final_rows)
        queries, keys = tokens, image
        weights = ()
        bias = None if persam is None else persam.attention_bias
        for index, layer in enumerate(self.layers):
            if index > 0 and persam is not None and persam.target is not None:
                queries = queries + persam.target
            queries, keys, layer_weights = layer(queries, keys, tokens, image_pe, token_mask, output_attentions, cache, fold, attention_bias=bias)
            weights += layer_weights
        final = None
        if final_rows is not None:
            final = self.final(queries[:, :, final_rows], tokens[:, :, final_rows], keys, image_pe, output_attentions, cache, fold)
        return queries, keys, weights, fold, final

    def kernel_for(self, image, tokens, image_pe, output_attentions=False):
        """The compiled kernel module that `blocks` takes inside a decoder call for these inputs, else None (see
        `decoder_kernel`)."""
        attention = self.layers[0].cross_attn_token_to_image
        # the parameters enter only `decoder_kernel`'s autograd check (grad enabled) and its bf16 dtype check: with neither,
        # the module tree is not walked (twice per click: 0.5-0.9 ms less per click, measured)
        walk = torch.is_grad_enabled() or image.dtype != torch.float32
        parameters = tuple(self.parameters()) if walk else ()
        return decoder_kernel({}, output_attentions, image, tokens, image_pe, *parameters, head_width=attention.internal_dim // attention.num_heads)

    def _kernel_blocks(self, module, tokens, image, image_pe, token_mask, cache, fold, final_rows):
        """`blocks` by the compiled kernel `module` (see `decoder_kernel`). A block's image -> token attention and the
        token -> image attention that reads its result (the next block's, or the final one for `final_rows`) run in
        one pass over the image tokens: that attention's query rows depend only on the tokens, which are ready
        before the pass (the next block's self-attention comes first)."""
        # what the folded mask upscaling reads (`SamHfMaskDecoder.folded_operands`), where the decoder asked for it: two
        # blocks, the first one's image side shared by the prompts
        fold_upscaling = bool(cache.get("fold_upscaling")) and len(self.layers) == 2 and image.shape[1] == 1
        # on a shared image side (and not the "fold" route) the first pass's records also give the second pass its logits
        # and its following token -> image attention is factored (modeling/factored_passes.py)
        factor = not fold and image.shape[1] == 1 and len(self.layers) > 1
        record = [] if fold_upscaling or factor else None
        first = self.layers[0]
        queries, _ = first.token_attention(tokens, tokens, token_mask)
        attended, _ = first.cross_attn_token_to_image.tokens_to_image(queries, tokens, image, image_pe, False, cache, fold)
        queries, keys, final = first.token_update(queries, attended), image, None
        for index, layer in enumerate(self.layers):
            following = self.layers[index + 1] if index + 1 < len(self.layers) else None
            if following is not None:  # the next block's self-attention, then its token -> image attention in the pass
                rows, _ = following.token_attention(queries, tokens, token_mask)
                attention, rows_pe = following.cross_attn_token_to_image, tokens
            elif final_rows is not None:  # the final attention for the rows asked for
                rows, rows_pe, attention = queries[:, :, final_rows], tokens[:, :, final_rows], self.final_attn_token_to_image
            else:
                rows = attention = None
            route = SamHfAttention.route(keys, queries.shape[1], cache, fold)
            buffer = SamHfAttention.scratch(cache, "decoder_image_tokens", (*queries.shape[:2], *keys.shape[2:]), keys, queries)
            factored = factor and index == 0 and following is not None and route == "shared"
            source = (image, (first.layer_norm4, record[0])) if factor and index == 1 else None
            keys, mixed = normed_image_to_tokens(
                layer.cross_attn_image_to_token, module, keys, image_pe, queries, tokens, token_mask, layer.layer_norm4, route, cache, out=buffer,
                next_queries=None if rows is None or factored else attention.folded_queries(rows, rows_pe),
                record=record if index == 0 or fold_upscaling else None,
                factored_next=(attention, rows, rows_pe) if factored else None, factored_source=source)
            if following is not None:
                queries = following.token_update(rows, mixed if factored else attention.attended_tokens(mixed, rows.shape))
            elif rows is not None:
                final = (self.layer_norm_final_attn(rows + attention.attended_tokens(mixed, rows.shape)), None)
        if fold_upscaling:
            cache["upscaling_record"] = (image, record)  # the shared image side and both blocks' records, for this group
        return queries, keys, (), fold, final

    def final(self, queries, tokens, keys, image_pe, output_attentions=False, cache=None, fold=False, keys_index=None):
        """The final token -> image attention and its LayerNorm: queries (B, P, T', C) after `blocks`, tokens (B, P,
        T', C) the same rows of the prompt tokens (their positional encoding), keys (B, P, HW, C) -> (B, P, T', C)
        and the attention weights when asked for. Any subset of rows or prompts gives those rows of the whole: with
        `keys_index` ((P,) int64, B = 1) prompt p's image tokens are keys[:, keys_index[p]]."""
        out, w_final = self.final_attn_token_to_image.tokens_to_image(
            queries, tokens, keys, image_pe, output_attentions, cache, fold, image_index=keys_index)
        return self.layer_norm_final_attn(queries + out), w_final
