"""The mask decoder's prompt-independent work on one image, kept across calls (`image_cache=`).

Every decoder call on an image first does work that no prompt changes: the image embeddings laid out as
channels-last tokens, and the projections of them and of their positional encoding that all prompts share
(`decoder_attention.py`). A call computes them once for all its prompts; a caller that prompts the same
embeddings many times (segment everything: 1,024 points per crop, in calls of 16 to 64) passes one dict as `image_cache`
to every call, and only the first computes them (ViT-B, 2 Zen 4 cores: about 14 ms per call, plus about 6 ms for the
factored passes' projections since session 16; the dict then holds 26 MB beyond the embeddings, and 4.5 MB more once a
call without a mask IoU threshold took the folded mask upscaling, whose product of the shared image side is kept here
too: `SamHfMaskDecoder.folded_operands`).

Small calls (one or two prompts, a predictor's clicks) without a mask input take that work from a kept dict too,
where without one (or with a mask input, whose image side is new in every call) they fold their prompts into the
projections instead (the "fold" route, `decoder_attention.folds`): kept, it serves every
later click. `SamHfPredictor.set_image` fills its dict with one decoder call on a placeholder prompt, so that its first
click is as fast as the next ones (ViT-B: 30.5 MB beyond the embeddings in fp32, 23.5 MB in bf16).

The dict holds tensors computed from the embeddings, the positional encoding and the decoder's weights. It is
emptied and refilled whenever a call brings other embeddings (another tensor, or the same one changed), another
positional encoding (compared by value) or other decoder weights (changed in place, by an optimizer step or through
`.data`, or swapped for other tensors): `tensor_state.py` says how changes are told, and which writes it can miss.
It is used only where autograd records nothing (a cached projection must not carry one call's graph into the next);
elsewhere a call keeps its work to itself.

A decoder call also leaves its own notes in the dict while it runs (its prompt count, its route, the records its
passes leave for the upscaling), so calls that share one dict from several threads (a server's predictor, clicked
from two requests at once) take turns: each holds one of `_LOCKS`, picked by the dict's identity, for its whole call
(`holding_image_cache`). Calls with other dicts, or none, run side by side (two dicts may share a lock now and then:
they then take turns too). The locks live outside the dicts, which stay plain dicts of tensors (copied and pickled as
before).
"""

from __future__ import annotations

import functools
import threading

import torch

from .inputs import check_finite_embeddings
from .layers import records_nothing
from .tensor_state import TensorsState

_KEY = "sam_hf.image_cache.key"


_LOCKS = tuple(threading.RLock() for _ in range(64))


def holding_image_cache(forward):
    """Decorator for the decoder's `forward`: a call given `image_cache=` holds that dict's lock throughout (see the
    module's notes); re-entrant, so nested calls in one thread pass. Not while `torch.compile` traces (no cache then)."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        image_cache = kwargs.get("image_cache")
        if image_cache is None or torch.compiler.is_compiling():
            return forward(self, *args, **kwargs)
        with _LOCKS[(id(image_cache) >> 4) % len(_LOCKS)]:
            return forward(self, *args, **kwargs)

    return wrapper


def call_cache(image_cache: dict | None, image_embeddings: torch.Tensor, image_pe: torch.Tensor, parameters, *tensors) -> dict:
    """The dict a decoder call keeps its prompt-independent work in: `image_cache` where it may (see the module's
    notes), emptied first unless filled for these embeddings, this positional encoding and these weights; else a
    new dict for this call. `tensors`: the call's other inputs, for the autograd check. The embeddings' values are
    checked (NaN or inf raise a ValueError) unless a kept dict was filled for them, which checked them then."""
    if image_cache is not None and not isinstance(image_cache, dict):
        raise TypeError(f"image_cache must be a dict (empty at first, then kept for the same image) or None, got {type(image_cache).__name__}")
    parameters = tuple(parameters)
    if image_cache is None or not records_nothing(image_embeddings, image_pe, *tensors, *parameters):
        check_finite_embeddings(image_embeddings)
        return {}
    watched = (image_embeddings, *parameters)  # changed in place, or swapped: see `tensor_state.py`
    held = image_cache.get(_KEY)
    if not (
        held is not None
        and held[0] is image_embeddings
        and (held[2] is image_pe or (held[2].shape == image_pe.shape and held[2].dtype == image_pe.dtype and torch.equal(held[2], image_pe)))
        and held[1].holds(watched)
    ):
        check_finite_embeddings(image_embeddings)  # before the dict changes: a refused call leaves it as it was
        image_cache.clear()
        image_cache[_KEY] = (image_embeddings, TensorsState(watched), image_pe)
    return image_cache


def kept(cache: dict | None) -> bool:
    """Whether `cache` (a decoder call's dict from `call_cache`) is a caller's `image_cache`, kept for later calls on
    the same embeddings, rather than a dict for this call only."""
    return cache is not None and _KEY in cache


def cached(cache: dict, name: str, compute, *depends: torch.Tensor):
    """`compute()`, kept in `cache` under `name` while the small tensors `depends` keep their values."""
    entry = cache.get(name)
    if entry is not None and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(entry[0], depends)):
        return entry[1]
    value = compute()
    cache[name] = (tuple(d.clone() for d in depends), value)
    return value
