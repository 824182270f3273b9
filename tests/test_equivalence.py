"""Statistical equivalence to WeightedRandomSampler: passes when it should (fastmix and torch's own sampler, at
several seeds, with a false-alarm rate consistent with the stated one), fails on wrong weights and on samplers that
skip frames (odd frames, the last frame of each dataset) while keeping every dataset's share."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from fastmix.core.index_map import IndexMap
from fastmix.core.mixture import Mixture
from fastmix.core.sampler import MixtureSampler
from fastmix.tools import equivalence
from fastmix.tools.equivalence import (
    check_equivalence,
    chi_square_gof,
    frame_bins,
    hash_order,
    random_frame_weights,
    reference_draws,
)

DRAWS = 200_000
NUM_TESTS = 16  # 5 goodness-of-fit + 1 coverage per sampler (fastmix, reference), 4 two-sample


class _Remapped:
    """A sampler with a bug: MixtureSampler's draws passed through `bug(dataset, local) -> local`."""

    def __init__(self, sizes, weights, bug, seed=0) -> None:
        self._inner = MixtureSampler(sizes, weights, seed=seed)
        self.index_map = self._inner.index_map
        self._bug = bug

    def next_indices(self, n: int) -> np.ndarray:
        d, local = self.index_map.to_local(self._inner.next_indices(n))
        return self.index_map.to_global(d, self._bug(d, local, self.index_map.sizes[d]))


class _Torch:
    """torch's WeightedRandomSampler itself as the sampler under test (its own seed, not the reference's)."""

    def __init__(self, sizes, weights, seed: int) -> None:
        self.index_map = IndexMap(sizes)
        self._weights = Mixture(sizes, weights).reference_weights()
        self._seed = seed

    def next_indices(self, n: int) -> np.ndarray:
        return reference_draws(self._weights, n, self._seed)


def test_two_datasets_pass() -> None:
    r = check_equivalence([10000, 1000], [1.0, 10.0], draws=DRAWS, seed=0)
    assert r.passed, r.format()
    assert len(r.tests) == NUM_TESTS and all(0 <= t.p_value <= 1 for t in r.tests)
    assert r.per_test_alpha == pytest.approx(1e-3 / NUM_TESTS)
    np.testing.assert_allclose(r.expected_shares, [0.5, 0.5])


def test_five_datasets_with_per_frame_weights_pass() -> None:
    sizes = [3000, 500, 1200, 50, 800]
    r = check_equivalence(sizes, [1.0, 4.0, 0.5, 20.0, 2.0], frame_weights=random_frame_weights(sizes, 1),
                          draws=DRAWS, seed=1)
    assert r.passed, r.format()


def test_per_dataset_weighting_passes() -> None:
    r = check_equivalence([5000, 200, 40], [1.0, 1.0, 2.0], weighting="per_dataset", draws=DRAWS, seed=2)
    assert r.passed, r.format()


def test_per_episode_weighting_with_random_filters_passes() -> None:
    sizes = [2000, 700]
    episodes = equivalence.random_episode_lengths(sizes, 3)
    filters = equivalence.random_frame_filters(episodes, 4, trim_start=1, trim_end=1)
    r = check_equivalence(sizes, [1.0, 2.0], weighting="per_episode", episodes=episodes, frame_filters=filters,
                          draws=DRAWS, seed=3)
    assert r.passed, r.format()
    assert len(r.tests) == NUM_TESTS and r.zero_probability_draws == 0 and sum(r.kept_frames) < sum(sizes)


@pytest.mark.parametrize("wrong", [
    dict(dataset_weights=[1.0, 10.0], weighting="per_dataset"),  # wrong semantics
    dict(dataset_weights=[1.0, 11.0]),  # 10 % too much weight on dataset 1
])
def test_wrong_weights_fail(wrong: dict) -> None:
    sampler = MixtureSampler([10000, 1000], seed=0, **wrong)
    r = check_equivalence([10000, 1000], [1.0, 10.0], draws=DRAWS, seed=0, sampler=sampler)
    assert not r.passed
    by_name = {t.name: t.p_value for t in r.tests}
    assert by_name["fastmix vs expected (datasets)"] < 1e-6
    assert by_name["fastmix vs reference (datasets)"] < 1e-6
    assert by_name["reference vs expected (datasets)"] > 1e-3  # the reference itself is fine
    assert "verdict: FAIL" in r.format()


def test_wrong_frame_weights_fail() -> None:
    sizes = [2000, 2000]
    fw = random_frame_weights(sizes, 3)
    flipped = [fw[0][::-1].copy(), fw[1]]  # same dataset shares, frames reweighted
    sampler = MixtureSampler(sizes, frame_weights=flipped, seed=0)
    r = check_equivalence(sizes, frame_weights=fw, draws=DRAWS, seed=0, sampler=sampler)
    assert not r.passed
    assert {t.name: t.p_value for t in r.tests}["fastmix vs expected (position bins)"] < 1e-6


def test_frame_bins_expect_at_least_five() -> None:
    p = np.random.default_rng(0).pareto(1.5, 20000)
    p /= p.sum()
    bins = frame_bins(p, 50_000, max_bins=1000)
    expected = np.bincount(bins, weights=p * 50_000)
    assert (expected >= 5).all() and bins.max() < 1000 and (np.diff(bins) >= 0).all()


def test_cli_exit_status_and_json(capsys) -> None:
    parser = argparse.ArgumentParser()
    equivalence.add_arguments(parser)
    args = parser.parse_args(["--sizes", "1000", "100", "--weights", "1", "10", "--draws", "50000", "--json"])
    assert equivalence.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "PASS" and out["draws"] == 50000 and len(out["tests"]) == NUM_TESTS
    args = parser.parse_args(["--sizes", "300", "200", "100", "--frame-weights-seed", "4", "--draws", "50000"])
    assert equivalence.run(args) == 0
    assert "verdict: PASS" in capsys.readouterr().out


SIZES, WEIGHTS = [3000, 1001, 250], [1.0, 3.0, 8.0]  # 10 to 40 expected draws per frame at DRAWS


def _p(result, name: str) -> float:
    return {t.name: t.p_value for t in result.tests}[name]


def test_sampler_skipping_odd_frames_fails() -> None:
    odd_to_even = _Remapped(SIZES, WEIGHTS, lambda d, local, n: local - local % 2)  # every odd frame -> the one before
    r = check_equivalence(SIZES, WEIGHTS, draws=DRAWS, seed=0, sampler=odd_to_even)
    assert not r.passed
    assert abs(r.fastmix_shares[0] - r.expected_shares[0]) < 0.01  # dataset shares are right: only coverage sees it
    assert _p(r, "fastmix vs expected (dataset, frame mod 6)") < 1e-100
    assert _p(r, "fastmix vs expected (frames)") < 1e-100
    assert _p(r, "fastmix vs expected (hash bins)") < 1e-10
    assert _p(r, "fastmix never-drawn frames (coverage)") < 1e-50
    assert _p(r, "fastmix vs reference (dataset, frame mod 6)") < 1e-100
    assert _p(r, "reference vs expected (frames)") > r.per_test_alpha  # the reference itself is fine
    assert "verdict: FAIL" in r.format() and "<- fails" in r.format()


def test_sampler_never_drawing_the_last_frame_fails() -> None:
    no_last = _Remapped(SIZES, WEIGHTS, lambda d, local, n: np.minimum(local, n - 2))  # off by one at the end
    r = check_equivalence(SIZES, WEIGHTS, draws=DRAWS, seed=1, sampler=no_last)
    assert not r.passed
    cover = next(t for t in r.tests if t.name == "fastmix never-drawn frames (coverage)")
    # the likeliest unseen frame is dataset 2's last: 8/(3000+3003+2000) of DRAWS (~200 expected draws)
    assert cover.statistic == pytest.approx(DRAWS * 8 / (3000 + 3 * 1001 + 8 * 250))
    assert cover.p_value < 1e-80


def test_frames_missed_rarely_are_beyond_reach() -> None:
    """The stated limit: a frame expected a few times can go unseen by chance, so missing it cannot fail."""
    no_last = _Remapped([5000], None, lambda d, local, n: np.minimum(local, n - 2))
    r = check_equivalence([5000], draws=10_000, seed=2, sampler=no_last)  # 2 expected draws per frame
    assert _p(r, "fastmix never-drawn frames (coverage)") > 0.5


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_fastmix_and_torch_pass_at_several_seeds(seed: int) -> None:
    sizes, weights = [2000, 300, 45], [1.0, 5.0, 20.0]
    for sampler in (None, _Torch(sizes, weights, seed=1000 + seed)):
        r = check_equivalence(sizes, weights, draws=100_000, seed=seed, sampler=sampler)
        assert r.passed, r.format()


def test_false_alarm_rate_is_consistent() -> None:
    """Under a correct sampler each chi-square p-value is ~ Uniform(0, 1): over 6 seeds x 14 tests, the number
    below 0.05 stays within what Binomial(84, 0.05) allows (tail probability > 1e-4 both ways), so the
    per-test threshold alpha/16 means what it says and the check's false-alarm rate is <= alpha (Bonferroni)."""
    from scipy import stats

    sizes, weights = [1500, 200], [1.0, 4.0]
    ps = []
    for seed in range(6):
        r = check_equivalence(sizes, weights, draws=40_000, seed=100 + seed)
        ps += [t.p_value for t in r.tests if "coverage" not in t.name and t.dof > 0]
    assert len(ps) == 6 * 14
    low = sum(p < 0.05 for p in ps)
    assert stats.binom.sf(low - 1, len(ps), 0.05) > 1e-4 and stats.binom.cdf(low, len(ps), 0.05) > 1e-4, low
    assert stats.kstest(ps, "uniform").pvalue > 1e-4


def test_chi_square_gof_pools_small_categories_and_rejects_impossible_counts() -> None:
    from scipy import stats

    obs = np.array([50, 30, 12, 3, 5, 0])
    p = np.array([0.5, 0.3, 0.1, 0.04, 0.06, 0.0])
    r = chi_square_gof(obs, p, min_expected=5.0)  # 4 and 6 expected: pooled into one category of 10
    ref = stats.chisquare([50, 30, 12, 8], [50, 30, 10, 10])
    assert r.dof == 3 and r.statistic == pytest.approx(ref.statistic) and r.p_value == pytest.approx(ref.pvalue)
    assert chi_square_gof(np.array([5, 5, 1]), p[[0, 1, 5]]).p_value == 0.0  # a draw of probability 0


def test_coverage_p_value_is_the_union_bound() -> None:
    from fastmix.tools.equivalence import _coverage

    probs = np.array([0.5, 0.3, 0.15, 0.05])
    r = _coverage("c", np.array([60, 40, 0, 0]), probs, 100)  # frames 2 (15 expected) and 3 (5) never drawn
    assert r.statistic == pytest.approx(15.0) and r.dof == 3
    assert r.p_value == pytest.approx(0.5 ** 100 + 0.7 ** 100 + 0.85 ** 100)


def test_hash_bins_scatter_frames_and_expect_at_least_five() -> None:
    p = np.full(5000, 1 / 5000)
    order = hash_order(5000)
    assert sorted(order.tolist()) == list(range(5000))
    bins = frame_bins(p, 20_000, max_bins=500, order=order)
    assert (np.bincount(bins, weights=p * 20_000) >= 5).all()
    members = np.flatnonzero(bins == bins[0])
    assert np.ptp(members) > 1000 and len(members) >= 5  # a bin's frames lie all over the index range
