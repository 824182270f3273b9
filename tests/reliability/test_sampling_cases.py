"""Reliability catalogue, sampling controls (issue 22): per-episode weighting, frame filters and resuming with a
changed mixture. Each bad value raises one ConfigError (or MissingFileError) naming the dataset, key, episode,
range or file at fault, before anything starts; documented edge cases (empty ranges, unlisted episodes, trims
that remove whole episodes) behave as stated."""

from __future__ import annotations

import numpy as np
import pytest

from fastmix.core.filters import FrameFilter
from fastmix.core.mixture import Mixture
from fastmix.core.sampler import MixtureSampler
from fastmix.errors import ConfigError, MissingFileError
from fastmix.loader.loader import MixtureLoader
from fastmix.testing.fakes import FakeReader, FakeSource
from tests.loader_args import grouped

pytestmark = pytest.mark.timeout(60)


def loader(weights=None, **kw):
    sources = [FakeSource("ds_a", num_episodes=2, episode_length=5), FakeSource("ds_b", num_episodes=1, episode_length=4)]
    return MixtureLoader(sources, **grouped(dataset_weights=weights, batch_size=2, num_workers=0,
                                            reader_factory=FakeReader, **kw))


# ------------------------------------------------------------------------------------------- weighting
def test_unknown_weighting_lists_the_three_modes(no_leaks):
    for make in (lambda: MixtureSampler([5, 4], weighting="per_trajectory"),
                 lambda: loader(weighting="per_trajectory")):
        with pytest.raises(ConfigError, match=r"weighting='per_trajectory' is not one of \('per_sample', "
                                              r"'per_dataset', 'per_episode'\)"):
            make()


def test_per_episode_without_episodes_names_the_dataset(no_leaks):
    with pytest.raises(ConfigError, match=r"dataset 'b': weighting='per_episode' needs the dataset's episodes"):
        MixtureSampler([5, 4], weighting="per_episode", episodes=[[2, 3], None], names=["a", "b"])
    with pytest.raises(ConfigError, match=r"episodes\[0\] of dataset 'a' cover 6 frames but the dataset has 5"):
        MixtureSampler([5, 4], weighting="per_episode", episodes=[[2, 4], [4]], names=["a", "b"])
    with pytest.raises(ConfigError, match=r"episode lengths of dataset 'a'\[1\] must be an integer >= 1, got .*=0"):
        MixtureSampler([5], weighting="per_episode", episodes=[[5, 0]], names=["a"])


# ------------------------------------------------------------------------------------------- keep-ranges
@pytest.mark.parametrize("ranges, pattern", [
    ({"0": [[1, 2, 3]]}, r"keep_ranges\['0'\]\[0\] must be a pair of integers \[start, end\), got \[1, 2, 3\]"),
    ({"0": [[0, 1.5]]}, r"keep_ranges\['0'\]\[0\] must be a pair of integers \[start, end\), got \[0, 1\.5\]"),
    ({"1": [[0, 2], [-1, 3]]}, r"keep_ranges\['1'\]\[1\]=\[-1, 3\] must satisfy 0 <= start <= end"),
    ({"1": [[4, 2]]}, r"keep_ranges\['1'\]\[0\]=\[4, 2\] must satisfy 0 <= start <= end"),
    ({"0": "0-5"}, r"keep_ranges\['0'\] must be a list of \[start, end\) ranges, got '0-5'"),
    ({"0": [[True, 3]]}, r"keep_ranges\['0'\]\[0\] must be a pair of integers"),
])
def test_malformed_ranges_name_key_and_range(ranges, pattern, no_leaks):
    with pytest.raises(ConfigError, match=pattern):
        FrameFilter(ranges)


def test_keep_ranges_of_a_wrong_type(no_leaks):
    with pytest.raises(ConfigError, match=r"keep_ranges must be None, a mapping .* or a JSON file path, got list"):
        FrameFilter([[0, 5]])


def test_range_past_the_episode_names_dataset_episode_and_length(no_leaks):
    flt = FrameFilter({"0": [[0, 5]], "1": [[0, 2], [3, 9]]})
    with pytest.raises(ConfigError, match=r"frame_filters\[0\] \(dataset 'ds_a'\): keep_ranges\['1'\]\[1\]=\[3, 9\) "
                                          r"ends past episode 1, which has 5 frames"):
        loader(frame_filters=[flt, None])


def test_unknown_episode_key_is_an_error_or_ignored_and_counted(no_leaks):
    with pytest.raises(ConfigError, match=r"frame_filters\[1\] \(dataset 'ds_b'\): keep_ranges\['7'\] names no episode "
                                          r"of the dataset \(1 episodes, indices 0\.\.0\).*unknown_episodes='ignore'"):
        loader(frame_filters=[None, FrameFilter({"0": [[0, 4]], "7": [[0, 1]]})])
    with pytest.raises(ConfigError, match=r"keep_ranges\['droid/ep_42'\] names no episode .*episode_keys="):
        loader(frame_filters=[None, FrameFilter({"droid/ep_42": [[0, 4]]})])
    with loader(frame_filters=[None, FrameFilter({"0": [[0, 4]], "7": [[0, 1]]}, unknown_episodes="ignore")]) as ld:
        assert ld.mixture.kept[1].ignored_keys == 1 and "1 keys ignored" in ld.mixture.format_table()
    with pytest.raises(ConfigError, match=r"unknown_episodes must be one of \('error', 'ignore'\), got .*'skip'"):
        FrameFilter({}, unknown_episodes="skip")
    with pytest.raises(ConfigError, match=r"episode_keys\['x'\] must be an integer >= 0, got .*=-3"):
        FrameFilter({"x": [[0, 1]]}, episode_keys={"x": -3})


def test_empty_ranges_and_unlisted_episodes_keep_nothing(no_leaks):
    """Documented: an empty range keeps nothing, an episode the file does not list keeps nothing (openpi's rule)."""
    m = Mixture([10], episodes=[[5, 5]], frame_filters=[FrameFilter({"1": [[2, 2], [3, 5]]})])
    assert m.kept_indices(0).tolist() == [8, 9]
    draws = MixtureSampler([10], episodes=[[5, 5]], frame_filters=[FrameFilter({"1": [[2, 2], [3, 5]]})],
                           seed=0).next_indices(5000)
    assert set(draws.tolist()) == {8, 9}


# ------------------------------------------------------------------------------------------- files
def test_filter_file_missing_malformed_or_not_an_object(tmp_path, no_leaks):
    missing = tmp_path / "nope.json"
    with pytest.raises(MissingFileError, match=f"keep_ranges file {missing} does not exist"):
        FrameFilter(missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"0": [[0, 4]')
    with pytest.raises(ConfigError, match=f"keep_ranges file {bad} is not a readable JSON file"):
        FrameFilter(bad)
    arr = tmp_path / "arr.json"
    arr.write_text("[[0, 4]]")
    with pytest.raises(ConfigError, match=f"keep_ranges file {arr} must hold a JSON object .* got a JSON list"):
        FrameFilter(arr)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"3": [[5, 1]]}')
    with pytest.raises(ConfigError, match=rf"keep_ranges\['3'\] \(file {wrong}\)\[0\]=\[5, 1\] must satisfy"):
        FrameFilter(wrong)


# ------------------------------------------------------------------------------------------- trims
@pytest.mark.parametrize("kw, pattern", [
    (dict(trim_start=-1), r"FrameFilter trim_start must be an integer >= 0, got FrameFilter trim_start=-1"),
    (dict(trim_end=2.5), r"FrameFilter trim_end must be an integer >= 0, got FrameFilter trim_end=2\.5"),
    (dict(trim_end=True), r"FrameFilter trim_end must be an integer >= 0"),
])
def test_bad_trims(kw, pattern, no_leaks):
    with pytest.raises(ConfigError, match=pattern):
        FrameFilter(**kw)


def test_trims_removing_whole_episodes_drop_them_and_removing_everything_is_an_error(no_leaks):
    """Documented: an episode of at most trim_start + trim_end frames keeps nothing (counted in the table); a
    filter that keeps no frame of its dataset is an error naming it."""
    m = Mixture([12], weighting="per_episode", episodes=[[3, 9]], frame_filters=[FrameFilter(trim_start=2, trim_end=1)],
                names=["ds"])
    assert m.kept_indices(0).tolist() == list(range(5, 11)) and m.kept[0].episodes_removed == 1
    assert "1/2" in m.format_table()
    np.testing.assert_allclose(m.frame_probabilities(0)[5:11], 1 / 6)
    with pytest.raises(ConfigError, match=r"frame_filters\[0\] \(dataset 'ds_a'\): the frame filter \(trim 3 first / 2 "
                                          r"last\) keeps no frame of the dataset's 10 frames in 2 episodes"):
        loader(frame_filters=[FrameFilter(trim_start=3, trim_end=2), None])
    with pytest.raises(ConfigError, match=r"dataset 'ds_a'.*keeps no frame"):  # a zero weight does not excuse it
        loader(weights=[0.0, 1.0], frame_filters=[FrameFilter({}), None])


# ------------------------------------------------------------------------------------------- the argument itself
@pytest.mark.parametrize("filters, pattern", [
    ([None], r"frame_filters length \(1\) must match datasets length \(2\)"),
    (FrameFilter(trim_start=1), r"frame_filters must be a list with one FrameFilter or None per dataset"),
    ([None, {"0": [[0, 1]]}], r"frame_filters\[1\] \(dataset 'ds_b'\) must be a FrameFilter or None, got dict"),
    ({"ds_c": FrameFilter()}, r"frame_filters names datasets \['ds_c'\] that are not in the mixture; its datasets "
                              r"are \['ds_a', 'ds_b'\]"),
])
def test_bad_frame_filters_argument(filters, pattern, no_leaks):
    with pytest.raises(ConfigError, match=pattern):
        loader(frame_filters=filters)


# ------------------------------------------------------------------------------------------- resume
def _state(weights=None, **kw):
    with loader(weights, **kw) as ld:
        it = iter(ld)
        next(it)
        next(it)
        return ld.state_dict()


def test_resume_with_changed_weights_needs_the_opt_in(no_leaks):
    state = _state([1.0, 1.0])
    with loader([1.0, 4.0]) as ld:
        with pytest.raises(ConfigError, match=r"(?s)weights: the state has weights=\[0\.5, 0\.5\]; this loader has "
                                              r"weights=\[0\.2, 0\.8\].*pass allow_mixture_change=True"):
            ld.load_state_dict(state)
        assert ld.position.batch == 0
        with pytest.warns(RuntimeWarning, match=r"changed mixture \(allow_mixture_change=True\): weights "
                                                r"\[0\.5, 0\.5\] -> \[0\.2, 0\.8\]"):
            ld.load_state_dict(state, allow_mixture_change=True)
        assert ld.position.batch == 2


def test_resume_with_changed_seed_or_batching_is_refused_even_with_the_opt_in(no_leaks):
    state = _state([1.0, 1.0])
    with loader([1.0, 4.0], batching="stratified") as ld:
        with pytest.raises(ConfigError, match=r"(?s)batching: the state has batching='random'.*only the weights, "
                                              r"weighting and frame filters may differ"):
            ld.load_state_dict(state, allow_mixture_change=True)
        assert ld.position.batch == 0
