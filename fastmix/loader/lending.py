"""`SlotLender`: CPU batches handed out as tensors over the shared-memory slot itself (no copy), and the slot
given back only when every tensor of that batch is gone.

A lent batch's camera tensors are `torch.from_numpy` views of per-hand-out numpy views of the slot; each tensor keeps
its numpy view alive (torch holds it as the storage's owner, and so does every torch view, `.numpy()` array or
slice taken from the tensor). The lender keeps only weak references to those numpy views: the slot is free again
once all of them are dead, never earlier, so the workers never write into memory a consumer can still read.
At most `limit` slots are lent at a time; past that the pipeline copies the batch out instead (a consumer
keeping many batches gets correct copies, not a stalled loader). The lender outlives a pipeline pass, so a new
pass never reuses a slot a consumer still holds from the previous one.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import torch


class SlotLender:
    """Tracks slots lent to the consumer. `limit`: most slots lent at once (0: never lend)."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self._lent: dict[int, list[weakref.ref]] = {}

    @property
    def held(self) -> set[int]:
        """Slots whose batch is still referenced (after dropping those that are not)."""
        self.reclaim()
        return set(self._lent)

    def reclaim(self) -> list[int]:
        """The lent slots whose batches are gone (removed from the lent set), in slot order."""
        done = sorted(s for s, refs in self._lent.items() if all(r() is None for r in refs))
        for s in done:
            del self._lent[s]
        return done

    def can_lend(self) -> bool:
        return len(self._lent) < self.limit

    def lend(self, slot: int, views: Mapping[str, np.ndarray], n: int, keys: Collection[str]) -> dict[str, torch.Tensor]:
        """Tensors over rows [:n] of `slot`'s arrays named in `keys` (the cameras), fresh copies of the others
        (low-dim fields: a few KB, so that keeping an index or a state never holds a slot); the slot counts as
        lent until all the lent tensors are gone."""
        if slot in self._lent:
            raise RuntimeError(f"slot {slot} is already lent")  # pragma: no cover - pipeline invariant
        out: dict[str, torch.Tensor] = {}
        refs: list[weakref.ref] = []
        for key, arr in views.items():
            if key not in keys:
                out[key] = torch.from_numpy(arr[:n].copy())
                continue
            view = arr[:n]  # a fresh view object per hand-out: its lifetime is this batch's
            refs.append(weakref.ref(view))
            out[key] = torch.from_numpy(view)
        self._lent[slot] = refs
        return out

    def forget(self) -> None:
        """Drop all bookkeeping (the ring itself was released: lent tensors keep their own mapping)."""
        self._lent.clear()

    def __repr__(self) -> str:
        return f"SlotLender(limit={self.limit}, lent={sorted(self._lent)})"


def unheld(num_slots: int, lender: Any) -> list[int]:
    """Slots 0..num_slots-1 not lent by `lender` (all of them when there is none)."""
    held = lender.held if lender is not None else set()
    return [s for s in range(num_slots) if s not in held]


__all__ = ["SlotLender", "unheld"]
