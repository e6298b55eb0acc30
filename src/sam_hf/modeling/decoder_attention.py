"""The mask decoder's attention module (`SamHfAttention`) and how it reaches the image tokens.

Tensors keep the prompt axis: tokens (B, P, T, C); image tokens (B, P', HW, C) where P' is 1 while the
image side is still the same for every prompt of an image. Positional encodings enter the projections as
`W (x + pe) + b = W x + (W pe + b)`, so the sum `x + pe` is never materialised for the large image side.

Three routes over the HW image tokens, chosen per attention (`SamHfAttention.route`): "shared" projects a
shared image side once per decoder call; "per_prompt" folds each prompt's tokens into the projection weights
(`(q_h W_k,h) . x`) and projects only the positional encoding, once per call; "fold" (calls of at most
`FOLD_UP_TO_PROMPTS` prompts per image) folds the positional encoding too (`(q_h W_k,h) . (x + pe) + q_h . b_k,h`),
so a single prompt projects nothing of size HW: those projections are prompt-independent work that only pays
when several prompts share it, or when a caller's kept `image_cache` holds them for later calls (`folds`).

In fp32 or bf16 on CPU inside a decoder call, where autograd records nothing, the compiled kernel (`sam_hf.kernels`,
"decoder_attention", see `decoder_kernel`) runs these attentions in streaming passes over the image tokens (the image ->
token pass: decoder_kernel_pass.py). Where the decoder's layers are wrapped (adapters, hooks: module_calls.py) both
cross-attentions take Meta's form through `forward`, every projection called.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration import SamHfMaskDecoderConfig
from .attention import attention
from .kernel_inputs import decoder_kernel, token_tiles
from .module_calls import active as calling_modules
from .layers import SamHfLinear, add_matmul_nt_, linear_activation, matmul_add_shared, matmul_nn, records_nothing, workspace


# Prompts per image up to which a decoder call takes the "fold" route: one (HW, C) x (C, C') projection costs
# about as many multiply-adds as the folded products of two prompts (ViT-B: 134M vs 2 x 59M).
FOLD_UP_TO_PROMPTS = 2


def folds(prompts: int, cache: dict | None) -> bool:
    """Whether a call of `prompts` prompts per image takes the "fold" route: at most `FOLD_UP_TO_PROMPTS`, unless a kept
    `image_cache` holds the embeddings' own image side (no mask input: `cache["reuses_image_side"]`), whose projections
    then serve every later click (ViT-B fp32 clicks, two cores: 23.5 -> 19.0 ms; with a mask input the side is new in
    every call, and the shared route would cost 71.5 against 43.5 ms on one thread). Never inside `calling_modules()`
    (Meta's form takes no route), nor while `torch.export` traces (the number of prompts is not known there: the
    program takes the shared route, whose prompt-independent work is done once per image for any number of prompts)."""
    if calling_modules() or torch.compiler.is_exporting():
        return False
    return prompts <= FOLD_UP_TO_PROMPTS and not (cache is not None and cache.get("reuses_image_side", False))


class SamHfAttention(nn.Module):
    """Multi-head attention with an optional down-projection of the embedding width."""

    def __init__(self, config: SamHfMaskDecoderConfig, *, downsample_rate: int = 1) -> None:
        super().__init__()
        self.config = config
        self.internal_dim = config.hidden_size // downsample_rate
        self.num_heads = config.num_attention_heads
        self.scale = (self.internal_dim // self.num_heads) ** -0.5
        self.q_proj = SamHfLinear(config.hidden_size, self.internal_dim)
        self.k_proj = SamHfLinear(config.hidden_size, self.internal_dim)
        self.v_proj = SamHfLinear(config.hidden_size, self.internal_dim)
        self.out_proj = SamHfLinear(self.internal_dim, config.hidden_size)

    @staticmethod
    def project(layer: nn.Linear, states: torch.Tensor, pe: torch.Tensor | None = None) -> torch.Tensor:
        """`layer(states + pe)`, as Meta's model forms it; pe (HW, C) broadcasts over (B, P', HW, C). (One product of
        the HW image tokens: projecting `states` and `pe` apart took two, about 0.04 ms per prompt of a ViT-B call
        of 64 prompts in fp32.)"""
        return layer(states if pe is None else states + pe)

    def shared(self, cache: dict | None, name: str, layer: nn.Linear, image: torch.Tensor, pe: torch.Tensor | None = None):
        """`project(layer, image, pe)`, computed once per decoder call for the image side that the decoder passed
        in (`cache["image"]`, shared by all prompts when P' = 1); any other image side is projected afresh."""
        if cache is None or image.shape[1] != 1 or cache.get("image") is not image:
            return self.project(layer, image, pe)
        key = (id(self), name)
        entry = cache.get(key)
        if entry is None or entry[0] is not image:  # per-prompt slices (P' = P, groups of one) differ per group
            entry = cache[key] = (image, self.project(layer, image, pe))
        return entry[1]

    def shared_tiles(self, cache: dict | None, image: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        """The shared query projection of the image side (`shared(cache, "q", ...)`, (B, HW, C')) as the compiled
        kernel's tiles (B, ceil(HW/16), C', 16) (`token_tiles`) in fp32 (as the kernel takes them in bf16 too), cached
        with it."""
        projected = self.shared(cache, "q", self.q_proj, image, pe)
        key = (id(self), "q_tiles")
        entry = None if cache is None else cache.get(key)
        if entry is None or entry[0] is not projected:
            entry = (projected, token_tiles(projected[:, 0]).float())
            if cache is not None:
                cache[key] = entry
        return entry[1]

    def heads(self, states: torch.Tensor) -> torch.Tensor:
        """(B, P, L, C') -> (B, P, h, L, d)."""
        batch, prompts, length, _ = states.shape
        return states.view(batch, prompts, length, self.num_heads, -1).transpose(2, 3)

    def attend(self, q, k, v, key_mask=None, output_attentions=False, bias=None):
        """q/k/v (B, P or 1, h, L, d) -> (B, P, L, C) after out_proj; key_mask (B, P, Lk) bool; bias broadcastable to
        (B, P, h, Lq, Lk), added to the logits (PerSAM's attention similarity, persam.py)."""
        mask = None if key_mask is None else key_mask[:, :, None, None, :]  # (B, P, 1, 1, Lk)
        out, weights = attention(q, k, v, scale=self.scale, mask=mask, bias=bias,
                                 implementation=self.config._attn_implementation or "sdpa", output_attentions=output_attentions)
        batch, prompts, _, length, _ = out.shape
        out = out.transpose(2, 3).reshape(batch, prompts, length, self.internal_dim)  # (B, P, L, C')
        return self.out_proj(out), weights

    def forward(self, query, key, value, key_mask=None, output_attentions=False, bias=None):
        """Plain attention: query (B, P, Lq, C), key and value (B, P or 1, Lk, C) -> (B, P, Lq, C), weights. The
        decoder's self-attention, and both cross-attentions where its layers are wrapped (module_calls.py) or PerSAM's
        `bias` is added to the logits (see `attend`)."""
        q, k, v = self.heads(self.q_proj(query)), self.heads(self.k_proj(key)), self.heads(self.v_proj(value))
        prompts = max(q.shape[1], k.shape[1])  # a shared image side (P' = 1) meets every prompt
        q, k, v = (t.expand(t.shape[0], prompts, *t.shape[2:]) for t in (q, k, v))
        return self.attend(q, k, v, key_mask, output_attentions, bias)

    def _head_rows(self, states: torch.Tensor) -> torch.Tensor:
        """(B, P, T, C') -> (B, h, P*T, d): each head's rows of all prompts, for one matmul per head."""
        batch, prompts, length, _ = states.shape
        heads = states.view(batch, prompts, length, self.num_heads, -1).permute(0, 3, 1, 2, 4)
        return heads.reshape(batch, self.num_heads, prompts * length, -1)

    def _image_heads(self, image_side: torch.Tensor) -> torch.Tensor:
        """(B or 1, HW, C') -> (B or 1, h, HW, d) as a view."""
        batch, tokens, _ = image_side.shape
        return image_side.view(batch, tokens, self.num_heads, -1).transpose(1, 2)

    def _per_head_logits(self, rows: torch.Tensor, image_side: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """rows (B, P, T, C') against image_side (B or 1, HW, C') head by head -> (B*P, h*T, HW), row (h, t)
        holding rows_(t,h) . image_(x,h) for every image token x (h*T*HW*d multiply-adds per prompt); written
        into `out` when given."""
        batch, prompts, length, _ = rows.shape
        logits = self._head_rows(rows) @ self._image_heads(image_side).transpose(-1, -2)  # (B, h, P*T, HW)
        logits = logits.view(batch, self.num_heads, prompts, length, -1).transpose(1, 2)  # (B, P, h, T, HW)
        if out is None:
            return logits.reshape(batch * prompts, self.num_heads * length, -1)
        out.view(logits.shape).copy_(logits)
        return out

    @staticmethod
    def scratch(cache: dict | None, name: str, shape: tuple[int, ...], like: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor | None:
        """This thread's workspace tensor `name` (dtype and device of `like`) inside a decoder call (`cache`
        given) on CPU where autograd records nothing on `like` and `inputs` (every tensor the result is computed
        from: a frozen decoder still records when the image side requires grad), else None (the caller allocates).
        Reused by every prompt group and layer: no fresh multi-megabyte blocks, which glibc page-faults in again."""
        if cache is None or like.device.type != "cpu" or not records_nothing(like, *inputs):
            return None
        return workspace(name, shape, dtype=like.dtype, device=like.device)

    def _per_head_product(self, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """rows (B, P, T, C') and a weight (C', C) whose row block h belongs to head h -> (B, P, h*T, C),
        row (h, t) = rows_(t,h) @ weight_h (+ bias, added inside the product: one rounding in bf16)."""
        batch, prompts, length, _ = rows.shape
        heads = self._head_rows(rows).flatten(0, 1)  # (B*h, P*T, d)
        weights = weight.view(1, self.num_heads, -1, weight.shape[-1]).expand(batch, -1, -1, -1).reshape(batch * self.num_heads, -1, weight.shape[-1])  # (B*h, d, C), a view for B = 1
        out = torch.bmm(heads, weights) if bias is None else torch.baddbmm(bias, heads, weights)  # (B*h, P*T, C)
        return out.view(batch, self.num_heads, prompts, length, -1).transpose(1, 2).reshape(batch, prompts, self.num_heads * length, -1)

    def pe_projection(self, cache: dict | None, name: str, layer: nn.Linear, pe: torch.Tensor, *, bias: bool) -> torch.Tensor:
        """`W pe` (+ b): (HW, C'), the same for every prompt and group of one decoder call, so cached there."""
        key = (id(self), name, bias)
        if cache is not None and key in cache:
            return cache[key]
        out = linear_activation(pe, layer.weight, layer.bias if bias else None, None)
        if cache is not None:
            cache[key] = out
        return out

    @staticmethod
    def route(image: torch.Tensor, prompts: int, cache: dict | None, fold: bool) -> str:
        """How an attention reaches the image side (B, P', HW, C) of `prompts` prompts: "fold" when the call is
        small (`fold`), "shared" for an image side shared by several prompts or the decoder's own input (its
        projections cached for the call), else "per_prompt" (P' = P, each prompt's own image side)."""
        if fold:
            return "fold"
        if image.shape[1] == 1 and (prompts > 1 or cache is None or cache.get("image") is image):
            return "shared"
        return "per_prompt"

    @classmethod
    def with_positions(cls, image: torch.Tensor, image_pe: torch.Tensor, cache: dict | None) -> torch.Tensor:
        """image (B, P', HW, C) + image_pe (HW, C) for the "fold" route; in this thread's workspace only with grad
        off (with grad on, any trained projection saves it for the backward pass)."""
        out = cls.scratch(None if torch.is_grad_enabled() else cache, "decoder_image_pe", image.shape, image)
        return image + image_pe if out is None else torch.add(image, image_pe, out=out)

    def _folded_logits(self, rows: torch.Tensor, layer: nn.Linear, with_pe: torch.Tensor, out=None) -> torch.Tensor:
        """rows (B, P, T, C') against `layer`'s projection of an image side plus its positional encoding, `with_pe`
        = x + pe (B, P', HW, C), head by head without projecting it: rows_h . (W_h (x + pe) + b_h) =
        (rows_h W_h) . (x + pe) + rows_h . b_h -> (B*P, h*T, HW) as `_per_head_logits`, written into `out` when
        given. A shared side (P' = 1) meets all prompts' rows in one product."""
        batch, prompts, length, _ = rows.shape
        sides, tokens, channels = batch * with_pe.shape[1], with_pe.shape[2], with_pe.shape[3]
        folded = self._per_head_product(rows, layer.weight).reshape(sides, -1, channels)  # (B*P', P/P' * h*T, C); rows may be a slice of T
        bias = (rows.view(batch, prompts, length, self.num_heads, -1) * layer.bias.view(self.num_heads, -1)).sum(-1)  # (B, P, T, h)
        bias = bias.transpose(2, 3).reshape(sides, -1, 1)  # (B*P', P/P' * h*T, 1), rows in the order of `folded`
        logits = out.view(sides, -1, tokens) if out is not None else rows.new_empty(sides, folded.shape[1], tokens)
        logits.copy_(bias.expand_as(logits))
        logits = add_matmul_nt_(logits, folded, with_pe.reshape(sides, tokens, channels))
        return logits.view(batch * prompts, self.num_heads * length, tokens)

    def tokens_to_image(self, tokens, token_pe, image, image_pe, output_attentions=False, cache=None, fold=False, image_with_pe=None,
                        image_index=None, attention_bias=None):
        """Each prompt's tokens (B, P, T, C) attend to the image tokens (B, P', HW, C) -> (B, P, T, C). With
        `image_index` ((P,) int64, B = 1): prompt p attends to image side image_index[p] of P' (read in place by the
        compiled kernel, else gathered first).

        A shared image side (P' = 1) is projected once per decoder call and attended head by head, all
        prompts of a group together. A per-prompt image side (P' = P) is never projected: for head h,
        q_h . (W_k,h (x + pe) + b_k,h) = (q_h W_k,h) . x + q_h . (W_k,h pe + b_k,h); likewise
        sum_x w_x (W_v,h x + b_v,h) = W_v,h (sum_x w_x x) + b_v,h. So the work on the HW image tokens is
        two (h*T, C) x (C, HW) products instead of two (HW, C) x (C, C') projections and the attention.
        `attention_bias` (PerSAM's, persam.py; its calls run inside `calling_modules()`): added to the logits.
        """
        if calling_modules() or attention_bias is not None:  # layers wrapped (module_calls.py): Meta's form, every projection called
            image = image if image_index is None else image[:, image_index]
            return self(tokens + token_pe, image + image_pe, image, None, output_attentions, attention_bias)
        batch, prompts, length, _ = tokens.shape
        q = self.project(self.q_proj, tokens + token_pe) * self.scale  # (B, P, T, C')
        module = decoder_kernel(cache, output_attentions, image, q, image_pe, self.k_proj.weight, self.v_proj.weight, self.v_proj.bias,
                                head_width=self.internal_dim // self.num_heads)
        if image_index is not None and module is None:
            image = image[:, image_index]  # (1, P, HW, C)
        route = self.route(image, prompts, cache, fold)
        if module is not None and (image_index is not None or route != "shared"):
            # the compiled kernel: one streaming pass per prompt over its image side (image_index[p] when given)
            flat_image = image.reshape(-1, *image.shape[2:]).contiguous()  # (B*P', HW, C)
            mixed = module.tokens_to_image(self._folded_queries(q).float(), flat_image, image_pe.contiguous(), image_index)  # (B*P, h*T, C) fp32
            return self.attended_tokens(mixed, tokens.shape), None
        if route == "shared":  # shared image side: its projections are computed once per decoder call
            k = self.shared(cache, "k", self.k_proj, image, image_pe)[:, 0]  # (B, HW, C')
            v = self.shared(cache, "v", self.v_proj, image)[:, 0]
            if module is not None:  # flash-style, per head: no (P*T, HW) logits or weights in memory
                out = module.head_attention(self._head_rows(q).float().contiguous(), k.contiguous(), v.contiguous())  # (B, h, P*T, d) fp32
                out, weights = out.to(q.dtype), None
            else:
                weights = (self._head_rows(q) @ self._image_heads(k).transpose(-1, -2)).softmax(dim=-1)  # (B, h, P*T, HW)
                out = weights @ self._image_heads(v)  # (B, h, P*T, d)
            out = out.view(batch, self.num_heads, prompts, length, -1).permute(0, 2, 3, 1, 4).reshape(batch, prompts, length, self.internal_dim)
            heads_view = weights.view(batch, self.num_heads, prompts, length, -1).transpose(1, 2) if output_attentions else None
        else:
            sides = batch * image.shape[1]
            flat_image = image.reshape(sides, *image.shape[2:])  # (B*P', HW, C)
            shape = (batch * prompts, self.num_heads * length, image.shape[2])
            logits = self.scratch(cache, "decoder_logits", shape, q, image)
            # the bias is kept though the softmax cancels it: the same logits, and a gradient for b_k as in Meta's model
            if route == "fold":
                with_pe = self.with_positions(image, image_pe, cache) if image_with_pe is None else image_with_pe  # (B, P', HW, C)
                logits = self._folded_logits(q, self.k_proj, with_pe, out=logits)  # (B*P, h*T, HW)
            else:
                k_pe = self.pe_projection(cache, "k", self.k_proj, image_pe, bias=True)  # (HW, C')
                logits = self._per_head_logits(q, k_pe[None], out=logits)  # (B*P, h*T, HW)
                folded = self._per_head_product(q, self.k_proj.weight).flatten(0, 1)  # (B*P, h*T, C)
                logits = add_matmul_nt_(logits, folded, flat_image)
            weights = torch.softmax(logits, dim=-1, out=self.scratch(None if output_attentions else cache, "decoder_weights", shape, q, image))  # (B*P, h*T, HW)
            mixed = matmul_nn(weights.view(sides, -1, shape[2]), flat_image).view(batch * prompts, self.num_heads, length, -1)  # (B*P, h, T, C)
            out = self._value_heads(mixed).view(batch, prompts, length, self.internal_dim)
            out = out + self.v_proj.bias
            heads_view = weights.view(batch, prompts, self.num_heads, length, -1) if output_attentions else None
        return self.out_proj(out), heads_view

    def image_to_tokens(
        self, image, image_pe, tokens, token_pe, token_mask=None, output_attentions=False, cache=None, out=None, fold=False, image_with_pe=None
    ):
        """Image tokens (B, P', HW, C) attend to each prompt's few tokens (B, P, T, C); returns the residual
        sum `image + attention` (B, P, HW, C), written into `out` when given (contiguous). `out` may be `image`
        itself where each prompt has its own image side (P' = P; the block's one workspace buffer): the logits read
        it before the residual is added in place. A shared side (P' = 1) is the decoder's input, never `out`.

        The value and output projections are folded, exactly up to rounding: with weights w over the
        tokens of each head summing to one, out_proj(sum_t w_t v_t) = sum_(h,t) w_(h,t) (W_o,h v_(h,t) + b_o / h),
        so each image token mixes h*T vectors of width C and nothing of width C' is formed per image token.
        A per-prompt image side is not projected either: k_h . (W_q,h x + W_q,h pe + b_q,h) =
        (k_h W_q,h) . x + k_h . (W_q,h pe + b_q,h). The softmax runs over the short token axis with the
        long image axis contiguous (much faster on CPU than a softmax over a last axis of T).
        """
        if calling_modules():  # layers wrapped (module_calls.py): Meta's form, every projection called
            out, weights = self(image + image_pe, tokens + token_pe, tokens, token_mask, output_attentions)
            return image + out, weights
        batch, prompts, length, _ = tokens.shape
        k = self.project(self.k_proj, tokens + token_pe) * self.scale  # (B, P, T, C')
        shape = (batch * prompts, self.num_heads * length, image.shape[2])
        logits = self.scratch(cache, "decoder_logits", shape, k, image)
        route = self.route(image, prompts, cache, fold)
        if route == "shared":
            q = self.shared(cache, "q", self.q_proj, image, image_pe)[:, 0]  # (B, HW, C')
            logits = self._per_head_logits(k, q, out=logits)  # (B*P, h*T, HW)
        elif route == "fold":
            with_pe = self.with_positions(image, image_pe, cache) if image_with_pe is None else image_with_pe
            logits = self._folded_logits(k, self.q_proj, with_pe, out=logits)
        else:
            q_pe = self.pe_projection(cache, "q", self.q_proj, image_pe, bias=True)  # (HW, C')
            folded = self._per_head_product(k, self.q_proj.weight).flatten(0, 1)  # (B*P, h*T, C)
            flat_image = image.reshape(batch * prompts, *image.shape[2:])  # (B*P, HW, C)
            logits = add_matmul_nt_(self._per_head_logits(k, q_pe[None], out=logits), folded, flat_image)
        logits = logits.view(batch, prompts, self.num_heads, length, -1)  # (B, P, h, T, HW)
        if token_mask is not None:
            logits = logits.masked_fill_(~token_mask[:, :, None, :, None], float("-inf"))
        weights = self.scratch(None if output_attentions else cache, "decoder_weights", shape, k, image)
        weights = torch.softmax(logits, dim=-2, out=None if weights is None else weights.view(logits.shape))
        weights = weights.view(batch, prompts, self.num_heads * length, -1)
        values = self._per_head_product(self.v_proj(tokens), self.out_proj.weight.t(), self.out_proj.bias / self.num_heads)  # (B, P, h*T, C)
        if batch == 1 or image.shape[1] == prompts:  # one batched matmul that also adds the residual
            flat_out = None if out is None else out.view(batch * prompts, *out.shape[2:])
            left, right = weights.flatten(0, 1).transpose(1, 2), values.flatten(0, 1)  # (B*P, HW, h*T), (B*P, h*T, C)
            if batch == 1 and image.shape[1] == 1:  # the shared image side of one image plus each prompt's update
                flat_out = matmul_add_shared(image[0], left, right, out=flat_out)
            else:
                flat_out = torch.baddbmm(image.reshape(-1, *image.shape[2:]), left, right, out=flat_out)
            out = flat_out.view(batch, prompts, *flat_out.shape[1:])
        else:  # a shared side of several images (P' = 1 < P): `out` is not `image` here
            out = torch.matmul(weights.transpose(-1, -2), values, out=out)
            out += image
        heads_view = weights.view(batch, prompts, self.num_heads, length, -1).transpose(-1, -2) if output_attentions else None
        return out, heads_view

    def _value_heads(self, mixed: torch.Tensor) -> torch.Tensor:
        """Weighted sums of image tokens per head, mixed (N, h, T, C) -> (N, T, C'): head h's columns are
        mixed_(h,t) W_v,h^T, one product per head over all N*T rows (a broadcast matmul would expand W_v to N copies)."""
        count, heads, length, channels = mixed.shape
        rows = mixed.transpose(0, 1).reshape(heads, count * length, channels)  # (h, N*T, C)
        out = torch.bmm(rows, self.v_proj.weight.view(heads, -1, channels).transpose(1, 2))  # (h, N*T, d)
        return out.view(heads, count, length, -1).permute(1, 2, 0, 3).reshape(count, length, self.internal_dim)

    def _folded_queries(self, q: torch.Tensor) -> torch.Tensor:
        """Scaled queries q (B, P, T, C') -> the rows q_h W_k,h (B*P, h*T, C), contiguous, that the compiled kernel
        meets with x + pe: softmax_x((q_h W_k,h) . (x + pe)) weighs the image tokens x exactly as the projected keys
        do, the bias term q_h . b_k,h being the same for every x, so cancelled by the softmax."""
        batch, prompts = q.shape[:2]
        return self._per_head_product(q, self.k_proj.weight).reshape(batch * prompts, -1, self.k_proj.weight.shape[-1]).contiguous()

    def folded_queries(self, tokens: torch.Tensor, token_pe: torch.Tensor) -> torch.Tensor:
        """This token -> image attention's query rows for the compiled kernel: tokens, token_pe (B, P, T, C) -> (B*P, h*T, C)."""
        return self._folded_queries(self.project(self.q_proj, tokens + token_pe) * self.scale)

    def attended_tokens(self, mixed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The kernel's weighted sums of image tokens (B*P, h*T, C) -> this attention's output (B, P, T, C) for tokens of
        `shape` (B, P, T, C): per head the value projection W_v,h (its weights summing to one, b_v added once), then out_proj."""
        batch, prompts, length, _ = shape
        mixed = mixed.to(self.v_proj.weight.dtype)  # the kernel's sums are fp32, also for bf16 image tokens
        out = self._value_heads(mixed.view(batch * prompts, self.num_heads, length, -1)).view(batch, prompts, length, self.internal_dim)
        return self.out_proj(out + self.v_proj.bias)

    def value_rows(self, projected: torch.Tensor) -> torch.Tensor:
        """The tokens' value projections (B, P, T, C') -> the rows v_(t,h) = projected_(t,h) W_o,h + b_o / h (B*P, T*h, C) in fp32,
        rows (t, h): what the image tokens of this image -> token attention add, weighted."""
        batch, prompts, length, _ = projected.shape
        values = self._per_head_product(projected, self.out_proj.weight.t(), self.out_proj.bias / self.num_heads)  # (B, P, h*T, C)
        values = values.view(batch * prompts, self.num_heads, length, -1).transpose(1, 2).reshape(batch * prompts, length * self.num_heads, -1)
        return values.float().contiguous()
