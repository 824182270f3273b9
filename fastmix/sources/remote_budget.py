"""The byte budget of remote prefetches: how many bytes a process may fetch across the gaps between the byte
ranges it needs, so that nearby ranges of a file are fetched by one request instead of one each.

A ranged GET costs far more CPU, at the client and at the server, than the few KiB of a gap between two frames'
ranges (measured: benchmarks/bench_remote.py), so joining ranges saves requests; the budget bounds what it costs
in bytes. `Overfetch.allow` picks the gaps to fetch across: the smallest first, each at most the merge gap,
within `overfetch` x the bytes needed (see its docstring for the bound per call and over the process's life).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence


class Overfetch:
    """The process's prefetch byte budget: bytes needed (the missing parts asked for), bytes fetched across the
    gaps joined between them, and the allowance not spent yet (`bank`)."""

    BANK_DRAW = 2.0  # a call may draw from the bank at most this many times its own allowance

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.needed = 0
        self.extra = 0
        self.bank = 0.0

    def allow(self, parts: Sequence[tuple[int, int]], merge_gap: int, overfetch: float) -> set[int]:
        """Indices j of the gaps (between parts[j] and parts[j + 1], sorted) to fetch across: the smallest
        first, each at most `merge_gap` bytes, within this call's allowance (overfetch x its needed bytes) plus
        what earlier calls left unspent (at most twice its own allowance): over the process's life the bytes
        fetched across gaps are at most overfetch x the bytes needed, and in one call at most 3 x overfetch x
        its bytes."""
        gaps = sorted((parts[j + 1][0] - parts[j][1], j) for j in range(len(parts) - 1))
        joined: set[int] = set()
        need = sum(b - a for a, b in parts)
        own = overfetch * need
        with self.lock:
            limit = own + min(self.bank, self.BANK_DRAW * own)
            spent = 0
            for gap, j in gaps:
                if gap > merge_gap or spent + gap > limit:
                    break
                spent += gap
                joined.add(j)
            self.bank += own - spent
            self.needed += need
            self.extra += spent
        return joined


__all__ = ["Overfetch"]
