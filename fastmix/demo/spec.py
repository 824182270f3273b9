"""The embedded default mixture: what the demo generates and which configs are registered for it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoDataset:
    """One generated LIBERO-like dataset of the demo mixture."""

    repo_id: str
    num_episodes: int
    episode_length: int  # frames per episode
    use_videos: bool  # True: AV1 mp4 cameras; False: PNG images stored in parquet
    task: str
    seed: int


DEMO_DATASETS: tuple[DemoDataset, ...] = (
    DemoDataset("fastmix-demo/libero_pick", 16, 50, True, "pick up the black bowl and place it on the plate", 0),
    DemoDataset("fastmix-demo/libero_drawer", 8, 40, True, "open the top drawer of the cabinet", 1),
    DemoDataset("fastmix-demo/interp_images", 10, 30, False, "put the cream cheese in the bowl", 2),
)
DEMO_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 3.0)
DEMO_FPS = 10
DEMO_CAMERA_SHAPE = (96, 96, 3)  # H, W, C
DEMO_STATE_DIM = 8
DEMO_ACTION_DIM = 7
DEMO_ACTION_HORIZON = 10


def demo_home() -> Path:
    """Where the demo datasets live: `$FASTMIX_HOME/lerobot` (default `~/.cache/fastmix/lerobot`)."""
    base = os.environ.get("FASTMIX_HOME", os.path.join(os.path.expanduser("~"), ".cache", "fastmix"))
    return Path(base) / "lerobot"


def demo_assets_dir() -> Path:
    """Where the demo's norm stats are written: `$FASTMIX_HOME/assets`."""
    return demo_home().parent / "assets"
