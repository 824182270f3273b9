"""Native and numba kernels give bit-identical tables and streams (also with the JIT off); stratified batches
against an independent reference (exact shares, numpy's Philox); backend selection and fallback."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

import fastmix
from fastmix.core.alias import AliasTable
from fastmix.core.index_map import IndexMap
from fastmix.core.sampler import MixtureSampler
from fastmix.errors import ConfigError
from fastmix.kernels import backend as _backend

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
    assert _backend.kernels().__name__ == "fastmix.kernels.numba_kernels"
    monkeypatch.setenv("FASTMIX_BACKEND", "cuda")
    with pytest.raises(ConfigError, match="FASTMIX_BACKEND='cuda'"):
        fastmix.backend()


def test_native_is_the_extension_only_while_the_backend_is_native(monkeypatch) -> None:
    monkeypatch.delenv("FASTMIX_BACKEND", raising=False)
    assert _backend.native() is _backend.kernels("native")
    assert _backend.native().__name__ == "fastmix.kernels._native"
    monkeypatch.setenv("FASTMIX_BACKEND", "numba")
    assert _backend.native() is None
    monkeypatch.setenv("FASTMIX_BACKEND", "native")
    assert _backend.native() is _backend.kernels("native")


def test_missing_extension_falls_back_to_numba_with_a_warning(monkeypatch) -> None:
    real_load = _backend._load

    def load(name: str):
        if name == "native":
            raise ImportError("No module named 'fastmix.kernels._native'")
        return real_load(name)

    monkeypatch.delenv("FASTMIX_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_load", load)
    _backend.reset()
    try:
        with pytest.warns(RuntimeWarning, match="using the numba kernels"):
            assert _backend.backend() == "numba"
        assert _backend.native() is None  # the pixel kernels fall back too
        monkeypatch.setenv("FASTMIX_BACKEND", "native")
        with pytest.raises(ImportError, match="FASTMIX_BACKEND=native"):
            _backend.backend()
    finally:
        _backend.reset()


@pytest.mark.parametrize("start, stride", [(0, 1), (7, 1), (3, 2), (1, 5)])
def test_native_threads_do_not_change_the_stream(start: int, stride: int) -> None:
    from fastmix.core import seeds
    from fastmix.kernels import _native

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


# ---------------------------------------------------------------- the numba kernels with the JIT off
_JIT_OFF_SCRIPT = """
import sys, warnings
import math
from fractions import Fraction

import numpy as np
from numba.core import config
assert config.DISABLE_JIT, "NUMBA_DISABLE_JIT did not take"
warnings.simplefilter("ignore", RuntimeWarning)  # uint64 wrap-around of numpy scalars is intended
from fastmix.kernels import numba_kernels as k
from tests.test_backends import jit_off_cases
out = {}
for name, (fn, args, outputs) in jit_off_cases().items():
    assert getattr(k, fn).__class__.__name__ == "function", "still jitted"
    ret = getattr(k, fn)(*args)
    for i in outputs:
        out[f"{name}/{i}"] = args[i]
    out[f"{name}/ret"] = np.asarray(-2 if ret is None else ret)
np.savez(sys.argv[1], **out)
"""


def jit_off_cases() -> dict[str, tuple[str, tuple, tuple[int, ...]]]:
    """Small inputs of every numba kernel: name -> (kernel, args, indices of the args it writes)."""
    from fastmix.core import seeds

    cases: dict[str, tuple[str, tuple, tuple[int, ...]]] = {}
    rng = np.random.default_rng(5)
    key = np.array([2**64 - 3, 12345], dtype=np.uint64)
    counters = rng.integers(0, 2**63, size=(5, 4), dtype=np.int64).astype(np.uint64)
    cases["philox"] = ("philox4x64", (key, counters, np.empty_like(counters)), (2,))
    w = rng.pareto(0.8, size=40)
    w = w / w.max()
    cases["alias_build"] = ("alias_build", (w, np.empty(40, np.uint64), np.empty(40, np.int64)), (1, 2))
    t = AliasTable(w, backend="native")
    cases["alias_draw"] = ("alias_draw", (t.threshold, t.alias, seeds.stream(7, 1, seeds.STREAM_ALIAS), 5, 3,
                                          np.empty(30, np.int64)), (5,))
    for name in ("two", "frames", "huge"):
        for batching, (start, stride) in (("random", (0, 1)), ("random", (3, 2)), ("stratified", (1, 3))):
            s = MixtureSampler(**CONFIGS[name], seed=2**70 + 9, batching=batching, backend="native")
            m = s.mixture
            tables = (m.dataset_table.threshold, m.dataset_table.alias, s.index_map.offsets, m.frame_threshold,
                      m.frame_alias, m.frame_offsets)
            mix, perm = (seeds.stream(s.seed, 2, tag) for tag in (seeds.STREAM_MIXTURE, seeds.STREAM_PERMUTATION))
            out = np.empty(25, np.int64)
            if batching == "random":
                cases[f"mixture_{name}_{start}_{stride}"] = ("mixture_draw", (mix, start, stride, *tables, out, 1),
                                                             (9,))
            else:
                labels = np.repeat(np.arange(m.num_datasets, dtype=np.int64), s._stratified_counts(25))
                cases[f"stratified_{name}"] = ("stratified_draw", (mix, perm, start, stride, *tables, labels, out),
                                               (9, 10))
    offsets = IndexMap([3, 9, 1, 20]).offsets
    g = rng.integers(0, 33, size=50)
    cases["to_local"] = ("to_local", (offsets, g, np.empty(50, np.int64), np.empty(50, np.int64)), (2, 3))
    d, local = IndexMap([3, 9, 1, 20]).to_local(g)
    cases["to_global"] = ("to_global", (offsets, d, local, np.empty(50, np.int64)), (3,))
    cases["to_local_bad"] = ("to_local", (offsets, np.array([0, 33]), np.empty(2, np.int64),
                                          np.empty(2, np.int64)), ())
    return cases


def test_numba_kernels_without_jit_equal_native(tmp_path) -> None:
    """NUMBA_DISABLE_JIT=1 runs _kernels_numba as plain Python (what numba compiles is then what is tested
    line by line, and coverage tools see it): the outputs equal the native kernels' bit for bit."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from fastmix.kernels import _native

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONPATH=os.pathsep.join([str(root), *sys.path]))
    res = subprocess.run([sys.executable, "-c", _JIT_OFF_SCRIPT, str(tmp_path / "out.npz")], env=env, cwd=root,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    cases = jit_off_cases()
    assert {key.split("/")[0] for key in got.files} == set(cases)
    for name, (fn, args, outputs) in cases.items():
        ret = getattr(_native, fn)(*args)
        for i in outputs:
            np.testing.assert_array_equal(got[f"{name}/{i}"], args[i], err_msg=f"{name}: argument {i}")
        np.testing.assert_array_equal(got[f"{name}/ret"], np.asarray(-2 if ret is None else ret), err_msg=name)


# ---------------------------------------------------------------- stratified draws: an independent reference
def _philox_words(seed: int, epoch: int, tag: int, block: int, attempt: int = 0) -> list[int]:
    """Block `block` of stream (seed, epoch, tag) from numpy's own Philox (see fastmix.core.seeds)."""
    from fastmix.core import seeds

    return [int(v) for v in np.random.Philox(key=seed, counter=seeds.numpy_counter(epoch, tag, block, attempt))
            .random_raw(4)]


def _lemire(seed: int, epoch: int, tag: int, block: int, slot: int, n: int) -> int:
    attempt = 0
    while True:
        m = _philox_words(seed, epoch, tag, block, attempt)[slot] * n
        if m & ((1 << 64) - 1) >= (1 << 64) % n:
            return m >> 64
        attempt += 1


def _largest_remainder(shares: list[Fraction], drawn: list[int], total: int, n: int) -> list[int]:
    """Counts of the next n slots from exact shares: quota_i = (total + n)·share_i − drawn_i, floors (of the
    quota clipped at 0), then one more for the largest remainders (ties: lower index), or one less for the
    smallest remainders when clipping overshot."""
    quota = [(total + n) * s - c for s, c in zip(shares, drawn, strict=True)]
    counts = [max(0, math.floor(q)) for q in quota]
    rem = [q - c for q, c in zip(quota, counts, strict=True)]
    short = n - sum(counts)
    for i in sorted(range(len(rem)), key=lambda i: (-rem[i], i))[:max(short, 0)]:
        counts[i] += 1
    for i in [i for i in sorted(range(len(rem)), key=lambda i: (rem[i], i)) if counts[i] > 0][:max(-short, 0)]:
        counts[i] -= 1
    return counts


def reference_stratified(sizes: list[int], weights: list[float], weighting: str, frame_tables: list,
                         seed: int, epoch: int, rank: int, world: int, batches: list[int]) -> list[list[int]]:
    """Global indices of successive stratified batches on one rank, from exact (Fraction) shares, numpy's
    Philox and the layout in csrc/mixture.hpp: Fisher-Yates over the grouped labels with word 0 of block p_i
    of the permutation stream, then the local index of slot i from the mixture stream at position p_i."""
    from fastmix.core import seeds

    mass = [Fraction(w) * (n if weighting == "per_sample" else 1) for w, n in zip(weights, sizes, strict=True)]
    shares = [m / sum(mass) for m in mass]
    offsets = [sum(sizes[:d]) for d in range(len(sizes))]
    frame_layout = any(t is not None for t in frame_tables)
    drawn, total, position, out = [0] * len(sizes), 0, 0, []
    for n in batches:
        counts = _largest_remainder(shares, drawn, total, n)
        drawn, total = [a + b for a, b in zip(drawn, counts, strict=True)], total + n
        labels = [d for d, c in enumerate(counts) for _ in range(c)]
        ps = [rank + world * (position + i) for i in range(n)]
        for i in range(n - 1, 0, -1):
            j = _lemire(seed, epoch, seeds.STREAM_PERMUTATION, ps[i], 0, i + 1)
            labels[i], labels[j] = labels[j], labels[i]
        batch = []
        for d, p in zip(labels, ps, strict=True):
            block, slot = (p, 1) if frame_layout else (p >> 1, 2 * (p & 1) + 1)
            t = frame_tables[d]
            column = _lemire(seed, epoch, seeds.STREAM_MIXTURE, block, slot, len(t[0]) if t else sizes[d])
            if t is not None:
                coin = _philox_words(seed, epoch, seeds.STREAM_MIXTURE, block)[2]
                column = column if coin < int(t[0][column]) else int(t[1][column])
            batch.append(offsets[d] + column)
        out.append(batch)
        position += n
    return out


STRATIFIED_CASES = {
    "two": ([10000, 1000], [1.0, 10.0], "per_sample", None),
    "thirds": ([7, 7, 7], [1.0, 1.0, 1.0], "per_sample", None),  # exact ties of the remainders
    "tiny_share": ([100000, 3, 50], [1.0, 1.0, 30.0], "per_sample", None),  # quotas below 1: the carry decides
    "frames": ([50, 8, 300], [2.0, 1.0, 1.0], "per_dataset",
               [np.linspace(0.0, 3.0, 50), None, np.random.default_rng(0).uniform(size=300)]),
    "huge": ([3 << 61, 5], [1.0, 2.0**62], "per_sample", None),  # Lemire rejections
}


@pytest.mark.parametrize("backend", ["native", "numba"])
@pytest.mark.parametrize("rank, world", [(0, 1), (1, 3)])
@pytest.mark.parametrize("name", list(STRATIFIED_CASES))
def test_stratified_batches_equal_independent_reference(name: str, rank: int, world: int, backend: str) -> None:
    sizes, weights, weighting, fw = STRATIFIED_CASES[name]
    seed, epoch, batches = 2**77 + 5, 3, [7, 1, 16, 0, 5, 12]
    s = MixtureSampler(sizes, weights, weighting=weighting, frame_weights=fw, seed=seed, batching="stratified",
                       rank=rank, world_size=world, backend=backend)
    s.set_epoch(epoch)
    tables = [None if t is None else (t.threshold, t.alias) for t in s.mixture.frame_tables]
    expected = reference_stratified(sizes, weights, weighting, tables, seed, epoch, rank, world, batches)
    assert [s.next_indices(n).tolist() for n in batches] == expected
