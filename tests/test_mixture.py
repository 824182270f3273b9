"""Mixture: weighting semantics, exact dataset probabilities of the packed draw, validation, table."""

from __future__ import annotations

import numpy as np
import pytest

from fastmix.core.filters import FrameFilter
from fastmix.core.mixture import Mixture
from fastmix.errors import ConfigError


def test_per_sample_share_is_weight_times_frames() -> None:
    m = Mixture([10000, 1000, 500], [1.0, 10.0, 4.0])
    mass = np.array([10000 * 1.0, 1000 * 10.0, 500 * 4.0])
    np.testing.assert_allclose(m.shares, mass / mass.sum(), rtol=1e-15)


def test_per_dataset_share_is_normalized_weight() -> None:
    m = Mixture([10000, 1000, 500], [1.0, 10.0, 4.0], weighting="per_dataset")
    np.testing.assert_allclose(m.shares, np.array([1, 10, 4]) / 15, rtol=1e-15)


def test_frame_weights_enter_both_modes() -> None:
    fw = [None, np.array([1.0, 3.0]), np.array([2.0, 2.0, 0.0])]
    ps = Mixture([4, 2, 3], [1.0, 2.0, 1.0], frame_weights=fw)
    np.testing.assert_allclose(ps.shares, np.array([4.0, 8.0, 4.0]) / 16)
    # per-sample: every frame's probability ∝ w_i * f_i[frame], like WeightedRandomSampler's list
    ref = np.array([1, 1, 1, 1, 2, 6, 2, 2, 0], dtype=float)
    np.testing.assert_allclose(ps.reference_weights(), ref)
    np.testing.assert_allclose(ps.sample_probabilities(), ref / ref.sum(), rtol=1e-14)
    pd = Mixture([4, 2, 3], [1.0, 2.0, 1.0], weighting="per_dataset", frame_weights=fw)
    np.testing.assert_allclose(pd.shares, [0.25, 0.5, 0.25])
    np.testing.assert_allclose(pd.frame_probabilities(1), [0.25, 0.75])
    r = pd.reference_weights()
    np.testing.assert_allclose(r / r.sum(), pd.sample_probabilities(), rtol=1e-14)


def test_frame_weights_combine_with_filters_and_per_episode() -> None:
    """Per-frame weights inside kept frames: per_sample ∝ w·f over kept frames; per_episode: each kept episode
    1/E, a frame ∝ f within its episode (computed by hand)."""
    fw = [np.array([1.0, 3.0, 1.0, 1.0, 2.0, 0.5])]
    flt = [FrameFilter({"0": [[0, 2]], "1": [[0, 3]]})]  # the last frame is dropped
    ps = Mixture([6], frame_weights=fw, episodes=[[2, 4]], frame_filters=flt)
    np.testing.assert_allclose(ps.sample_probabilities(), np.array([1, 3, 1, 1, 2, 0]) / 8, rtol=1e-14)
    pe = Mixture([6], weighting="per_episode", frame_weights=fw, episodes=[[2, 4]], frame_filters=flt)
    np.testing.assert_allclose(pe.sample_probabilities(), [1 / 8, 3 / 8, 1 / 8, 1 / 8, 2 / 8, 0], rtol=1e-14)
    np.testing.assert_allclose(pe.table_sample_probabilities(), pe.sample_probabilities(), rtol=1e-12)


def test_table_of_an_unfiltered_mixture_is_unchanged() -> None:
    """No episodes, no filters: the same columns as before the sampling controls."""
    head = Mixture([10, 20]).format_table().splitlines()[1]
    assert head.split() == ["#", "dataset", "frames", "weight", "frames", "drawn", "share"]


@pytest.mark.parametrize("sizes, weights, weighting", [
    ([10000, 1000], [1.0, 10.0], "per_sample"),
    ([7, 11, 13, 1_000_003, 5], [0.3, 0.0, 2.0, 1e-4, 7.0], "per_sample"),
    ([3] * 12, list(np.random.default_rng(1).uniform(0, 1, 12)), "per_dataset"),
    ([1], [1.0], "per_dataset"),
])
def test_dataset_probabilities_of_built_table_equal_shares(sizes, weights, weighting) -> None:
    m = Mixture(sizes, weights, weighting=weighting)
    p = m.dataset_probabilities()
    np.testing.assert_allclose(p, m.shares, rtol=1e-12, atol=1e-16)
    assert (p[m.shares == 0] == 0).all()


def test_zero_weight_dataset_is_allowed_and_flagged() -> None:
    m = Mixture([100, 200], [0.0, 1.0])
    assert m.shares.tolist() == [0.0, 1.0]
    assert "never drawn" in m.format_table(["a", "b"]).splitlines()[2]


def test_format_table_lists_everything() -> None:
    m = Mixture([10000, 1000], [1.0, 10.0])
    text = m.format_table(["libero", "droid"])
    assert "per_sample" in text and "libero" in text and "droid" in text
    assert "10,000" in text and "50.000%" in text
    with pytest.raises(ConfigError, match="3 names for 2 datasets"):
        m.format_table(["a", "b", "c"])


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(dataset_sizes=[10, 0]), r"dataset_sizes\[1\] must be an integer >= 1, got dataset_sizes\[1\]=0"),
    (dict(dataset_sizes=[10, 2.5]), r"got dataset_sizes\[1\]=2\.5"),
    (dict(dataset_sizes=[]), "empty"),
    (dict(dataset_sizes=[10, 20], dataset_weights=[1.0]), r"dataset_weights length \(1\) must match datasets length \(2\)"),
    (dict(dataset_sizes=[10, 20], dataset_weights=[1.0, -1.0]), r"must be non-negative, got dataset_weights\[1\]=-1\.0"),
    (dict(dataset_sizes=[10, 20], dataset_weights=[0.0, 0.0]), "must not all be zero"),
    (dict(dataset_sizes=[10, 20], weighting="uniform"), "weighting='uniform'"),
    (dict(dataset_sizes=[2, 3], frame_weights=[None]), r"frame_weights length \(1\) must match"),
    (dict(dataset_sizes=[2, 3], frame_weights=[None, [1.0, 2.0]]), r"frame_weights\[1\] has 2 entries"),
    (dict(dataset_sizes=[2, 3], frame_weights=[[1.0, float("nan")], None]), r"must be finite, got frame_weights\[0\]\[1\]=nan"),
    (dict(dataset_sizes=[2, 3], weighting="per_episode"), r"dataset 'dataset 0': weighting='per_episode' needs the "
                                                          r"dataset's episodes"),
    (dict(dataset_sizes=[2, 3], frame_filters=[None]), r"frame_filters length \(1\) must match datasets length \(2\)"),
    (dict(dataset_sizes=[2, 3], frame_filters=[None, FrameFilter()]), r"dataset 'dataset 1': a frame filter needs"),
    (dict(dataset_sizes=[2, 3], episodes=[[1, 1], [4]]), r"episodes\[1\] of dataset 'dataset 1' cover 4 frames but "
                                                         r"the dataset has 3"),
    (dict(dataset_sizes=[3], frame_weights=[[1.0, 1.0, 0.0]], episodes=[[3]],
          frame_filters=[FrameFilter({"0": [[2, 3]]})]), r"frame_weights\[0\] over the frames kept by "
                                                         r"frame_filters\[0\] must not all be zero"),
])
def test_bad_configuration_is_named(kwargs, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        Mixture(**kwargs)
