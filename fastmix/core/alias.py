"""`AliasTable`: Vose's alias method over float64 weights (O(n) build, O(1) draw, 64-bit indices).

Column j of a table keeps j with probability threshold[j] / 2^64 and otherwise yields alias[j];
`probabilities()` reconstructs the exact distribution a table draws from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastmix._args import check_weights
from fastmix.core import seeds
from fastmix.kernels.backend import kernels

_TWO64 = float(1 << 64)


class AliasTable:
    """Vose alias table.

    Args:
        weights: float64-convertible (n,), finite, >= 0, not all zero (need not sum to 1).
        backend: "native" / "numba" / None (the one `fastmix.backend()` picks).

    Attributes:
        threshold: uint64 (n,): column j keeps itself when its coin word is < threshold[j].
        alias: int64 (n,): the index a column yields otherwise.

    Example:
        >>> t = AliasTable([1.0, 3.0]); t.probabilities()  # array([0.25, 0.75])
    """

    threshold: np.ndarray
    alias: np.ndarray

    def __init__(self, weights: Sequence[float] | np.ndarray, *, name: str = "weights",
                 backend: str | None = None) -> None:
        w = check_weights(weights, what=name)
        self._k = kernels(backend)
        self.threshold = np.empty(w.size, dtype=np.uint64)
        self.alias = np.empty(w.size, dtype=np.int64)
        # scale by the maximum first so the sum cannot overflow and n / sum cannot reach inf
        self._k.alias_build(w / w.max(), self.threshold, self.alias)

    def __len__(self) -> int:
        return int(self.threshold.size)

    def probabilities(self) -> np.ndarray:
        """Exact float64 (n,) distribution of the two-word draw (column uniform, coin a full 64-bit word)."""
        keep = self.threshold.astype(np.float64) / _TWO64  # uint64 -> float64 rounds by at most 2^-53 relative
        give = (~self.threshold).astype(np.float64) / _TWO64  # (2^64 - 1 - t) / 2^64: the coin failing
        give += 1.0 / _TWO64
        p = keep.copy()
        np.add.at(p, self.alias, give)
        return p / len(self)

    def draw(self, n: int, *, seed: int = 0, epoch: int = 0, start: int = 0, stride: int = 1) -> np.ndarray:
        """int64 (n,): draws at positions start + i*stride of stream (seed, epoch, STREAM_ALIAS)."""
        out = np.empty(int(n), dtype=np.int64)
        self._k.alias_draw(self.threshold, self.alias, seeds.stream(seed, epoch, seeds.STREAM_ALIAS),
                           int(start), int(stride), out)
        return out


__all__ = ["AliasTable"]
