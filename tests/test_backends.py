"""Native and numba kernels give bit-identical tables and streams; backend selection and fallback."""

from __future__ import annotations

import numpy as np
import pytest

import fastmix
from fastmix import _backend
from fastmix.alias import AliasTable
from fastmix.errors import ConfigError
from fastmix.index_map import IndexMap
from fastmix.sampler import MixtureSampler

CONFIGS = {
    "two": dict(dataset_sizes=[10000, 1000], dataset_weights=[1.0, 10.0]),
    "one": dict(dataset_sizes=[12345]),
    "twelve_with_zeros": dict(dataset_sizes=list(range(1, 13)), dataset_weights=[0.0, 1.0] * 6,
                              weighting="per_dataset"),
    "frames": dict(dataset_sizes=[50, 8, 300], dataset_weights=[2.0, 1.0, 1.0],
                   frame_weights=[np.linspace(0.0, 3.0, 50), None, np.random.default_rng(0).uniform(size=300)]),
    "huge": dict(dataset_sizes=[3 << 61, 5]),  # frequent Lemire rejections
}


@pytest.mark.parametrize("batching", ["random", "stratified"])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("rank, world_size", [(0, 1), (2, 3)])
def test_streams_are_bit_identical(name: str, batching: str, rank: int, world_size: int) -> None:
    kw = dict(CONFIGS[name], seed=123456789 + 2**90, batching=batching, rank=rank, world_size=world_size)
    native, numba = (MixtureSampler(**kw, backend=b) for b in ("native", "numba"))
    for s in (native, numba):
        s.set_epoch(7)
    for n in (1, 31, 64, 1000, 0, 3):
        np.testing.assert_array_equal(native.next_indices(n), numba.next_indices(n))


@pytest.mark.parametrize("seed", range(4))
def test_alias_tables_and_draws_are_bit_identical(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.pareto(0.8, size=int(rng.integers(1, 5000))) * (rng.uniform(size=1) < 0.9)
    w[0] += 1.0
    a, b = AliasTable(w, backend="native"), AliasTable(w, backend="numba")
    np.testing.assert_array_equal(a.threshold, b.threshold)
    np.testing.assert_array_equal(a.alias, b.alias)
    np.testing.assert_array_equal(a.draw(500, seed=seed, start=17, stride=3), b.draw(500, seed=seed, start=17, stride=3))


def test_index_maps_agree() -> None:
    sizes = np.random.default_rng(1).integers(1, 100, size=30)
    g = np.random.default_rng(2).integers(0, int(sizes.sum()), 5000)
    a, b = IndexMap(sizes, backend="native"), IndexMap(sizes, backend="numba")
    for x, y in zip(a.to_local(g), b.to_local(g), strict=True):
        np.testing.assert_array_equal(x, y)


def test_backend_selection(monkeypatch) -> None:
    monkeypatch.delenv("FASTMIX_BACKEND", raising=False)
    assert fastmix.backend() == "native"
    monkeypatch.setenv("FASTMIX_BACKEND", "numba")
    assert fastmix.backend() == "numba"
    assert _backend.kernels().__name__ == "fastmix._kernels_numba"
    monkeypatch.setenv("FASTMIX_BACKEND", "cuda")
    with pytest.raises(ConfigError, match="FASTMIX_BACKEND='cuda'"):
        fastmix.backend()


def test_missing_extension_falls_back_to_numba_with_a_warning(monkeypatch) -> None:
    real_load = _backend._load

    def load(name: str):
        if name == "native":
            raise ImportError("No module named 'fastmix._native'")
        return real_load(name)

    monkeypatch.delenv("FASTMIX_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_load", load)
    _backend._resolve.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="using the numba kernels"):
            assert _backend.backend() == "numba"
        monkeypatch.setenv("FASTMIX_BACKEND", "native")
        with pytest.raises(ImportError, match="FASTMIX_BACKEND=native"):
            _backend.backend()
    finally:
        _backend._resolve.cache_clear()


@pytest.mark.parametrize("start, stride", [(0, 1), (7, 1), (3, 2), (1, 5)])
def test_native_threads_do_not_change_the_stream(start: int, stride: int) -> None:
    from fastmix import _native, seeds

    s = MixtureSampler([10000, 1000, 3], [1.0, 10.0, 2.0])
    m = s.mixture
    args = (seeds.stream(9, 2, seeds.STREAM_MIXTURE), start, stride, m.dataset_table.threshold,
            m.dataset_table.alias, s.index_map.offsets, m.frame_threshold, m.frame_alias, m.frame_offsets)
    outs = []
    for threads in (1, 2, 3, 8):
        out = np.empty(200_001, dtype=np.int64)  # > 2 chunks of 2^15 draws, odd tail: threads really run
        _native.mixture_draw(*args, out, threads)
        outs.append(out)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
