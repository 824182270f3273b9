"""Datasets of different robots (cross-embodiment mixtures), written by lerobot's own writer (v3.0).

`RobotSchema` describes one robot's LeRobot schema: camera keys with each camera's (H, W, C), video or
image-in-parquet storage, float32 vector features and fps. Three schemas shaped like the robots openpi's
configs read (`LIBERO_LIKE`, `DROID_LIKE`, `ALOHA_LIKE`: the keys of openpi's LeRobotLiberoDataConfig,
LeRobotDROIDDataConfig and LeRobotAlohaDataConfig) and `make_robot_dataset` to write one. Frames and vectors are
`fastmix.testing.synth`'s (smooth gradients with a moving square; random walks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fastmix.testing.synth import lowdim_values, synth_frame


@dataclasses.dataclass(frozen=True)
class RobotSchema:
    """cameras: key -> (H, W, C) uint8 as decoded; vectors: key -> dim (float32); use_videos: AV1 video (else
    PNG images in the parquet files); fps: frames per second; tasks: episode e does tasks[e % len(tasks)]."""

    cameras: Mapping[str, tuple[int, int, int]]
    vectors: Mapping[str, int]
    fps: int
    use_videos: bool = True
    tasks: tuple[str, ...] = ("pick up the bowl", "open the drawer")

    def features(self) -> dict[str, dict]:
        kind = "video" if self.use_videos else "image"
        feats: dict[str, dict] = {cam: {"dtype": kind, "shape": tuple(shape), "names": ["height", "width", "channel"]}
                                  for cam, shape in self.cameras.items()}
        for key, dim in self.vectors.items():
            feats[key] = {"dtype": "float32", "shape": (int(dim),), "names": [f"{key}_{i}" for i in range(dim)]}
        return feats


LIBERO_LIKE = RobotSchema({"image": (256, 256, 3), "wrist_image": (256, 256, 3)}, {"state": 8, "actions": 7},
                          fps=10, tasks=("put the bowl on the plate", "open the top drawer"))
DROID_LIKE = RobotSchema({c: (180, 320, 3) for c in ("exterior_image_1_left", "exterior_image_2_left",
                                                      "wrist_image_left")},
                         {"joint_position": 7, "gripper_position": 1, "actions": 8}, fps=15, use_videos=False,
                         tasks=("put the marker in the cup", "close the drawer"))
ALOHA_LIKE = RobotSchema({f"observation.images.{c}": (480, 640, 3) for c in ("cam_high", "cam_low",
                                                                              "cam_left_wrist", "cam_right_wrist")},
                         {"observation.state": 14, "action": 14}, fps=50, tasks=("fold the towel", "uncap the pen"))


def make_robot_dataset(root: str | Path, repo_id: str, schema: RobotSchema, *, num_episodes: int,
                       episode_length: int | list[int], seed: int = 0) -> Path:
    """Write a v3.0 dataset of `schema` at `root` (must not exist) with lerobot 0.4.4's writer; returns `root`.
    `episode_length`: one length for all episodes or one per episode."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # heavy import, only when writing

    root = Path(root)
    if root.exists():
        raise FileExistsError(f"make_robot_dataset: {root} already exists")
    lengths = [int(episode_length)] * num_episodes if isinstance(episode_length, int) else list(episode_length)
    if len(lengths) != num_episodes:
        raise ValueError(f"make_robot_dataset: {len(lengths)} episode lengths for {num_episodes} episodes")
    ds = LeRobotDataset.create(repo_id=repo_id, fps=schema.fps, features=schema.features(), root=root,
                               robot_type="synthetic", use_videos=schema.use_videos, image_writer_threads=0,
                               image_writer_processes=0, streaming_encoding=schema.use_videos, encoder_threads=1,
                               encoder_queue_maxsize=max(lengths) + 1)
    rng = np.random.default_rng(seed)
    for ep, length in enumerate(lengths):
        vectors = {key: lowdim_values(rng, length, dim) for key, dim in schema.vectors.items()}
        for f in range(length):
            frame: dict = {cam: synth_frame(tuple(shape), ep, f, ci)
                           for ci, (cam, shape) in enumerate(schema.cameras.items())}
            frame.update({key: values[f] for key, values in vectors.items()})
            frame["task"] = schema.tasks[ep % len(schema.tasks)]
            ds.add_frame(frame)
        ds.save_episode(parallel_encoding=False)
    ds.finalize()
    return root


__all__ = ["ALOHA_LIKE", "DROID_LIKE", "LIBERO_LIKE", "RobotSchema", "make_robot_dataset"]
