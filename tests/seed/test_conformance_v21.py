"""Conformance, v2.1: `LeRobotSource[i]` equals the pinned lerobot's `LeRobotDataset[i]` (0cf8648,
`lerobot.common.datasets`, its default decoder) on every key — and data it refuses at open, fastmix refuses too.
The v3.0 half of the suite is tests/test_conformance.py (lerobot 0.4.4).

Datasets: the real G1 subset (../shared/data/g1_v21_partial, the 16 episodes whose videos are present), on a
stride — every episode's first and last frame and every 45th frame in between (1.5 s at 30 fps; decoding all
5,800 480x640 frames twice would take minutes) — and a dataset the fork's lerobot wrote, every index, with an
action chunk and a previous-state window. v2.1 has no video segments (one mp4 per episode, timestamps from 0), so
the `to_timestamp` convention of the v3.0 half has no v2.1 counterpart; its v2.1 twin is the timestamp column
itself: a real episode whose timestamps are one frame late from some row on, which both readers refuse at open.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.seed.conftest import FORK_REPO, G1_EPISODES, G1_ROOT

G1_FPS = 30
G1_STRIDE = 45


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """fastmix's low-dim store under tmp_path, never the user's ~/.cache."""
    monkeypatch.setenv("FASTMIX_CACHE", str(tmp_path / "cache"))


def pinned(repo_id: str, root, **kw):
    from lerobot.common.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(repo_id, root=root, **kw)
    assert ds.video_backend == "torchcodec", "the reference must use lerobot's default decoder"
    return ds


def stride_with_edges(episode_index: np.ndarray, stride: int) -> list[int]:
    """Rows 0, stride, 2*stride, ... of each episode, plus each episode's last row."""
    out = []
    for e in np.unique(episode_index):
        rows = np.flatnonzero(episode_index == e)
        out += rows[::stride].tolist() + [int(rows[-1])]
    return sorted(set(out))


def assert_same_items(ref, src, indices, where: str) -> None:
    for i in indices:
        a, b = ref[i], src[i]
        assert list(a) == list(b), f"{where}[{i}]: keys {list(a)} vs {list(b)}"
        for key, want in a.items():
            got = b[key]
            if isinstance(want, str):
                assert want == got, f"{where}[{i}] {key}: {want!r} vs {got!r}"
                continue
            assert (want.dtype, tuple(want.shape)) == (got.dtype, tuple(got.shape)), f"{where}[{i}] {key}"
            assert torch.equal(want, got), f"{where}[{i}] {key}: max |diff| {float((want.double() - got.double()).abs().max())}"


def test_g1_on_a_stride_with_every_episode_edge():
    from fastmix.sources.lerobot_source import LeRobotSource

    ref = pinned("g1_v21_partial", G1_ROOT, episodes=G1_EPISODES)
    src = LeRobotSource("g1_v21_partial", root=G1_ROOT, episodes=G1_EPISODES)
    assert len(src) == len(ref)
    ep = np.asarray(ref.hf_dataset["episode_index"])
    rows = stride_with_edges(ep, G1_STRIDE)
    starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
    assert set(starts.tolist()) <= set(rows) and len(set(ep[rows].tolist())) == len(G1_EPISODES)
    assert_same_items(ref, src, rows, "g1")


def test_fork_written_every_index(datasets):
    from fastmix.sources.lerobot_source import LeRobotSource

    root = datasets[FORK_REPO]
    dts = {"actions": [t / 10 for t in range(4)], "state": [-1 / 10, 0.0]}
    ref = pinned(FORK_REPO, root, delta_timestamps=dts)
    src = LeRobotSource(FORK_REPO, root=root, delta_timestamps=dts)
    assert len(src) == len(ref) == 36
    assert_same_items(ref, src, range(len(ref)), FORK_REPO)


def test_timestamps_one_frame_late_refused_by_both(tmp_path):
    """Real G1 data, episode 5: from frame_index 100 on every timestamp is 1/30 s late (each row would read the
    next video frame). The pinned lerobot refuses it at open (check_timestamps_sync); so does fastmix, naming
    dataset, episode, file, frame index and both values. The copy links the untouched files of ../shared."""
    from fastmix.errors import DatasetFormatError
    from fastmix.sources.lerobot_source import LeRobotSource

    root = tmp_path / "g1_late"
    shutil.copytree(G1_ROOT / "meta", root / "meta")
    (root / "videos").symlink_to(G1_ROOT / "videos", target_is_directory=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    for original in sorted((G1_ROOT / "data" / "chunk-000").glob("*.parquet")):  # the others: by symlink
        if original.name != "episode_000005.parquet":
            (root / "data" / "chunk-000" / original.name).symlink_to(original)
    data = root / "data" / "chunk-000" / "episode_000005.parquet"
    table = pq.read_table(G1_ROOT / "data" / "chunk-000" / data.name)
    ts = table.column("timestamp").to_numpy().copy()
    frame = table.column("frame_index").to_numpy()
    ts[frame >= 100] += np.float32(1 / G1_FPS)
    table = table.set_column(table.column_names.index("timestamp"), table.schema.field("timestamp"),
                             pa.array(ts, type=table.schema.field("timestamp").type))
    pq.write_table(table, data)
    with pytest.raises(ValueError, match="tolerance"):
        pinned("g1_late", root, episodes=[4, 5])
    with pytest.raises(DatasetFormatError) as e:
        LeRobotSource("g1_late", root=root, episodes=[4, 5])
    msg = str(e.value)
    want = f"frame_index 99 is at {float(ts[frame == 99][0]):.6f} s and frame_index 100 at {float(ts[frame == 100][0]):.6f} s"
    assert "'g1_late'" in msg and "episode 5 " in msg and str(data) in msg and want in msg
