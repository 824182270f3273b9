"""The real G1 v2.1 dataset in ../shared (100 episodes, 35,965 frames, AV1 480x640 at 30 fps, videos of
episodes 4, 5, 7, 8, 10-21 only): read in place, read-only."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fastmix.errors import MissingFileError
from fastmix.sources.frames import FrameReader
from fastmix.sources.lerobot_source import LeRobotSource

CAM = "observation.images.cam_high"
PRESENT = [4, 5, 7, 8, *range(10, 22)]
HORIZON = 50


def test_opens_whole_dataset(g1_root):
    src = LeRobotSource(root=g1_root, require_videos=False)  # low-dim use of a partial download
    assert (src.codebase_version, src.num_episodes, src.num_frames, src.fps) == ("v2.1", 100, 35965, 30)
    assert src.camera_keys == [CAM] and src.camera_shape(CAM) == (480, 640, 3)
    assert src.lowdim_keys == ["observation.state", "action"]
    assert src.tasks == {0: "Pick up the yellow bottle on the table."}
    assert src.stats["action"]["mean"].shape == (26,) and int(src.stats["action"]["count"][0]) == 35965
    low = src.gather_lowdim(np.array([0, 35964]))
    assert low["index"].tolist() == [0, 35964] and low["episode_index"].tolist() == [0, 99]


def test_missing_videos_found_at_open_with_episodes_hint(g1_root):
    """Like lerobot (which refuses to open a dataset whose files are not all on disk), at open: every missing
    file's episode is listed, and the hint's `episodes=` expression selects exactly the present ones."""
    with pytest.raises(MissingFileError) as e:
        LeRobotSource(root=g1_root)
    msg = str(e.value)
    missing = sorted(set(range(100)) - set(PRESENT))
    assert "'g1_v21_partial'" in msg and "84 video file(s) are missing" in msg
    assert "episode(s) [*range(0, 4), 6, 9, *range(22, 100)]" in msg
    assert eval(msg.split("episode(s) ")[1].split(" (")[0]) == missing
    hint = msg.split("pass episodes=")[1].split(" (")[0]
    assert eval(hint) == PRESENT
    assert LeRobotSource(root=g1_root, episodes=eval(hint)).episodes == PRESENT


def test_missing_video_raises_naming_the_file(g1_root):
    src = LeRobotSource(root=g1_root, require_videos=False)
    with pytest.raises(MissingFileError, match=r"videos/chunk-000/observation\.images\.cam_high/episode_000000\.mp4"):
        src[0]
    row = int(np.flatnonzero(src.gather_lowdim(np.arange(len(src)))["episode_index"] == 9)[5])
    with pytest.raises(MissingFileError, match=r"episode 9\b.*episode_000009\.mp4"):
        src[row]


def test_present_episodes_load_and_decode_like_lerobot(g1_root):
    """episodes= the present ones: loads, every sample's low-dim values and action chunk come out, and frames
    equal lerobot's pyav decoder (what LeRobotDataset(video_backend="pyav") calls) on a strided subset."""
    from lerobot.datasets.video_utils import decode_video_frames

    dts = {"action": [t / 30 for t in range(HORIZON)]}
    src = LeRobotSource(root=g1_root, episodes=PRESENT, delta_timestamps=dts)
    assert src.num_episodes == len(PRESENT) and src.episodes == PRESENT
    low = src.gather_lowdim(np.arange(len(src)))  # the whole subset in one vectorized gather
    assert sorted(set(low["episode_index"].tolist())) == PRESENT and len(src) == 5787
    assert low["action"].shape == (len(src), HORIZON, 26)
    ends = np.flatnonzero(np.diff(low["episode_index"], append=-1) != 0)
    assert low["action_is_pad"][ends].sum(axis=1).tolist() == [HORIZON - 1] * len(PRESENT)
    assert not low["action_is_pad"][ends - HORIZON + 1].any()
    assert set(src.tasks_of(np.arange(len(src)))) == {"Pick up the yellow bottle on the table."}

    rows = np.unique(np.concatenate([np.arange(0, len(src), 401), ends[:3], ends[:3] - 1]))
    out = {CAM: np.zeros((len(rows), 480, 640, 3), np.uint8)}
    with FrameReader(max_open_files=2) as reader:
        reader.read(src.frame_requests(rows), out)
    max_diff = 0.0
    for b, req in enumerate(src.frame_requests(rows)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = decode_video_frames(req.path, [req.timestamp], 1e-4, backend="pyav")[0]
        ours = torch.from_numpy(out[CAM][b]).permute(2, 0, 1).float() / 255
        max_diff = max(max_diff, float((ref - ours).abs().max()))
    assert max_diff <= 1 / 255
    item = src[int(ends[0])]
    assert item[CAM].shape == (3, 480, 640) and item["action"].shape == (HORIZON, 26)
    assert item["action_is_pad"].sum().item() == HORIZON - 1
