"""LeRobotSource against lerobot 0.4.4's LeRobotDataset(video_backend="pyav") on datasets written by lerobot's
own writer: same keys in the same order, dtypes, shapes, bit-identical low-dim values, pads and tasks, frames
within 1/255 (measured: identical)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.conftest import EPISODE_LENGTH, FPS, NUM_EPISODES

pytestmark = pytest.mark.filterwarnings("ignore:The video decoding and encoding capabilities:UserWarning")

ACTION_DTS = {"actions": [t / FPS for t in range(10)]}  # as openpi passes them (action_horizon 10)
MAX_FRAME_DIFF = 1 / 255


def lerobot_dataset(root, **kw):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's video-API deprecation warning
        return LeRobotDataset(f"fastmix-test/{root.name}", root=root, video_backend="pyav", **kw)


def parity_indices(n: int, episode_length: int, count: int = 200, seed: int = 0) -> list[int]:
    """Every episode start and end, plus random indices, `count` distinct in all (or all of them)."""
    starts = list(range(0, n, episode_length))
    edges = set(starts) | {s + episode_length - 1 for s in starts}
    rest = np.random.default_rng(seed).permutation([i for i in range(n) if i not in edges])
    return sorted(edges | set(rest[: max(0, min(count, n) - len(edges))].tolist()))


def assert_items_equal(ref: dict, got: dict, where: str) -> float:
    """Same keys in order, dtypes and shapes; exact values except image tensors; returns the max frame diff."""
    assert list(ref) == list(got), where
    diff = 0.0
    for key, a in ref.items():
        b = got[key]
        if isinstance(a, str):
            assert a == b, f"{where} {key}"
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where} {key}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        if a.dtype == torch.float32 and a.ndim >= 3:  # camera frames, float CHW in [0, 1]
            diff = max(diff, float((a - b).abs().max()))
        else:
            assert torch.equal(a, b), f"{where} {key}: {a} vs {b}"
    return diff


@pytest.mark.parametrize("fixture", ["video_ds", "image_ds"])
def test_items_match_lerobot_dataset(fixture, request, record_property):
    from fastmix.sources.lerobot_source import LeRobotSource

    root = request.getfixturevalue(fixture)
    ref = lerobot_dataset(root, delta_timestamps=ACTION_DTS)
    src = LeRobotSource(f"fastmix-test/{root.name}", root=root, delta_timestamps=ACTION_DTS)
    assert len(src) == len(ref) == NUM_EPISODES * EPISODE_LENGTH
    indices = parity_indices(len(src), EPISODE_LENGTH)
    assert len(indices) >= 200
    max_diff, pads_seen = 0.0, 0
    for i in indices:
        a, b = ref[i], src[i]
        max_diff = max(max_diff, assert_items_equal(a, b, f"{fixture}[{i}]"))
        pads_seen += int(b["actions_is_pad"].sum())
    record_property("max_abs_frame_diff", max_diff)
    print(f"{fixture}: {len(indices)} indices, max abs frame difference {max_diff}")
    assert max_diff <= MAX_FRAME_DIFF
    assert pads_seen > 0  # episode ends were exercised


@pytest.mark.parametrize("fixture", ["video_ds", "image_ds"])
def test_batch_path_matches_items(fixture, request):
    """gather_lowdim + tasks_of + frame_requests/FrameReader.read give, for 32 random rows at once, what
    LeRobotDataset returns item by item (frames as uint8 HWC: ref * 255 rounds back exactly)."""
    from fastmix.sources.frames import FrameReader
    from fastmix.sources.lerobot_source import LeRobotSource

    root = request.getfixturevalue(fixture)
    ref = lerobot_dataset(root, delta_timestamps=ACTION_DTS)
    src = LeRobotSource(root=root, delta_timestamps=ACTION_DTS)
    local = np.random.default_rng(1).integers(0, len(src), 32).astype(np.int64)
    local[:2] = [EPISODE_LENGTH - 1, len(src) - 1]  # episode ends: padded chunks
    low = src.gather_lowdim(local)
    tasks = src.tasks_of(local)
    out = {k: np.zeros((len(local), *src.camera_shape(k)), np.uint8) for k in src.camera_keys}
    with FrameReader(max_open_files=4) as reader:
        reader.read(src.frame_requests(local), out)
    assert low["actions"].shape == (32, 10, 7) and low["actions_is_pad"].shape == (32, 10)
    assert low["state"].shape == (32, 8) and low["index"].dtype == np.int64
    for b, i in enumerate(local.tolist()):
        item = ref[i]
        for key in ("state", "actions", "actions_is_pad", "timestamp", "frame_index", "episode_index", "index",
                    "task_index"):
            assert np.array_equal(item[key].numpy(), low[key][b]), (i, key)
        assert item["task"] == tasks[b]
        for key in src.camera_keys:
            expected = (item[key].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            assert np.array_equal(expected, out[key][b]), (i, key)


@pytest.mark.parametrize("fixture", ["video_ds", "image_ds"])
def test_episode_subset_matches_lerobot_dataset(fixture, request):
    from fastmix.sources.lerobot_source import LeRobotSource

    root = request.getfixturevalue(fixture)
    episodes = [5, 1, 6]  # unordered on purpose: rows stay in file order, as in LeRobotDataset
    ref = lerobot_dataset(root, episodes=episodes, delta_timestamps=ACTION_DTS)
    src = LeRobotSource(root=root, episodes=episodes, delta_timestamps=ACTION_DTS)
    assert len(src) == len(ref) == 3 * EPISODE_LENGTH and src.num_episodes == 3 and src.episodes == [1, 5, 6]
    for i in parity_indices(len(src), EPISODE_LENGTH, count=40):
        assert assert_items_equal(ref[i], src[i], f"subset[{i}]") <= MAX_FRAME_DIFF


def test_delta_on_cameras_and_state_matches(image_ds, video_ds):
    """Past and future frames of cameras and state (LeRobotDataset stacks them; video chunks squeeze(0))."""
    from fastmix.sources.lerobot_source import LeRobotSource

    dts = {"image": [-0.1, 0.0], "state": [-0.2, 0.0, 0.1], "actions": [0.0]}
    for root in (image_ds, video_ds):
        ref = lerobot_dataset(root, delta_timestamps=dts)
        src = LeRobotSource(root=root, delta_timestamps=dts)
        for i in (0, 1, EPISODE_LENGTH - 1, EPISODE_LENGTH, 77):
            assert assert_items_equal(ref[i], src[i], f"{root.name}[{i}]") <= MAX_FRAME_DIFF
