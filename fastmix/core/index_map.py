"""`IndexMap`: global index of the concatenation of K datasets ↔ (dataset index, local index), vectorized
in the native core (branch-free scan for K <= 8, binary search over the offsets otherwise)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastmix._args import check_int
from fastmix.errors import ConfigError
from fastmix.kernels.backend import kernels


def check_sizes(sizes: Sequence[int] | np.ndarray, name: str = "dataset_sizes") -> np.ndarray:
    """Sizes as int64 (K,), K >= 1, every entry an integer >= 1 (`check_int`, naming `name[i]`); their sum
    must stay below 2**63."""
    if isinstance(sizes, np.ndarray):
        sizes = sizes.ravel().tolist()
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes:
        raise ConfigError(f"{name} must be a non-empty sequence of integers (frames per dataset), "
                          f"got {name}={sizes!r}")
    raw = [check_int(v, f"{name}[{i}]", minimum=1) for i, v in enumerate(sizes)]
    total = sum(raw)
    if total >= 1 << 63:
        raise ConfigError(f"{name} must sum to less than 2**63 frames, got {name}={raw} (sum {total})")
    return np.array(raw, dtype=np.int64)


class IndexMap:
    """Maps global indices of the concatenation (dataset 0's frames, then dataset 1's, ...) to
    (dataset, local) pairs and back.

    Args:
        sizes: frames per dataset (K,), each >= 1.

    Attributes:
        sizes: int64 (K,). offsets: int64 (K+1,), offsets[d] = first global index of dataset d. total: int.
    """

    sizes: np.ndarray
    offsets: np.ndarray
    total: int

    def __init__(self, sizes: Sequence[int] | np.ndarray, *, backend: str | None = None) -> None:
        self.sizes = check_sizes(sizes)
        self.offsets = np.zeros(self.sizes.size + 1, dtype=np.int64)
        np.cumsum(self.sizes, out=self.offsets[1:])
        self.total = int(self.offsets[-1])
        self._k = kernels(backend)

    def __len__(self) -> int:
        return self.total

    @property
    def num_datasets(self) -> int:
        return int(self.sizes.size)

    def to_local(self, global_index: Sequence[int] | np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset int64 (n,), local int64 (n,)) of global indices (n,); IndexError names the first bad one."""
        g = np.ascontiguousarray(np.atleast_1d(np.asarray(global_index)).astype(np.int64, copy=False).ravel())
        dataset = np.empty(g.size, dtype=np.int64)
        local = np.empty(g.size, dtype=np.int64)
        bad = int(self._k.to_local(self.offsets, g, dataset, local))
        if bad >= 0:
            raise IndexError(f"global index {int(g[bad])} (entry {bad}) is out of range [0, {self.total}) "
                             f"of {self.num_datasets} datasets")
        return dataset, local

    def to_global(self, dataset: Sequence[int] | np.ndarray | int,
                  local: Sequence[int] | np.ndarray | int) -> np.ndarray:
        """int64 (n,) global indices of (dataset, local) pairs (broadcast); IndexError names the first bad pair."""
        d, loc = np.broadcast_arrays(np.atleast_1d(np.asarray(dataset)), np.atleast_1d(np.asarray(local)))
        d = np.ascontiguousarray(d.astype(np.int64, copy=False).ravel())
        loc = np.ascontiguousarray(loc.astype(np.int64, copy=False).ravel())
        out = np.empty(d.size, dtype=np.int64)
        bad = int(self._k.to_global(self.offsets, d, loc, out))
        if bad >= 0:
            dd, ll = int(d[bad]), int(loc[bad])
            if not 0 <= dd < self.num_datasets:
                raise IndexError(f"dataset index {dd} (entry {bad}) is out of range [0, {self.num_datasets})")
            raise IndexError(f"local index {ll} (entry {bad}) is out of range [0, {int(self.sizes[dd])}) "
                             f"of dataset {dd}")
        return out


__all__ = ["IndexMap", "check_sizes"]
