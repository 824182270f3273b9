"""fastmix.testing.large: the generated datasets have the requested layout, lerobot 0.4.4 reads the v3.0 one
(LeRobotDatasetMetadata, and LeRobotDataset items equal LeRobotSource items), and LeRobotSource reads both
layouts with values equal to a plain pyarrow read of the files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fastmix.sources.lerobot_source import LeRobotSource
from fastmix.testing.large import episode_lengths, make_large_dataset

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTMIX_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def large_v30(tmp_path_factory) -> Path:
    return make_large_dataset(tmp_path_factory.mktemp("large") / "v30", num_frames=1003, num_episodes=9,
                              num_data_files=4, num_video_files=3, cameras=("image", "wrist"), threads=2)


@pytest.fixture(scope="module")
def large_v21(tmp_path_factory) -> Path:
    return make_large_dataset(tmp_path_factory.mktemp("large") / "v21", num_frames=500, num_episodes=12,
                              version="v2.1", chunks_size=5, threads=2)


def plain_read(root: Path) -> dict[str, np.ndarray]:
    files = sorted(root.glob("data/**/*.parquet"))
    cols: dict[str, list] = {}
    for p in files:
        t = pq.read_table(p)
        for name in t.column_names:
            cols.setdefault(name, []).extend(t.column(name).to_pylist())
    return {k: np.array(v) for k, v in cols.items()}


def test_episode_lengths_split_evenly():
    n = episode_lengths(1003, 9)
    assert n.sum() == 1003 and n.max() - n.min() == 1 and list(n[:4]) == [112] * 4
    with pytest.raises(ValueError):
        episode_lengths(3, 5)


def test_v30_layout_and_values(large_v30):
    assert len(list(large_v30.glob("data/chunk-000/file-*.parquet"))) == 4
    for cam in ("image", "wrist"):
        mp4s = sorted(large_v30.glob(f"videos/{cam}/chunk-000/file-*.mp4"))
        assert len(mp4s) == 3
        assert len({os.stat(p).st_ino for p in mp4s}) == 1  # all links to one real mp4
    info = json.loads((large_v30 / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 1003 and info["total_episodes"] == 9
    src = LeRobotSource("large/v30", root=large_v30)
    assert src.num_frames == 1003 and src.num_episodes == 9
    ref = plain_read(large_v30)
    low = src.gather_lowdim(np.arange(1003))
    np.testing.assert_array_equal(low["state"], ref["state"].astype(np.float32))
    np.testing.assert_array_equal(low["actions"], ref["actions"].astype(np.float32))
    np.testing.assert_array_equal(low["index"], np.arange(1003))
    lengths = episode_lengths(1003, 9)
    np.testing.assert_array_equal(low["episode_index"], np.repeat(np.arange(9), lengths))
    np.testing.assert_array_equal(low["frame_index"], np.concatenate([np.arange(n) for n in lengths]))


def test_v30_matches_lerobot(large_v30):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    meta = LeRobotDatasetMetadata("large/v30", root=large_v30)
    assert meta.total_frames == 1003 and meta.total_episodes == 9 and len(meta.episodes) == 9
    assert list(meta.episodes["length"]) == episode_lengths(1003, 9).tolist()
    ds = LeRobotDataset("large/v30", root=large_v30, video_backend="pyav")  # needs no system FFmpeg
    src = LeRobotSource("large/v30", root=large_v30)
    for i in (0, 111, 112, 560, 1002):
        want, got = ds[i], src[i]
        assert set(want) >= set(got)
        for k, v in got.items():
            if k == "task":
                assert v == want[k]
            else:
                assert torch.equal(v, want[k]), (i, k)


def test_v21_layout_and_values(large_v21):
    assert len(list(large_v21.glob("data/chunk-*/episode_*.parquet"))) == 12
    assert len(list(large_v21.glob("data/chunk-*"))) == 3  # chunks of 5 episodes
    assert len({os.stat(p).st_ino for p in large_v21.glob("videos/chunk-*/image/episode_*.mp4")}) == 1
    src = LeRobotSource("large/v21", root=large_v21)
    assert src.codebase_version == "v2.1" and src.num_frames == 500 and src.num_episodes == 12
    ref = plain_read(large_v21)
    low = src.gather_lowdim(np.arange(500))
    np.testing.assert_array_equal(low["state"], ref["state"].astype(np.float32))
    np.testing.assert_array_equal(low["index"], ref["index"])
    assert src[499]["image"].shape == (3, 32, 32)  # the last frame of the last episode decodes


def test_refuses_existing_root(large_v21):
    with pytest.raises(FileExistsError):
        make_large_dataset(large_v21, num_frames=10, num_episodes=1)
