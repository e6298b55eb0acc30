"""`MaskData`: a small record container of per-mask fields that are filtered and concatenated together.

Every field holds one entry per mask along its first axis: a torch tensor (kept on its device), a numpy
array or a Python list. `filter` keeps a subset of masks in every field at once, `cat` appends the
masks of another container and `to_numpy` moves the tensors to the host once, at the end.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator
from typing import Any

import numpy as np
import torch

_FIELD_TYPES = (torch.Tensor, np.ndarray, list)


def _check_field(key: str, value: Any) -> None:
    if not isinstance(value, _FIELD_TYPES):
        raise TypeError(
            f"MaskData field {key!r} must be a torch.Tensor, a numpy array or a list, got {type(value).__name__}"
        )


class MaskData:
    """Per-mask fields (tensors, arrays, lists) of equal length, filtered and concatenated as one."""

    def __init__(self, **fields: Any) -> None:
        for key, value in fields.items():
            _check_field(key, value)
        self._fields: dict[str, Any] = dict(fields)

    def __setitem__(self, key: str, value: Any) -> None:
        _check_field(key, value)
        self._fields[key] = value

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __delitem__(self, key: str) -> None:
        del self._fields[key]

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        """Number of masks (the length of the fields; 0 when there are none)."""
        for value in self._fields.values():
            return len(value)
        return 0

    def items(self) -> ItemsView[str, Any]:
        return self._fields.items()

    def filter(self, keep: torch.Tensor | np.ndarray | list) -> "MaskData":
        """Keep the masks selected by `keep` (a boolean mask or integer indices) in every field, in place."""
        keep_t = torch.as_tensor(keep)
        if keep_t.dtype != torch.bool and (keep_t.is_floating_point() or keep_t.is_complex()):
            raise TypeError(f"keep must be a boolean mask or integer indices, got dtype {keep_t.dtype}")
        keep_host = None  # indices on the host, built once if a numpy or list field needs them
        for key, value in self._fields.items():
            if isinstance(value, torch.Tensor):
                self._fields[key] = value[keep_t.to(value.device)]
                continue
            if keep_host is None:
                keep_host = keep_t.cpu().numpy()
                if keep_host.dtype == np.bool_:
                    keep_host = np.flatnonzero(keep_host)
            if isinstance(value, np.ndarray):
                self._fields[key] = value[keep_host]
            else:
                self._fields[key] = [value[i] for i in keep_host.tolist()]
        return self

    def cat(self, other: "MaskData") -> "MaskData":
        """Append the masks of `other` (same fields and types) after ours, in place."""
        if not isinstance(other, MaskData):
            raise TypeError(f"other must be a MaskData, got {type(other).__name__}")
        for key, value in other.items():
            mine = self._fields.get(key)
            if mine is None:
                self._fields[key] = value.clone() if isinstance(value, torch.Tensor) else value.copy()
            elif isinstance(value, torch.Tensor) and isinstance(mine, torch.Tensor):
                self._fields[key] = torch.cat([mine, value.to(mine.device)], dim=0)
            elif isinstance(value, np.ndarray) and isinstance(mine, np.ndarray):
                self._fields[key] = np.concatenate([mine, value], axis=0)
            elif isinstance(value, list) and isinstance(mine, list):
                self._fields[key] = mine + value
            else:
                raise TypeError(
                    f"MaskData field {key!r} cannot join a {type(mine).__name__} with a {type(value).__name__}"
                )
        return self

    def to_numpy(self) -> "MaskData":
        """Move every tensor field to a numpy array on the host, in place."""
        for key, value in self._fields.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu()
                if value.dtype == torch.bfloat16:
                    value = value.float()
                self._fields[key] = value.numpy()
        return self
