"""`AliasTable`: Vose's alias method over float64 weights (O(n) build, O(1) draw, 64-bit indices).

Column j of a table keeps j with probability threshold[j] / 2^64 and otherwise yields alias[j];
`probabilities()` reconstructs the exact distribution a table draws from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastmix.core import seeds
from fastmix.kernels.backend import kernels
from fastmix.errors import ConfigError

_TWO64 = float(1 << 64)


def check_weights(weights: Sequence[float] | np.ndarray, name: str = "weights") -> np.ndarray:
    """Weights as a contiguous float64 array (n,), n >= 1; ConfigError names `name[i]` and the bad value
    for negative, NaN or infinite entries, and reports an all-zero vector."""
    try:
        w = np.ascontiguousarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a 1-D sequence of numbers: {exc}") from exc
    if w.ndim != 1 or w.size == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {w.shape}")
    bad = ~np.isfinite(w)
    if bad.any():
        i = int(np.argmax(bad))
        raise ConfigError(f"{name}[{i}] = {float(w[i])!r} is not finite; weights must be finite and >= 0")
    neg = w < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise ConfigError(f"{name}[{i}] = {float(w[i])!r} is negative; weights must be finite and >= 0")
    if not (w > 0).any():
        raise ConfigError(f"{name} are all zero ({w.size} entries); at least one must be positive")
    return w


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
        w = check_weights(weights, name)
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


__all__ = ["AliasTable", "check_weights"]
