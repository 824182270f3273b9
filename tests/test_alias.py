"""AliasTable: exact probabilities from the built table, validation, draws against a numpy-Philox reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fastmix.core import seeds
from fastmix.core.alias import AliasTable
from fastmix.errors import ConfigError

M64 = (1 << 64) - 1
BACKENDS = ["native", "numba"]


def weight_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "single": np.array([2.5]),
        "two": np.array([1.0, 3.0]),
        "zeros": np.array([0.0, 1.0, 0.0, 2.0, 0.0]),
        "uniform": np.ones(1000),
        "random": rng.uniform(0, 1, 5000),
        "skewed": rng.pareto(1.0, 3000) + 1e-6,
        "tiny_and_huge": np.array([1e-300, 1e300, 1.0, 1e-5]),
        "large": rng.exponential(size=200_000),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(weight_cases()))
def test_reconstructed_probabilities_equal_normalized_weights(case: str, backend: str) -> None:
    w = weight_cases()[case]
    p = AliasTable(w, backend=backend).probabilities()
    expected = w / w.sum()
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-15 * max(1.0, len(w) / 1e3))
    assert (p[expected == 0] == 0).all()  # a zero weight is exactly never drawn
    assert abs(p.sum() - 1.0) < 1e-12


def test_probabilities_of_a_hand_built_table() -> None:
    """Reconstruction follows the threshold/alias arithmetic exactly (independent of the builder)."""
    t = AliasTable([1.0, 1.0])
    t.threshold = np.array([1 << 62, M64], dtype=np.uint64)  # column 0 keeps with 1/4, gives 3/4 to 1
    t.alias = np.array([1, 1], dtype=np.int64)
    np.testing.assert_allclose(t.probabilities(), [0.125, 0.875], rtol=1e-15)


@pytest.mark.parametrize("bad, pattern", [
    ([1.0, -2.0], r"weights must be non-negative, got weights\[1\]=-2\.0"),
    ([1.0, float("nan")], r"weights must be finite, got weights\[1\]=nan"),
    ([float("inf"), 1.0], r"weights must be finite, got weights\[0\]=inf"),
    ([0.0, 0.0, 0.0], r"must not all be zero, got weights=\[0\.0, 0\.0, 0\.0\]"),
    ([], r"non-empty"),
    ([[1.0, 2.0]], r"1-D"),
])
def test_bad_weights_are_named(bad, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        AliasTable(bad)


def test_tables_are_64_bit() -> None:
    t = AliasTable(np.ones(10))
    assert t.threshold.dtype == np.uint64 and t.alias.dtype == np.int64 and len(t) == 10


def reference_two_word_draw(t: AliasTable, seed: int, epoch: int, position: int) -> int:
    """Column = Lemire of word 0 (rejections: word 0 of attempts 1, 2, ...), coin = word 1 < threshold."""
    n, attempt = len(t), 0
    t_reject = (1 << 64) % n
    while True:
        ctr = seeds.numpy_counter(epoch, seeds.STREAM_ALIAS, position, attempt)
        w = [int(v) for v in np.random.Philox(key=seed, counter=ctr).random_raw(4)]
        if attempt == 0:
            coin = w[1]
        m = w[0] * n
        if m & M64 >= t_reject:
            j = m >> 64
            return j if coin < int(t.threshold[j]) else int(t.alias[j])
        attempt += 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_draw_matches_numpy_philox_reference(backend: str) -> None:
    t = AliasTable(np.random.default_rng(0).uniform(0, 1, 37), backend=backend)
    got = t.draw(50, seed=99, epoch=4, start=1000, stride=7)
    expected = [reference_two_word_draw(t, 99, 4, 1000 + 7 * i) for i in range(50)]
    assert got.tolist() == expected


def test_draws_follow_the_table() -> None:
    w = np.array([5.0, 0.0, 1.0, 3.0, 0.5, 2.0])
    t = AliasTable(w)
    x = t.draw(200_000, seed=1)
    counts = np.bincount(x, minlength=len(w))
    assert counts[1] == 0
    keep = w > 0
    p = stats.chisquare(counts[keep], w[keep] / w.sum() * len(x)).pvalue
    assert p > 1e-4
