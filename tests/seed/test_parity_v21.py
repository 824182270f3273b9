"""v2.1 parity against the real reader: `LeRobotSource[i]` equals the fork's pinned lerobot's `LeRobotDataset[i]`
(its default decoder, torchcodec) on every key: same keys in the same order, dtypes, shapes, values bit for bit
(camera frames included), pads and tasks. On the real G1 subset (../shared/data/g1_v21_partial, the episodes
whose videos are present) and on a dataset the fork's lerobot wrote. This replaces the circular check of
fastmix's reader against fastmix's own v2.1 writer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.seed.conftest import FORK_REPO, G1_EPISODES, G1_ROOT

G1_FPS = 30
HORIZON = 10


def reference(repo_id: str, root, **kw):
    from lerobot.common.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(repo_id, root=root, **kw)
    assert ds.video_backend == "torchcodec", "the reference must use lerobot's default decoder"
    return ds


def indices_with_edges(episode_index: np.ndarray, count: int, seed: int) -> list[int]:
    """Every episode's first and last row plus random rows: `count` distinct rows in all (or every row)."""
    change = np.flatnonzero(np.diff(episode_index)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change - 1, [len(episode_index) - 1]])
    edges = set(starts.tolist()) | set(ends.tolist())
    rest = np.random.default_rng(seed).permutation([i for i in range(len(episode_index)) if i not in edges])
    return sorted(edges | set(rest[: max(0, count - len(edges))].tolist()))


def assert_same_item(ref: dict, got: dict, where: str) -> None:
    assert list(ref) == list(got), f"{where}: keys {list(ref)} vs {list(got)}"
    for key, a in ref.items():
        b = got[key]
        if isinstance(a, str):
            assert a == b, f"{where} {key}: {a!r} vs {b!r}"
            continue
        assert (a.dtype, tuple(a.shape)) == (b.dtype, tuple(b.shape)), \
            f"{where} {key}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b), f"{where} {key}: max |diff| {float((a.double() - b.double()).abs().max())}"


def test_g1_items_equal_pinned_lerobot():
    """Real AV1 480x640 data written by lerobot: 16 episodes with videos, >= 200 indices with every episode's
    first and last frame, without delta_timestamps (see the next test for chunks)."""
    from fastmix.sources.lerobot_source import LeRobotSource

    ref = reference("g1_v21_partial", G1_ROOT, episodes=G1_EPISODES)
    src = LeRobotSource("g1_v21_partial", root=G1_ROOT, episodes=G1_EPISODES)
    assert len(src) == len(ref) == ref.num_frames
    ep = np.asarray(ref.hf_dataset["episode_index"])
    idx = indices_with_edges(ep, 240, seed=0)
    assert len(idx) >= 200 and len(set(ep[idx].tolist())) == len(G1_EPISODES)
    for i in idx:
        assert_same_item(ref[i], src[i], f"g1 index {i}")


def test_g1_action_chunks_equal_pinned_lerobot_frames():
    """Action chunks over an episode subset: the pinned lerobot indexes its episode ranges by episode index
    (`episode_data_index["from"][ep_idx]`), which is wrong for a non-contiguous `episodes=` selection, so the
    chunk reference here is built from the pinned reader's own single frames: step d of index i is
    `LeRobotDataset[clamp(i + d, episode)]`, padded where i + d leaves the episode."""
    from fastmix.sources.lerobot_source import LeRobotSource

    dts = {"action": [t / G1_FPS for t in range(HORIZON)], "observation.state": [-1 / G1_FPS, 0.0]}
    ref = reference("g1_v21_partial", G1_ROOT, episodes=G1_EPISODES)
    src = LeRobotSource("g1_v21_partial", root=G1_ROOT, episodes=G1_EPISODES, delta_timestamps=dts)
    ep = np.asarray(ref.hf_dataset["episode_index"])
    action = torch.stack(list(ref.hf_dataset["action"]))
    state = torch.stack(list(ref.hf_dataset["observation.state"]))
    for i in indices_with_edges(ep, 200, seed=1):
        lo, hi = np.flatnonzero(ep == ep[i])[[0, -1]]
        got = src[i]
        for key, column, deltas in (("action", action, range(HORIZON)), ("observation.state", state, (-1, 0))):
            steps = [i + d for d in deltas]
            want = column[[min(max(s, lo), hi) for s in steps]]
            pad = torch.tensor([s < lo or s > hi for s in steps])
            assert torch.equal(got[key], want), f"g1 index {i} {key}"
            assert torch.equal(got[f"{key}_is_pad"], pad), f"g1 index {i} {key}_is_pad"


def test_fork_written_items_equal_pinned_lerobot(datasets):
    """A dataset the fork's lerobot wrote (AV1, 2 cameras), with openpi's action chunk as delta_timestamps:
    every index."""
    from fastmix.sources.lerobot_source import LeRobotSource

    root = datasets[FORK_REPO]
    dts = {"actions": [t / 10 for t in range(HORIZON)]}
    ref = reference(FORK_REPO, root, delta_timestamps=dts)
    src = LeRobotSource(FORK_REPO, root=root, delta_timestamps=dts)
    assert len(src) == len(ref)
    for i in range(len(ref)):
        assert_same_item(ref[i], src[i], f"{FORK_REPO} index {i}")


def test_deleted_episode_gives_the_right_chunks(datasets, tmp_path):
    """A user deletes episode 1 of a fork-written v2.1 dataset (its episodes.jsonl / episodes_stats.jsonl lines,
    its parquet and videos); episode 2 keeps its `index` values 24..35. The pinned lerobot refuses to open it
    (it looks for episode 1's files and goes to the hub). fastmix locates rows by the real `index` column:
    every sample, chunk and pad equals the pinned reader's own single frames of the intact dataset, clamped to
    the sample's episode — never a shifted chunk."""
    import json
    import shutil

    from fastmix.sources.lerobot_source import LeRobotSource

    intact = datasets[FORK_REPO]
    root = tmp_path / "deleted_one"
    shutil.copytree(intact, root)
    for name in ("episodes.jsonl", "episodes_stats.jsonl"):
        path = root / "meta" / name
        rows = [r for r in path.read_text().splitlines() if json.loads(r)["episode_index"] != 1]
        path.write_text("\n".join(rows) + "\n")
    info = json.loads((root / "meta" / "info.json").read_text())
    info.update(total_episodes=2, total_frames=24, total_videos=4, splits={"train": "0:2"})
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    (root / "data" / "chunk-000" / "episode_000001.parquet").unlink()
    for cam in ("image", "wrist_image"):
        (root / "videos" / "chunk-000" / cam / "episode_000001.mp4").unlink()

    with pytest.raises(Exception):  # noqa: B017 - the pinned lerobot goes to the (offline) hub for episode 1
        reference("deleted_one", root)

    dts = {"actions": [t / 10 for t in range(HORIZON)]}
    ref = reference(FORK_REPO, intact)  # single frames of the intact dataset
    src = LeRobotSource("deleted_one", root=root, delta_timestamps=dts)
    assert len(src) == 24
    actions = torch.stack(list(ref.hf_dataset["actions"]))
    intact_rows = [*range(0, 12), *range(24, 36)]  # episodes 0 and 2 of the intact dataset
    for i, row in enumerate(intact_rows):
        lo, hi = (0, 11) if row < 12 else (24, 35)
        got, single = src[i], ref[row]
        assert [k for k in got if k != "actions_is_pad"] == list(single)
        for key in single:
            if key not in ("actions", "actions_is_pad"):
                same = single[key] == got[key] if isinstance(single[key], str) else torch.equal(single[key], got[key])
                assert same, f"index {i} (intact row {row}) {key}"
        steps = [row + d for d in range(HORIZON)]
        assert torch.equal(got["actions"], actions[[min(max(s, lo), hi) for s in steps]]), f"index {i}"
        assert torch.equal(got["actions_is_pad"], torch.tensor([s > hi for s in steps])), f"index {i} pad"
