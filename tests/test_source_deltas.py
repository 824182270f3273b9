"""delta_timestamps → offsets, the tolerance check, per-episode clamping and pads, against lerobot's helpers."""

from __future__ import annotations

import numpy as np
import pytest

from fastmix.errors import ConfigError
from fastmix.sources.deltas import check_delta_timestamps, chunk_indices, delta_indices

CASES = [
    ({"actions": [t / 10 for t in range(10)]}, 10),
    ({"actions": [t / 30 for t in range(50)], "state": [-1 / 30, 0.0]}, 30),
    ({"a": [-0.2, 0.0, 0.2, 0.4], "b": [1 / 15 * k for k in range(-3, 4)]}, 15),
    ({"a": [0.1 + 5e-5, 0.2 - 9e-5]}, 10),  # within the 1e-4 tolerance
]


@pytest.mark.parametrize(("dts", "fps"), CASES)
def test_offsets_and_check_match_lerobot(dts, fps):
    from tests.lerobot_compat import check_delta_timestamps as lr_check
    from tests.lerobot_compat import get_delta_indices as lr_indices

    assert lr_check(dts, fps, 1e-4, raise_value_error=False)
    check_delta_timestamps(dts, fps, 1e-4, "ds")
    ours = delta_indices(dts, fps)
    assert {k: v.tolist() for k, v in ours.items()} == lr_indices(dts, fps)
    assert all(v.dtype == np.int64 for v in ours.values())


@pytest.mark.parametrize("deltas", [[0.0, 0.05], [0.1 + 2e-4], [-0.33]])
def test_out_of_tolerance_raises_like_lerobot(deltas):
    from tests.lerobot_compat import check_delta_timestamps as lr_check

    assert not lr_check({"actions": deltas}, 10, 1e-4, raise_value_error=False)
    with pytest.raises(ConfigError, match="'my_ds'.*actions"):
        check_delta_timestamps({"actions": deltas}, 10, 1e-4, "my_ds")


def test_chunk_indices_clamp_to_episode_and_flag_pads():
    # two episodes: [0, 5) and [5, 8); samples at 0, 3, 4, 5, 7
    index = np.array([0, 3, 4, 5, 7], dtype=np.int64)
    ep_from = np.array([0, 0, 0, 5, 5], dtype=np.int64)
    ep_to = np.array([5, 5, 5, 8, 8], dtype=np.int64)
    q, pad = chunk_indices(index, ep_from, ep_to, np.array([-1, 0, 1, 2], dtype=np.int64))
    assert q.tolist() == [[0, 0, 1, 2], [2, 3, 4, 4], [3, 4, 4, 4], [5, 5, 6, 7], [6, 7, 7, 7]]
    assert pad.tolist() == [[True, False, False, False], [False, False, False, True], [False, False, True, True],
                            [True, False, False, False], [False, False, True, True]]
    # the same, sample by sample, as LeRobotDataset writes it
    for b in range(len(index)):
        for h, d in enumerate([-1, 0, 1, 2]):
            assert q[b, h] == max(ep_from[b], min(ep_to[b] - 1, index[b] + d))
            assert pad[b, h] == (index[b] + d < ep_from[b]) | (index[b] + d >= ep_to[b])
