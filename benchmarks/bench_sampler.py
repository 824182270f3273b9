"""Sampling-core throughput: fastmix (native, numba) against WeightedRandomSampler iterated as a DataLoader
iterates it (a full epoch: multinomial over N, then one Python int per index), torch.multinomial and
numpy Generator.choice; alias build rate; index-mapping rate.

Groups "sampler N=..." compare indices/s on a two-dataset mixture (90 % / 10 % of the frames, weights 1 and 10,
per_sample). FASTMIX_BENCH_QUICK=1 shrinks N (1e5, 1e6) and the big-mixture draws.
Run: python -m pytest benchmarks/bench_sampler.py --benchmark-enable -q
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, WeightedRandomSampler

from fastmix.core.alias import AliasTable
from fastmix.core.index_map import IndexMap
from fastmix.core.sampler import MixtureSampler

QUICK = os.environ.get("FASTMIX_BENCH_QUICK", "") not in ("", "0")
SIZES = {"1e5": 10**5, "1e6": 10**6} if QUICK else {"1e6": 10**6, "1e7": 10**7}
BIG = {"2^25": 2**25, "1e8": 10**8}
BIG_DRAWS = 10**6 if QUICK else 10**7
ROUNDS = 5  # reference and bound rows (each round is 0.1-3 s)
FAST_ROUNDS = 20  # fastmix rows: a round is a few ms, so take the median of many (the 2-core VM is noisy)


def two_dataset(n: int) -> tuple[list[int], list[float]]:
    a = n * 9 // 10
    return [a, n - a], [1.0, 10.0]


def per_sample_weights(n: int) -> torch.Tensor:
    sizes, weights = two_dataset(n)
    return torch.cat([torch.full((s,), w, dtype=torch.double) for s, w in zip(sizes, weights, strict=True)])


def tag(benchmark, group: str, role: str, items: int, unit: str = "indices") -> None:
    benchmark.group = group
    benchmark.extra_info.update(role=role, items=items, unit=unit)


@pytest.mark.parametrize("label", list(SIZES))
@pytest.mark.parametrize("backend", ["native", "native-1-thread", "numba"])
def test_fastmix_next_indices(benchmark, monkeypatch, label: str, backend: str) -> None:
    """One next_indices(N) call (native: up to FASTMIX_THREADS threads; "native-1-thread": one core)."""
    n = SIZES[label]
    if backend == "native-1-thread":
        monkeypatch.setenv("FASTMIX_THREADS", "1")
        backend = "native"
    s = MixtureSampler(*two_dataset(n), seed=0, backend=backend)
    s.next_indices(1000)  # loads the numba cache / warms up
    tag(benchmark, f"sampler N={label}", "fastmix", n)
    out = benchmark.pedantic(s.next_indices, args=(n,), rounds=FAST_ROUNDS, iterations=1, warmup_rounds=1)
    assert out.shape == (n,)


@pytest.mark.parametrize("label", list(SIZES))
def test_fastmix_next_indices_batches_of_256(benchmark, label: str) -> None:
    n = SIZES[label]
    s = MixtureSampler(*two_dataset(n), seed=0)
    calls = 2000

    def batches() -> None:
        for _ in range(calls):
            s.next_indices(256)

    tag(benchmark, f"sampler N={label}", "fastmix", 256 * calls)
    benchmark.pedantic(batches, rounds=FAST_ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("label", list(SIZES))
def test_weighted_random_sampler_epoch(benchmark, label: str) -> None:
    n = SIZES[label]
    sampler = WeightedRandomSampler(per_sample_weights(n), num_samples=n, replacement=True,
                                    generator=torch.Generator().manual_seed(0))

    def epoch() -> int:  # the DataLoader's index path: BatchSampler over iter(sampler), one Python int per index
        return sum(len(b) for b in BatchSampler(sampler, batch_size=256, drop_last=False))

    tag(benchmark, f"sampler N={label}", "reference", n)
    assert benchmark.pedantic(epoch, rounds=1 if n > 10**6 else ROUNDS, iterations=1) == n


@pytest.mark.parametrize("label", list(SIZES))
def test_torch_multinomial(benchmark, label: str) -> None:
    n = SIZES[label]
    w = per_sample_weights(n)
    gen = torch.Generator().manual_seed(0)
    tag(benchmark, f"sampler N={label}", "bound", n)
    benchmark.pedantic(lambda: torch.multinomial(w, n, replacement=True, generator=gen), rounds=ROUNDS,
                       iterations=1)


@pytest.mark.parametrize("label", list(SIZES))
def test_numpy_choice(benchmark, label: str) -> None:
    n = SIZES[label]
    p = per_sample_weights(n).numpy()
    p = p / p.sum()
    rng = np.random.default_rng(0)
    tag(benchmark, f"sampler N={label}", "bound", n)
    benchmark.pedantic(lambda: rng.choice(n, size=n, p=p), rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("label", list(BIG))
def test_fastmix_big_mixture(benchmark, label: str) -> None:
    n = BIG[label]
    s = MixtureSampler(*two_dataset(n), seed=0)
    tag(benchmark, f"sampler N={label}", "fastmix", BIG_DRAWS)
    out = benchmark.pedantic(s.next_indices, args=(BIG_DRAWS,), rounds=FAST_ROUNDS, iterations=1, warmup_rounds=1)
    assert out.max() < n


@pytest.mark.parametrize("backend", ["native", "numba"])
def test_alias_build(benchmark, backend: str) -> None:
    n = 10**5 if QUICK else 10**6
    w = np.random.default_rng(0).exponential(size=n)
    AliasTable(w[:10], backend=backend)
    tag(benchmark, f"alias build N={n:.0e}", "fastmix", n, unit="frames")
    benchmark.pedantic(lambda: AliasTable(w, backend=backend), rounds=FAST_ROUNDS, iterations=1)


@pytest.mark.parametrize("k", [2, 20])
def test_index_map_to_local(benchmark, k: int) -> None:
    n = 10**6 if QUICK else 10**7
    m = IndexMap(np.full(k, 5 * 10**6 // k))
    g = np.random.default_rng(0).integers(0, m.total, n)
    tag(benchmark, f"index map K={k}", "fastmix", n)
    benchmark.pedantic(m.to_local, args=(g,), rounds=FAST_ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("k", [2, 20])
def test_numpy_searchsorted_to_local(benchmark, k: int) -> None:
    n = 10**6 if QUICK else 10**7
    m = IndexMap(np.full(k, 5 * 10**6 // k))
    g = np.random.default_rng(0).integers(0, m.total, n)

    def to_local() -> tuple[np.ndarray, np.ndarray]:
        d = np.searchsorted(m.offsets, g, side="right") - 1
        return d, g - m.offsets[d]

    tag(benchmark, f"index map K={k}", "reference", n)
    benchmark.pedantic(to_local, rounds=ROUNDS, iterations=1)


