"""IndexMap: global ↔ (dataset, local) against numpy's searchsorted, both backends, errors."""

from __future__ import annotations

import numpy as np
import pytest

from fastmix.core.index_map import IndexMap

BACKENDS = ["native", "numba"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 3, 8, 9, 40])  # K <= 8 uses the branch-free scan, larger a binary search
def test_round_trip_matches_searchsorted(k: int, backend: str) -> None:
    rng = np.random.default_rng(k)
    sizes = rng.integers(1, 50, size=k)
    m = IndexMap(sizes, backend=backend)
    g = np.concatenate([np.arange(m.total), rng.integers(0, m.total, 1000)])
    d, loc = m.to_local(g)
    ref_d = np.searchsorted(m.offsets, g, side="right") - 1
    np.testing.assert_array_equal(d, ref_d)
    np.testing.assert_array_equal(loc, g - m.offsets[ref_d])
    np.testing.assert_array_equal(m.to_global(d, loc), g)


def test_offsets_and_large_indices() -> None:
    m = IndexMap([2**40, 3, 2**33])
    assert m.offsets.tolist() == [0, 2**40, 2**40 + 3, 2**40 + 3 + 2**33] and m.total == m.offsets[-1]
    d, loc = m.to_local([2**40 + 2, m.total - 1, 0])
    assert d.tolist() == [1, 2, 0] and loc.tolist() == [2, 2**33 - 1, 0]
    assert m.to_global(2, 5).tolist() == [2**40 + 3 + 5]  # scalars broadcast


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_is_named(backend: str) -> None:
    m = IndexMap([10, 5], backend=backend)
    with pytest.raises(IndexError, match=r"global index 15 \(entry 2\) is out of range \[0, 15\)"):
        m.to_local([0, 14, 15, 3])
    with pytest.raises(IndexError, match=r"global index -1 \(entry 0\)"):
        m.to_local([-1])
    with pytest.raises(IndexError, match=r"dataset index 2 \(entry 1\) is out of range \[0, 2\)"):
        m.to_global([0, 2], [0, 0])
    with pytest.raises(IndexError, match=r"local index 5 \(entry 0\) is out of range \[0, 5\) of dataset 1"):
        m.to_global([1], [5])
