"""Philox4x64-10 equals numpy.random.Philox block for block; seeds.py's key/counter derivation."""

from __future__ import annotations

import numpy as np
import pytest

from fastmix.core import seeds
from fastmix.errors import ConfigError
from fastmix.kernels.backend import kernels

M64 = (1 << 64) - 1
BACKENDS = ["native", "numba"]


def words(x: int, n: int) -> list[int]:
    return [(x >> (64 * i)) & M64 for i in range(n)]


def numpy_block(key: int, counter: int) -> list[int]:
    """numpy's first 4 raw outputs for `counter` (it increments before generating)."""
    return [int(v) for v in np.random.Philox(key=key, counter=counter).random_raw(4)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_blocks_equal_numpy(backend: str) -> None:
    rng = np.random.default_rng(7)
    keys = [0, 1, M64, 1 << 64, int(rng.integers(0, 2**63)) | int(rng.integers(0, 2**63)) << 64]
    counters = [0, 1, M64, (1 << 128) - 1, (1 << 256) - 2] + [
        int.from_bytes(rng.bytes(32), "little") for _ in range(6)]
    for key in keys:
        ours = np.array([words((c + 1) % (1 << 256), 4) for c in counters], dtype=np.uint64)
        out = np.empty_like(ours)
        kernels(backend).philox4x64(np.array(words(key, 2), dtype=np.uint64), ours, out)
        for c, row in zip(counters, out, strict=True):
            assert [int(v) for v in row] == numpy_block(key, c), (hex(key), hex(c))


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_blocks_are_numpy_philox_sequence(backend: str) -> None:
    """Blocks 0..n-1 of a stream = one numpy Philox stream started at numpy_counter(epoch, tag, 0)."""
    seed, epoch, tag, n = 2**100 + 12345, 3, seeds.STREAM_MIXTURE, 64
    s = seeds.stream(seed, epoch, tag)
    counters = np.array([words(seeds.counter(epoch, tag, b), 4) for b in range(n)], dtype=np.uint64)
    out = np.empty_like(counters)
    kernels(backend).philox4x64(s[:2].copy(), counters, out)
    expected = np.random.Philox(key=seed, counter=seeds.numpy_counter(epoch, tag, 0)).random_raw(4 * n)
    np.testing.assert_array_equal(out.ravel(), expected)


def test_counter_layout_and_key() -> None:
    assert seeds.philox_key(5 + (9 << 64)) == (5, 9)
    c = seeds.counter(epoch=2, tag=1, block=7, attempt=3)
    assert words(c, 4) == [7, 2, 1, 3]
    assert seeds.numpy_counter(0, 0, 0) == (1 << 256) - 1  # numpy's +1 wraps to block 0
    np.testing.assert_array_equal(seeds.stream(5 + (9 << 64), 4, 2), np.array([5, 9, 4, 2], dtype=np.uint64))
    assert seeds.rank_start(rank=2, world_size=4, local_position=10) == 42


@pytest.mark.parametrize("bad", [-1, 1 << 128, 1.5, "3", True])
def test_bad_seed_is_named(bad) -> None:
    with pytest.raises(ConfigError, match="seed"):
        seeds.check_seed(bad)


def test_bad_epoch_is_named() -> None:
    with pytest.raises(ConfigError, match="epoch must be an integer"):
        seeds.check_epoch(-3)
