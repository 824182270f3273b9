"""LIBERO-like test datasets written by lerobot's own writer (`LeRobotDataset.create`, format v3.0).

Keys: cameras (default "image", "wrist_image") as AV1 video or PNG images in parquet, "state" (float32,
`state_dim`), "actions" (float32, `action_dim`). Camera frames are smooth moving gradients with a bright
square, so AV1 encodes them well while a wrong frame (off by one in time) is clearly different.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_TASKS: tuple[str, ...] = ("pick up the bowl", "open the drawer")


def synth_frame(shape: tuple[int, int, int], episode: int, frame: int, camera: int) -> np.ndarray:
    """uint8 (H, W, C) frame: diagonal gradients drifting with `frame`, plus a square moving across the image."""
    h, w, c = shape
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    t = frame * 0.15 + episode * 0.7 + camera * 1.3
    chans = []
    for ch in range(c):
        phase = t + ch * 2.1
        chans.append(0.5 + 0.45 * np.sin(2 * math.pi * (x * (1 + ch) + y * (2 - 0.5 * ch)) + phase))
    img = np.stack(chans, axis=-1)
    side = max(2, h // 6)
    cy = int((h - side) * (0.5 + 0.4 * math.sin(0.3 * frame + episode)))
    cx = int((w - side) * ((frame * 0.07 + 0.1 * camera) % 1.0))
    img[cy : cy + side, cx : cx + side, :] = 0.95
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def lowdim_values(rng: np.random.Generator, length: int, dim: int) -> np.ndarray:
    """float32 (length, dim): a random walk, so consecutive rows differ and every value is distinct."""
    return np.cumsum(rng.standard_normal((length, dim)).astype(np.float32) * 0.1, axis=0, dtype=np.float32)


def lerobot_features(cameras: Sequence[str], camera_shape: tuple[int, int, int], use_videos: bool,
                     state_dim: int, action_dim: int) -> dict[str, dict]:
    """The features dict handed to `LeRobotDataset.create`."""
    cam_dtype = "video" if use_videos else "image"
    feats: dict[str, dict] = {
        cam: {"dtype": cam_dtype, "shape": tuple(camera_shape), "names": ["height", "width", "channel"]}
        for cam in cameras
    }
    feats["state"] = {"dtype": "float32", "shape": (state_dim,), "names": [f"s{i}" for i in range(state_dim)]}
    feats["actions"] = {"dtype": "float32", "shape": (action_dim,), "names": [f"a{i}" for i in range(action_dim)]}
    return feats


def make_dataset(root: str | Path, repo_id: str, *, num_episodes: int, episode_length: int, fps: int = 10,
                 cameras: Sequence[str] = ("image", "wrist_image"), camera_shape: tuple[int, int, int] = (64, 64, 3),
                 use_videos: bool = True, state_dim: int = 8, action_dim: int = 7,
                 tasks: Sequence[str] = DEFAULT_TASKS, seed: int = 0) -> Path:
    """Write a LIBERO-like v3.0 dataset at `root` (must not exist) with lerobot 0.4.4's writer.

    Episode e uses task `tasks[e % len(tasks)]`. Returns `root`.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # heavy import, only when writing

    root = Path(root)
    if root.exists():
        raise FileExistsError(f"make_dataset: {root} already exists")
    if not tasks:
        raise ValueError("make_dataset: tasks must not be empty")
    camera_shape = tuple(int(d) for d in camera_shape)  # type: ignore[assignment]
    ds = LeRobotDataset.create(
        repo_id=repo_id,
        fps=fps,
        features=lerobot_features(cameras, camera_shape, use_videos, state_dim, action_dim),
        root=root,
        robot_type="synthetic",
        use_videos=use_videos,
        image_writer_threads=0,
        image_writer_processes=0,
        streaming_encoding=use_videos,
        encoder_threads=1,
        encoder_queue_maxsize=episode_length + 1,  # never drop a frame, however slow the encoder
    )
    rng = np.random.default_rng(seed)
    for ep in range(num_episodes):
        state = lowdim_values(rng, episode_length, state_dim)
        actions = lowdim_values(rng, episode_length, action_dim)
        task = tasks[ep % len(tasks)]
        for f in range(episode_length):
            frame: dict = {cam: synth_frame(camera_shape, ep, f, ci) for ci, cam in enumerate(cameras)}
            frame["state"] = state[f]
            frame["actions"] = actions[f]
            frame["task"] = task
            ds.add_frame(frame)
        ds.save_episode(parallel_encoding=False)
    ds.finalize()
    return root
