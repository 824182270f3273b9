"""`SlotLender`: CPU batches handed out as arrays or tensors over the shared-memory slot itself (no copy), and the
slot given back only when every array of that batch is gone.

A lent camera array is made from a per-hand-out owner object (`_Lent`, exposing the slot rows through the array
interface): the array, every numpy view or slice of it, a `torch.from_numpy` tensor over it and every torch view
or `.numpy()` of that tensor keep the owner alive. The lender keeps only weak references to the owners: the slot
is free again once all of them are dead, never earlier, so the workers never write into memory a consumer can
still read.
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


class _Lent:
    """Owner of one lent view of a slot: arrays made from it with `np.asarray` (and everything viewing them) keep
    it alive, so its weak reference dies only when the last of them is gone."""

    __slots__ = ("__array_interface__", "__weakref__", "_view")

    def __init__(self, view: np.ndarray) -> None:
        self._view = view
        self.__array_interface__ = view.__array_interface__


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

    def held_ranges(self) -> list[tuple[int, int]]:
        """(address, nbytes) of every lent array still referenced (the rows [:n] of one camera of a slot)."""
        out = []
        for refs in self._lent.values():
            for ref in refs:
                owner = ref()
                if owner is not None:
                    out.append((int(owner.__array_interface__["data"][0]), int(owner._view.nbytes)))
        return out

    def can_lend(self) -> bool:
        return len(self._lent) < self.limit

    def lend(self, slot: int, views: Mapping[str, np.ndarray], n: int | Mapping[str, int], keys: Collection[str], *,
             numpy: bool = False) -> dict[str, Any]:
        """Tensors (numpy arrays with `numpy`) over rows [:n] of `slot`'s arrays named in `keys` (the cameras),
        fresh copies of the others (low-dim fields: a few KB, so that keeping an index or a state never holds a
        slot); the slot counts as lent until all the lent arrays (and anything viewing them) are gone."""
        wrap = (lambda a: a) if numpy else torch.from_numpy
        if slot in self._lent:
            raise RuntimeError(f"slot {slot} is already lent")  # pragma: no cover - pipeline invariant
        out: dict[str, Any] = {}
        refs: list[weakref.ref] = []
        for key, arr in views.items():
            rows = n if isinstance(n, int) else int(n[key])  # per field in grouped batches
            if key not in keys:
                out[key] = wrap(arr[:rows].copy())
                continue
            owner = _Lent(arr[:rows])  # a fresh owner per hand-out: its lifetime is this batch's
            refs.append(weakref.ref(owner))
            out[key] = wrap(np.asarray(owner))
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
