"""How many prompts the mask decoder runs together in one group: the bytes of one prompt's largest temporary
against a budget per device and path. Grouping is exact (every prompt is decoded on its own); it only bounds the
temporaries, and on CPU keeps them below the sizes glibc maps afresh on every call.
"""

from __future__ import annotations

import torch

# Bytes per temporary. glibc serves blocks from 32 MiB up by mmap, page-faulting them in on every call; smaller
# groups avoid that, though glibc still returns some freed blocks of this size to the system (about 3,700 page
# faults per ViT-B prompt measured in session 4; `sam_hf.allocator.keep_freed_memory` removes them).
_TEMPORARY_BUDGET = 16 * 2**20
# With the compiled decoder kernel (`SamHfTwoWayTransformer.kernel_for`) a group's one large temporary is its image
# tokens, in the workspace (no page faults), and larger groups share the token-side work among more prompts: ViT-B,
# 64 prompts, one Zen 4 core, no upscaling, 12.2 ms per prompt in groups of 4 (16 MiB), 11.0 in groups of 16
# (64 MiB), 10.9 in one group (256 MiB).
_KERNEL_TEMPORARY_BUDGET = 64 * 2**20
# With the folded upscaling (`SamHfMaskDecoder._folds_upscaling`), where every prompt of the group is also upscaled,
# twice that: ViT-B, 64 prompts per call, 2 threads, same process (session 15): fp32 9.69 -> 9.27 ms per prompt in
# groups of 32 (9.29 in one group), bf16 5.47 -> 5.21 in one group of 64, for about 100 MB more peak memory (the
# group's image tokens and the fold's records). Segment everything (a mask IoU threshold, no fold) gained nothing
# from larger groups (ViT-B bf16: 5.70 against 5.81 s), so keeps the budget above.
_FOLD_TEMPORARY_BUDGET = 128 * 2**20
# On a GPU the caching allocator reuses blocks without page faults, and small groups only add kernel launches:
# with the CPU's budget, 8 ViT-H images x 8 prompts went one prompt at a time (H200: 46 ms of decoder per
# batch vs transformers' 10 ms).
_ACCELERATOR_TEMPORARY_BUDGET = 2**30


def prompt_group(per_prompt_bytes: int, device: torch.device, *, kernel: bool = False, fold: bool = False) -> int:
    """How many prompts share one group, given the bytes of one prompt's largest temporary on `device`; `kernel`: the
    compiled decoder kernel runs the group (see `_KERNEL_TEMPORARY_BUDGET`), `fold`: with the folded upscaling
    (`_FOLD_TEMPORARY_BUDGET`)."""
    if device.type != "cpu":
        budget = _ACCELERATOR_TEMPORARY_BUDGET
    elif kernel:
        budget = _FOLD_TEMPORARY_BUDGET if fold else _KERNEL_TEMPORARY_BUDGET
    else:
        budget = _TEMPORARY_BUDGET
    return max(1, budget // per_prompt_bytes)
