"""The ViT image encoder: patch embedding, windowed and global blocks with decomposed relative
positions, absolute position embedding, and the neck that projects to the prompt dimension.

Speed on CPU (see benchmarks/): window partitioning is fused into the head split of the qkv output and
the output projection runs on real tokens only; SDPA folds in the relative positions (attention.py);
when autograd records nothing the residual adds are in place, the MLP runs over chunks of tokens and
the large temporaries live in the thread's workspace (layers.py), so no large block is allocated per call.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import SamHfVisionConfig
from .attention import (
    augmented_buffers,
    kernel_attention_with_rel_pos,
    relpos_kernel_usable,
    grid_attention,
    row_blocked_attention_with_rel_pos,
    row_blocked_usable,
    sdpa_on_buffers,
    sdpa_with_rel_pos_mask,
    write_rel_pos_columns,
)
from .autocast import autocast_dtype, cast_call
from .bf16_compute import fp32_for_bf16
from .compile_support import eager_on_cpu_inference
from .inputs import check_pixel_values
from .module_calls import when_wrapped
from .layers import SamHfLayerNorm2d, SamHfLinear, SamHfMLPBlock, autograd_records, linear_add, linear_into, records_nothing, workspace

# Largest (tokens, mlp_dim) MLP temporary when autograd records nothing: below glibc's 32 MB mmap limit,
# so that the allocator recycles it instead of page-faulting fresh memory on every call.
MLP_CHUNK_BYTES = 24 * 2**20


def mlp_chunk_tokens(mlp_dim: int, element_size: int) -> int:
    """Tokens per MLP chunk: a power of two (full-speed matmul shapes), at least 256."""
    tokens = max(256, MLP_CHUNK_BYTES // (mlp_dim * element_size))
    return 1 << (tokens.bit_length() - 1)


class SamHfPatchEmbeddings(nn.Module):
    def __init__(self, config: SamHfVisionConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values).permute(0, 2, 3, 1)  # (B, g, g, C), a permuted view

    def patches_as_rows(self, pixel_values: torch.Tensor, position_embeddings: torch.Tensor | None) -> torch.Tensor:
        """The same embeddings plus `position_embeddings` (1, g, g, C), for inference: one matmul over the
        unfolded patches -> (B, g, g, C) contiguous. The convolution's output is channels-first, and its
        transpose to (B, g, g, C) (about 30 ms for ViT-B in bf16 on one core) costs more than the conv."""
        batch, channels, height, width = pixel_values.shape
        patch = self.projection.kernel_size[0]
        rows, cols = height // patch, width // patch
        patches = pixel_values.view(batch, channels, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch * rows * cols, channels * patch * patch)  # (B*g*g, 3*p*p), one copy
        weight = self.projection.weight.view(self.projection.out_channels, -1)  # (C, 3*p*p)
        if self.projection.bias is None:
            out = patches @ weight.t()
        else:
            out = torch.addmm(self.projection.bias, patches, weight.t())  # (B*g*g, C)
        out = out.view(batch, rows, cols, -1)
        return out if position_embeddings is None else out.add_(position_embeddings)

    def unfolds_exactly(self, pixel_values: torch.Tensor) -> bool:
        """Whether `patches_as_rows` applies: stride = kernel, no padding, sizes divisible by the patch."""
        conv, patch = self.projection, self.projection.kernel_size[0]
        return (
            conv.kernel_size == conv.stride == (patch, patch) and conv.padding == (0, 0) and conv.dilation == (1, 1)
            and conv.groups == 1 and pixel_values.shape[-1] % patch == 0 and pixel_values.shape[-2] % patch == 0
        )


def _window_blocks(size: int, window: int) -> list[tuple[slice, slice, slice]]:
    """Split a grid axis into its whole windows and the partial last one: (grid rows, window indexes,
    rows within the window) for each part."""
    whole, rest = divmod(size, window)
    blocks = [(slice(0, whole * window), slice(0, whole), slice(0, window))] if whole else []
    if rest:
        blocks.append((slice(whole * window, size), slice(whole, whole + 1), slice(0, rest)))
    return blocks


def copy_windows(grid: torch.Tensor, windows: torch.Tensor, window: tuple[int, int], *, to_windows: bool) -> None:
    """Copy between grid (B, H, W, *rest) and windows (B, nH, wh, nW, ww, *rest) (any strides) without
    materialising the padded grid; the padding positions of `windows` are left untouched."""
    for rows, window_rows, inner_rows in _window_blocks(grid.shape[1], window[0]):
        for cols, window_cols, inner_cols in _window_blocks(grid.shape[2], window[1]):
            part = grid[:, rows, cols]  # (B, n_y * r_y, n_x * r_x, *rest)
            part = part.unflatten(1, (window_rows.stop - window_rows.start, -1)).unflatten(3, (window_cols.stop - window_cols.start, -1))
            target = windows[:, window_rows, inner_rows, window_cols, inner_cols]  # (B, n_y, r_y, n_x, r_x, *rest)
            (target.copy_(part) if to_windows else part.copy_(target))


class SamHfVisionAttention(nn.Module):
    """Multi-head self-attention with decomposed relative positions over a (H, W) grid of tokens,
    within `window_size` x `window_size` windows (zero-padded as Meta does) or over the whole grid (0)."""

    def __init__(self, config: SamHfVisionConfig, *, input_size: int, window_size: int = 0) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        head_dim = config.hidden_size // config.num_attention_heads
        self.scale = head_dim**-0.5
        self.window_size = window_size
        self.qkv = SamHfLinear(config.hidden_size, config.hidden_size * 3, bias=config.qkv_bias)
        self.proj = SamHfLinear(config.hidden_size, config.hidden_size)
        self.use_rel_pos = config.use_rel_pos
        if self.use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size - 1, head_dim))
        self.config = config

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False, *, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (B, H, W, C) normed -> (B, H, W, C) projected (plus `residual` if given),
        weights (B * windows, heads, L, L) with `output_attentions`, else None."""
        window = (self.window_size,) * 2 if self.window_size > 0 else tuple(hidden_states.shape[1:3])
        implementation = self.config._attn_implementation or "sdpa"
        records = not records_nothing(hidden_states, *self.qkv.parameters())
        if implementation != "sdpa" or output_attentions or records:
            out, weights = self._reference_attention(hidden_states, window, implementation, output_attentions)
            out = self.proj(out)
            return (out if residual is None else out + residual), weights
        out = self._fast_attention(hidden_states, window)
        return (self.proj(out) if residual is None else linear_add(out, self.proj, residual)), None

    def _reference_attention(
        self, hidden_states: torch.Tensor, window: tuple[int, int], implementation: str, output_attentions: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Meta's steps, out of place (autograd-safe): pad, qkv, partition, attend, unpartition, crop."""
        batch, height, width, channels = hidden_states.shape
        heads, head_dim = self.num_heads, channels // self.num_heads
        pad_h, pad_w = -height % window[0], -width % window[1]
        hidden_states = F.pad(hidden_states, (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, C), zero tokens
        n_h, n_w = (height + pad_h) // window[0], (width + pad_w) // window[1]
        qkv = self.qkv(hidden_states).view(batch, n_h, window[0], n_w, window[1], 3, heads, head_dim)
        qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, batch * n_h * n_w, heads, window[0] * window[1], head_dim)
        out, weights = grid_attention(
            *qkv.unbind(0), scale=self.scale, size=window, implementation=implementation, output_attentions=output_attentions,
            rel_pos_h=self.rel_pos_h if self.use_rel_pos else None, rel_pos_w=self.rel_pos_w if self.use_rel_pos else None,
        )  # (B * nW, heads, L, D)
        # (B, nH, nW, heads, wh, ww, D) -> (B, nH, wh, nW, ww, heads, D) -> (B, Hp, Wp, C) -> crop
        out = out.view(batch, n_h, n_w, heads, window[0], window[1], head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        out = out.reshape(batch, n_h * window[0], n_w * window[1], channels)[:, :height, :width]
        return out, weights

    def _fast_attention(self, hidden_states: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
        """The same result for inference: qkv of the real tokens only, written straight into the windows of
        the workspace SDPA inputs (a padded token's qkv is the bias), output gathered back to the grid."""
        batch, height, width, channels = hidden_states.shape
        heads, head_dim = self.num_heads, channels // self.num_heads
        kwargs = dict(dtype=hidden_states.dtype, device=hidden_states.device)
        qkv = workspace("vit_qkv", (batch, height, width, 3 * channels), **kwargs)
        linear_into(hidden_states.contiguous(), self.qkv, qkv)  # (B, H, W, 3C)
        n_h, n_w = -(-height // window[0]), -(-width // window[1])
        # relative positions: bf16 and fp32 on AVX512-BF16 CPUs, added inside sam_hf's flash kernel; other bf16/fp16,
        # folded into SDPA's query/key (softmax-bound); other fp32, as explicit logits or a dense bias built chunk by
        # chunk (matmul-bound, where the wider heads would cost more)
        in_kernel = self.use_rel_pos and relpos_kernel_usable(head_dim=head_dim, **kwargs)
        as_mask = self.use_rel_pos and not in_kernel and hidden_states.dtype in (torch.float32, torch.float64)
        if in_kernel and window == (height, width):
            return self._kernel_attention_in_place(qkv, window)
        fold = self.use_rel_pos and not as_mask and not in_kernel
        buffers = augmented_buffers(batch * n_h * n_w, heads, head_dim, window, rel_pos=fold, **kwargs)
        bias = self.qkv.bias.view(3, heads, head_dim) if self.qkv.bias is not None else hidden_states.new_zeros(3, heads, head_dim)
        # (3, B * nW, heads, L, D') -> (B, nH, wh, nW, ww, 3, heads, D): windows in grid order
        windows = buffers.view(3, batch, n_h, n_w, heads, *window, -1).permute(1, 2, 5, 3, 6, 0, 4, 7)[..., :head_dim]
        if n_h * window[0] != height:
            windows[:, -1, height - (n_h - 1) * window[0] :] = bias
        if n_w * window[1] != width:
            windows[:, :, :, -1, width - (n_w - 1) * window[1] :] = bias
        copy_windows(qkv.view(batch, height, width, 3, heads, head_dim), windows, window, to_windows=True)
        if as_mask and row_blocked_usable(device=hidden_states.device, tokens=math.prod(window)):
            out = row_blocked_attention_with_rel_pos(*buffers, self.rel_pos_h, self.rel_pos_w, size=window, scale=self.scale)
        elif in_kernel:
            out = kernel_attention_with_rel_pos(*buffers, self.rel_pos_h, self.rel_pos_w, size=window, scale=self.scale)
        elif as_mask:
            out = sdpa_with_rel_pos_mask(*buffers, self.rel_pos_h, self.rel_pos_w, size=window, scale=self.scale)
        else:
            if fold:
                write_rel_pos_columns(buffers[0], self.rel_pos_h, self.rel_pos_w, size=window, head_dim=head_dim, scale=self.scale)
            out = sdpa_on_buffers(*buffers, scale=self.scale, head_dim=head_dim)  # (B * nW, heads, L, D)
        out = out.view(batch, n_h, n_w, heads, *window, head_dim).permute(0, 1, 4, 2, 5, 3, 6)  # (B, nH, wh, nW, ww, heads, D)
        grid = workspace("vit_attention_out", (batch, height, width, channels), **kwargs)
        copy_windows(grid.view(batch, height, width, heads, head_dim), out, window, to_windows=False)
        return grid  # (B, H, W, C)


    def _kernel_attention_in_place(self, qkv: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """One window covering the grid (global attention) with the compiled kernel: it reads query, key and
        value as strided views of the qkv projection (B, H, W, 3C) and writes into the (B, H, W, C) grid,
        so nothing is copied into or out of windows."""
        batch, height, width, channels = qkv.shape[0], qkv.shape[1], qkv.shape[2], qkv.shape[3] // 3
        heads, head_dim = self.num_heads, channels // self.num_heads
        query, key, value = qkv.view(batch, height * width, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (B, heads, L, D) each
        grid = workspace("vit_attention_out", (batch, height, width, channels), dtype=qkv.dtype, device=qkv.device)
        out = grid.view(batch, height * width, heads, head_dim).transpose(1, 2)  # (B, heads, L, D) view of the grid
        kernel_attention_with_rel_pos(query, key, value, self.rel_pos_h, self.rel_pos_w, size=size, scale=self.scale, out=out)
        return grid  # (B, H, W, C)


class SamHfVisionLayer(nn.Module):
    """Pre-norm ViT block; attention within windows (window_size > 0) or over the whole grid."""

    def __init__(self, config: SamHfVisionConfig, *, window_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        input_size = window_size if window_size > 0 else config.grid_size
        self.attn = SamHfVisionAttention(config, input_size=input_size, window_size=window_size)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SamHfMLPBlock(hidden_size=config.hidden_size, mlp_dim=config.mlp_dim, hidden_act=config.hidden_act)
        self.mlp_dim = config.mlp_dim

    @fp32_for_bf16(keep_weights=False)
    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, g, g, C) -> (B, g, g, C), a new tensor (the input is never modified)."""
        normed = self.layer_norm1(hidden_states)
        hidden_states, weights = self.attn(normed, output_attentions=output_attentions, residual=hidden_states)
        tokens = hidden_states.view(-1, hidden_states.shape[-1])  # (B*g*g, C), a fresh tensor
        chunk = mlp_chunk_tokens(self.mlp_dim, hidden_states.element_size())
        # autograd records: nothing in place; traced: one MLP call (chunks would fix the batch size in the graph)
        if hidden_states.requires_grad or torch.compiler.is_compiling() or tokens.shape[0] <= chunk:
            return self.mlp.residual_forward(self.layer_norm2(hidden_states), hidden_states), weights
        for part in tokens.split(chunk):  # (chunk, C) views, updated in place
            part.copy_(self.mlp.residual_forward(self.layer_norm2(part), part))
        return hidden_states, weights


class SamHfVisionNeck(nn.Module):
    def __init__(self, config: SamHfVisionConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(config.hidden_size, config.output_channels, kernel_size=1, bias=False)
        self.layer_norm1 = SamHfLayerNorm2d(config.output_channels, eps=config.layer_norm_eps)
        self.conv2 = nn.Conv2d(config.output_channels, config.output_channels, kernel_size=3, padding=1, bias=False)
        self.layer_norm2 = SamHfLayerNorm2d(config.output_channels, eps=config.layer_norm_eps)

    @fp32_for_bf16(keep_weights=False)
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.permute(0, 3, 1, 2)  # (B, C, g, g), channels-last strides: no copy
        hidden_states = self.layer_norm2(self.conv2(self.layer_norm1(self.conv1(hidden_states))))
        return hidden_states.contiguous()  # (B, C_out, g, g)


class SamHfVisionEncoder(nn.Module):
    def __init__(self, config: SamHfVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = SamHfPatchEmbeddings(config)
        self.pos_embed = None
        if config.use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, config.grid_size, config.grid_size, config.hidden_size))
        self.layers = nn.ModuleList(
            SamHfVisionLayer(config, window_size=0 if i in config.global_attn_indexes else config.window_size)
            for i in range(config.num_hidden_layers)
        )
        self.neck = SamHfVisionNeck(config)
        self.gradient_checkpointing = False  # set by SamHfPreTrainedModel._set_gradient_checkpointing
        self.checkpoint_every = 1
        self.checkpoint_function = None  # None: torch's non-reentrant checkpoint

    def encode(self, pixel_values, *, output_hidden_states: bool = False, output_attentions: bool = False):
        """`forward` on pixel values as a model takes them: checked (shape, dtype, finite values), then cast to the
        weights' dtype (read from the layers themselves, any of which may be wrapped: module_calls.py)."""
        check_pixel_values(pixel_values, self.config.image_size, self.config.num_channels)
        pixel_values = pixel_values.to(next(self.parameters()).dtype)
        return self(pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions)

    @eager_on_cpu_inference
    @when_wrapped
    def forward(
        self, pixel_values: torch.Tensor, *, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """pixel_values (B, 3, S, S) -> embeddings (B, C_out, g, g), hidden states, attentions."""
        target = autocast_dtype(pixel_values.device.type)
        if target is not None and not autograd_records(pixel_values, *self.parameters()):
            # inference under torch.autocast: this encoder's own paths in the autocast dtype (autocast.py)
            return cast_call(self, target, pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        records = not records_nothing(pixel_values, *self.patch_embed.parameters())
        if not records and self.patch_embed.unfolds_exactly(pixel_values):
            hidden_states = self.patch_embed.patches_as_rows(pixel_values, self.pos_embed)  # (B, g, g, C)
        else:
            hidden_states = self.patch_embed(pixel_values)  # (B, g, g, C), a permuted view
            if self.pos_embed is not None:
                hidden_states = hidden_states + self.pos_embed
            else:
                hidden_states = hidden_states.contiguous()
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attn = () if output_attentions else None
        for index, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and index % self.checkpoint_every == 0:
                recompute = self.checkpoint_function or functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
                hidden_states, weights = recompute(layer.__call__, hidden_states, output_attentions)
            else:
                hidden_states, weights = layer(hidden_states, output_attentions=output_attentions)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden_states,)
            if output_attentions:
                all_attn = all_attn + (weights,)
        return self.neck(hidden_states), all_hidden, all_attn
