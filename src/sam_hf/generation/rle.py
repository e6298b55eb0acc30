"""Run-length encoding of binary masks, in COCO's uncompressed form (column-major / Fortran order).

An uncompressed RLE is `{"size": [H, W], "counts": [c0, c1, ...]}`: alternating run lengths of 0s and 1s
over the mask flattened column by column, starting with a (possibly empty) run of 0s.

Encoding runs on the masks' device: `run_boundaries` finds where runs start and end as flat indices of the
full image, so a mask predicted on a crop is encoded in the image frame without padding it to the image
size first. Only these boundaries (about two per column a mask touches) ever go to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _check_masks(masks: torch.Tensor) -> None:
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        got = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must be a (B, H, W) tensor, got {got}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a boolean tensor, got dtype {masks.dtype}")


def run_boundaries(
    masks: torch.Tensor,
    image_size: tuple[int, int] | None = None,
    offset: tuple[int, int] = (0, 0),
    *,
    return_boxes: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Run boundaries of (B, h, w) boolean masks placed at `offset` (x0, y0) in an image of `image_size` (H, W).

    Returns `(boundaries, per_mask)` on the masks' device: `boundaries` (K,) int64 holds, mask after mask,
    the flat column-major image index where each run of 1s starts and ends (exclusive), sorted;
    `per_mask` (B,) int64 says how many boundaries each mask has (always even). With `return_boxes`, also
    the masks' XYXY boxes (B, 4) int64 in their own frame, as `filters.batched_mask_to_box` gives them (read
    off the runs: no second pass over the masks).
    """
    _check_masks(masks)
    b, h, w = masks.shape
    img_h, img_w = (h, w) if image_size is None else (int(image_size[0]), int(image_size[1]))
    x0, y0 = int(offset[0]), int(offset[1])
    if x0 < 0 or y0 < 0 or x0 + w > img_w or y0 + h > img_h:
        raise ValueError(f"masks of size {(h, w)} at offset (x0, y0)={(x0, y0)} do not fit an image of size {(img_h, img_w)}")
    # changes[:, r, c]: a run starts or ends at row r of column c (r = 0 and r = h for runs touching
    # the top and bottom edges). Read column by column through a transposed view: no copy of the masks.
    size = b * (h + 1) * w
    storage = torch.zeros(-(-size // 8) * 8, dtype=torch.bool, device=masks.device)  # whole 8-byte words
    changes = storage[:size].view(b, h + 1, w)  # (B, h + 1, w)
    torch.bitwise_xor(masks[:, 1:], masks[:, :-1], out=changes[:, 1:h])
    changes[:, 0] = masks[:, 0]
    changes[:, h] = masks[:, -1]
    found = _column_major_nonzero(storage, b, h + 1, w)  # (K, 3): mask, column, row, in column-major order
    del changes, storage
    mask_ids = found[:, 0]
    boxes = _boxes_from_changes(found, b) if return_boxes else None
    flat = (found[:, 1] + x0) * img_h + found[:, 2] + y0  # (K,) column-major index in the image
    if h == img_h and flat.numel() > 1:
        # A run reaching the bottom of a column continues at the top of the next one: that end and the
        # next start fall on the same index; both go.
        same = (flat[1:] == flat[:-1]) & (mask_ids[1:] == mask_ids[:-1])
        drop = torch.zeros_like(flat, dtype=torch.bool)
        drop[1:] |= same
        drop[:-1] |= same
        flat, mask_ids = flat[~drop], mask_ids[~drop]
    per_mask = torch.bincount(mask_ids, minlength=b)
    return (flat, per_mask, boxes) if return_boxes else (flat, per_mask)


def _column_major_nonzero(storage: torch.Tensor, b: int, rows: int, cols: int) -> torch.Tensor:
    """Indices (mask, column, row) of the True entries of `storage` read as (b, rows, cols), sorted column-major
    per mask; as `view.transpose(1, 2).nonzero()` but scanning whole 8-byte words (runs make few True entries)."""
    words = storage.view(torch.int64)  # (N / 8,)
    hot = words.nonzero().squeeze(1)  # words holding some True byte
    within = storage.view(-1, 8)[hot].nonzero()  # (K, 2): word, byte
    flat = hot[within[:, 0]] * 8 + within[:, 1]  # row-major flat index in (b, rows, cols)
    mask, rest = flat // (rows * cols), flat % (rows * cols)
    row, col = rest // cols, rest % cols
    order = ((mask * cols + col) * rows + row).argsort()
    return torch.stack([mask, col, row], dim=1)[order]


def _boxes_from_changes(found: torch.Tensor, count: int) -> torch.Tensor:
    """found (K, 3) as (mask, column, row of a run start or exclusive end) -> XYXY boxes (count, 4), inclusive;
    [0, 0, 0, 0] for a mask without runs."""
    boxes = torch.zeros(count, 4, dtype=torch.int64, device=found.device)
    if found.numel():
        ids = found[:, 0]
        for column, source, reduce in ((0, 1, "amin"), (1, 2, "amin"), (2, 1, "amax"), (3, 2, "amax")):
            boxes[:, column].scatter_reduce_(0, ids, found[:, source], reduce, include_self=False)
        boxes[:, 3] -= (boxes[:, 3] > 0).long()  # the last run ends (exclusive) one row below the box
    return boxes


def boundaries_to_rles(
    boundaries: torch.Tensor | np.ndarray,
    per_mask: torch.Tensor | np.ndarray,
    image_size: tuple[int, int],
    select: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    *,
    counts_as_arrays: bool = False,
) -> list[dict[str, Any]]:
    """Uncompressed RLEs from `run_boundaries` output (moved to the host here, once).

    `select`: indices of the masks to encode, in the order wanted (default: all, in order). `counts` are lists of
    ints (Meta's form), or int64 numpy arrays with `counts_as_arrays`.
    """
    img_h, img_w = int(image_size[0]), int(image_size[1])
    total = img_h * img_w
    flat = torch.as_tensor(boundaries).cpu().numpy()
    per_mask = torch.as_tensor(per_mask).cpu().numpy()
    if per_mask.size == 0:
        return []
    splits = np.cumsum(per_mask)[:-1]
    pieces = np.split(flat, splits)
    if select is not None:
        pieces = [pieces[i] for i in torch.as_tensor(select).cpu().tolist()]
    rles = []
    for bounds in pieces:
        counts = np.diff(np.concatenate([[0], bounds, [total]]).astype(np.int64, copy=False))
        if len(counts) > 1 and counts[-1] == 0:
            counts = counts[:-1]  # the mask ends with a run of 1s: no trailing empty run of 0s
        rles.append({"size": [img_h, img_w], "counts": counts if counts_as_arrays else counts.tolist()})
    return rles


def mask_to_rle(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Uncompressed RLEs of (B, H, W) boolean masks, one dict per mask."""
    boundaries, per_mask = run_boundaries(masks)
    return boundaries_to_rles(boundaries, per_mask, masks.shape[-2:])


def _check_rle(rle: Any) -> tuple[int, int, list]:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"rle must be a dict with 'size' and 'counts', got {type(rle).__name__}")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        raise ValueError("rle['counts'] is COCO-compressed; decode it with pycocotools.mask.decode, or pass an uncompressed RLE")
    return h, w, counts


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """(H, W) boolean numpy mask from an uncompressed RLE."""
    h, w, counts = _check_rle(rle)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"rle['counts'] must sum to H*W={h * w}, got {int(counts.sum())}")
    values = np.arange(len(counts)) % 2 == 1  # runs alternate 0s, 1s, 0s, ...
    return np.repeat(values, counts).reshape(w, h).T  # column-major back to (H, W)


def area_from_rle(rle: dict[str, Any]) -> int:
    """Number of 1s of an uncompressed RLE."""
    _, _, counts = _check_rle(rle)
    return int(sum(counts[1::2]))


def coco_encode_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """COCO compressed RLE (`counts` as a JSON-ready str) of an uncompressed RLE, through pycocotools."""
    mask_utils = require_pycocotools()

    h, w, _ = _check_rle(rle)
    encoded = mask_utils.frPyObjects(rle, h, w)
    encoded["counts"] = encoded["counts"].decode("utf-8")
    return encoded


def require_pycocotools():
    """`pycocotools.mask`, or an ImportError naming the extra to install. The import sits in a `try` so that
    transformers' remote-code import check does not demand pycocotools from every user."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:
        raise ImportError(
            "output_mode='coco_rle' needs pycocotools: install it with `pip install 'sam-hf[coco]'`"
        ) from err
    return mask_utils
