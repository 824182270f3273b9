"""`MixtureLoader(groups=...)`: datasets of different schemas in one stream (`fastmix.loader.groups`).

References: each source's own `gather_lowdim` / `tasks_of` and the fake reader's `fake_frame` for the frames
of the rows drawn, the sampler's draws of the same mixture without groups (groups never change the stream),
and an uninterrupted run for resume.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastmix.errors import ConfigError, IncompatibleDatasetsError
from fastmix.loader.groups import group_prefix, in_batch_order, split_groups
from fastmix.loader.loader import MixtureLoader
from fastmix.testing.fakes import FakeReader, FakeSource, fake_frame
from tests.loader_args import grouped

pytestmark = pytest.mark.timeout(120)


def robots() -> list[FakeSource]:
    """Group 0: one 2-camera 8-dim robot; group 1: two 3-camera 14-dim datasets of another robot at 50 fps."""
    return [FakeSource("arm", num_episodes=3, episode_length=6, cameras=("image", "wrist_image"),
                       camera_shape=(12, 16, 3), state_dim=8, action_dim=7),
            FakeSource("biarm_a", num_episodes=2, episode_length=5, fps=50, cameras=("top", "left", "right"),
                       camera_shape=(10, 8, 3), state_dim=14, action_dim=14),
            FakeSource("biarm_b", num_episodes=2, episode_length=4, fps=50, cameras=("top", "left", "right"),
                       camera_shape=(10, 8, 3), state_dim=14, action_dim=14)]


def loader(sources=None, **kw) -> MixtureLoader:
    args = dict(groups=[0, 1, 1], dataset_weights=[1.0, 2.0, 1.0], batch_size=6, action_horizon=3, num_workers=0,
                seed=5, reader_factory=FakeReader)
    args.update(kw)
    return MixtureLoader(sources or robots(), **grouped(**args))


def batches(ld: MixtureLoader, n: int) -> list[dict]:
    out = []
    for i, (b, _pos) in enumerate(ld.stream(n, output="numpy")):
        out.append({k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in b.items()})
        if i + 1 == n:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_each_groups_rows_equal_their_sources_own_data(workers) -> None:
    srcs = robots()
    with loader(srcs, num_workers=workers) as ld:
        got = batches(ld, 4)
        offsets = ld.sampler.index_map.offsets
    for b in got:
        assert b["group_index"].tolist() == [0 if d == 0 else 1 for d in b["dataset_index"].tolist()]
        parts = split_groups(b)
        for g, part in enumerate(parts):
            assert part["rows"].tolist() == np.flatnonzero(b["group_index"] == g).tolist()
            assert b["group_row"][part["rows"]].tolist() == list(range(part["rows"].size))
        for r, (d, g, j) in enumerate(zip(b["dataset_index"], b["group_index"], b["group_row"], strict=True)):
            src = srcs[d]
            local = int(b[group_prefix(g) + "index"][j])  # FakeSource's index column is its local row
            want = src.gather_lowdim(np.array([local]), {"actions": [t / src.fps for t in range(3)]})
            for key in ("state", "actions", "actions_is_pad", "frame_index", "episode_index"):
                np.testing.assert_array_equal(b[group_prefix(g) + key][j], want[key][0], err_msg=f"row {r} {key}")
            assert b["task"][r] == src.tasks_of(np.array([local]))[0]
            for cam in src.camera_keys:
                np.testing.assert_array_equal(b[group_prefix(g) + cam][j],
                                              fake_frame(src.name, cam, local, src.camera_shape(cam)))
            assert int(b[group_prefix(g) + "dataset_index"][j]) == d
            assert 0 <= local < offsets[d + 1] - offsets[d]


def test_groups_do_not_change_the_stream() -> None:
    """The draws are those of the same mixture without groups (the sampler never sees groups)."""
    with loader() as ld:
        grouped_draws = ld.sampler.next_indices(500)
    same = [FakeSource(s.name, num_episodes=s.num_episodes, episode_length=s.episode_length) for s in robots()]
    with loader(same, groups=None) as ld:
        plain = ld.sampler.next_indices(500)
    np.testing.assert_array_equal(grouped_draws, plain)


def test_in_batch_order_and_per_group_decode_size_and_format() -> None:
    with loader(resize_images=[(6, 6), None], image_dtype=["uint8", "float32"]) as ld:
        (b,) = batches(ld, 1)
    assert b["group0/image"].shape[1:] == (6, 6, 3) and b["group0/image"].dtype == np.uint8
    assert b["group1/top"].shape[1:] == (3, 10, 8) and b["group1/top"].dtype == np.float32
    order = in_batch_order(b, "frame_index")
    for r, (g, j) in enumerate(zip(b["group_index"], b["group_row"], strict=True)):
        assert order[r] == b[group_prefix(g) + "frame_index"][j]


def test_resume_continues_exactly() -> None:
    with loader() as ld:
        whole = batches(ld, 4)
    with loader() as ld:
        it = iter(ld)
        next(it), next(it)
        state = ld.state_dict()
    with loader(num_workers=2) as ld:
        ld.load_state_dict(state)
        rest = batches(ld, 2)
    for a, b in zip(whole[2:], rest, strict=True):
        assert a["dataset_index"].tolist() == b["dataset_index"].tolist()
        for key in a:
            if key.startswith("group"):
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.filterwarnings("ignore::fastmix.errors.MixedFpsWarning")
def test_plain_mixtures_of_different_schemas_are_still_refused() -> None:
    with pytest.raises(IncompatibleDatasetsError, match="state"):
        loader(groups=None)
    with pytest.raises(IncompatibleDatasetsError, match="state"):
        loader(groups=[0, 0, 1])


@pytest.mark.parametrize("groups, pattern", [
    ([0, 1], r"one group number per dataset \(3"),
    ([0, 1, "1"], r"dataset 'biarm_b' has group '1'"),
    ([0, 2, 2], r"leaves group\(s\) \[1\] without a dataset"),
    ("011", r"groups must be a list"),
])
def test_bad_groups_name_the_dataset(groups, pattern) -> None:
    with pytest.raises(ConfigError, match=pattern):
        loader(groups=groups)


def test_per_group_options_must_match_the_groups() -> None:
    with pytest.raises(ConfigError, match="resize_images has 3 entries, the mixture has 2 groups"):
        loader(resize_images=[(4, 4), None, None])
    with pytest.raises(ConfigError, match="image_dtype entries must be one of"):
        loader(image_dtype=["uint8", "float16"])
