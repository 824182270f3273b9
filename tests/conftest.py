"""Session fixtures shared by every test: small generated LeRobot datasets and the real G1 dataset.

The Hugging Face Hub is never touched: HF_HUB_OFFLINE=1 and HF_LEROBOT_HOME points at a temporary directory
(set here, before anything imports lerobot, which reads them at import time).

The user's caches are never written: FASTMIX_CACHE (the low-dim store), XDG_CACHE_HOME (where Hugging Face's
`datasets` cache, which lerobot's LeRobotDataset fills, and matplotlib's go by default) and HF_DATASETS_CACHE
point into one session temporary directory, set here before anything imports fastmix and removed when the
session ends. The end of the session also reports any entry that appeared meanwhile in the user's own low-dim
store directory (another process may have written it, so it is reported, not failed);
`tests/reliability/test_store_cases.py::test_the_suite_leaves_no_store_entry_in_the_users_cache` is the test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
_LEROBOT_HOME = tempfile.mkdtemp(prefix="fastmix-test-lerobot-home-")
os.environ["HF_LEROBOT_HOME"] = _LEROBOT_HOME


def _user_lowdim_dirs() -> list[Path]:
    """Where the low-dim store of this user goes without the suite's redirection."""
    dirs = [Path("~/.cache/fastmix/lowdim").expanduser()]
    if os.environ.get("XDG_CACHE_HOME"):
        dirs.append(Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fastmix" / "lowdim")
    if os.environ.get("FASTMIX_CACHE"):
        dirs.append(Path(os.environ["FASTMIX_CACHE"]).expanduser() / "lowdim")
    return list(dict.fromkeys(dirs))


def _listing(dirs: list[Path]) -> dict[Path, set[str]]:
    return {d: set(os.listdir(d)) if d.is_dir() else set() for d in dirs}


_USER_LOWDIM = _user_lowdim_dirs()
_USER_LOWDIM_AT_START = _listing(_USER_LOWDIM)
_SESSION_CACHE = tempfile.mkdtemp(prefix="fastmix-test-cache-")
os.environ["FASTMIX_CACHE"] = os.path.join(_SESSION_CACHE, "fastmix")
os.environ["XDG_CACHE_HOME"] = os.path.join(_SESSION_CACHE, "xdg")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_SESSION_CACHE, "hf-datasets")

# Small on purpose: 8 episodes x 30 frames (240 samples, enough for 200 distinct parity indices), 64x64 cameras.
NUM_EPISODES = 8
EPISODE_LENGTH = 30
CAMERA_SHAPE = (64, 64, 3)
FPS = 10
VIDEO_TASKS = ("pick up the black bowl", "open the top drawer", "push the plate to the front")
IMAGE_TASKS = ("put the cream cheese in the bowl", "turn on the stove")

G1_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "g1_v21_partial"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_LEROBOT_HOME, ignore_errors=True)
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
    now = _listing(_USER_LOWDIM)
    new = {d: sorted(now[d] - _USER_LOWDIM_AT_START[d]) for d in _USER_LOWDIM if now[d] - _USER_LOWDIM_AT_START[d]}
    if new:
        line = ("fastmix tests: new low-dim store entries appeared in the user's cache during this session "
                "(written by this session, or by another process meanwhile): "
                + "; ".join(f"{d}: {', '.join(names)}" for d, names in new.items()))
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line, yellow=True, bold=True)
        else:
            print(line)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding the generated datasets of this session."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="session")
def video_ds(dataset_dir: Path) -> Path:
    """v3.0 root written by lerobot's writer: cameras "image", "wrist_image" as AV1 video."""
    from fastmix.testing.synth import make_dataset

    return make_dataset(dataset_dir / "video_ds", "fastmix-test/video_ds", num_episodes=NUM_EPISODES,
                        episode_length=EPISODE_LENGTH, fps=FPS, camera_shape=CAMERA_SHAPE, use_videos=True,
                        tasks=VIDEO_TASKS, seed=0)


@pytest.fixture(scope="session")
def image_ds(dataset_dir: Path) -> Path:
    """v3.0 root written by lerobot's writer: cameras "image", "wrist_image" as PNG images in parquet."""
    from fastmix.testing.synth import make_dataset

    return make_dataset(dataset_dir / "image_ds", "fastmix-test/image_ds", num_episodes=NUM_EPISODES,
                        episode_length=EPISODE_LENGTH, fps=FPS, camera_shape=CAMERA_SHAPE, use_videos=False,
                        tasks=IMAGE_TASKS, seed=1)


@pytest.fixture(scope="session")
def v21_ds(video_ds: Path, dataset_dir: Path) -> Path:
    """`video_ds` rewritten as v2.1 (per-episode parquet and mp4) by fastmix's own writer."""
    from fastmix.testing.v21 import write_v21

    return write_v21(video_ds, dataset_dir / "v21_ds")


@pytest.fixture(scope="session")
def g1_root() -> Path:
    """The real G1 v2.1 dataset in ../shared (read-only); skips when ../shared is absent."""
    if not (G1_DIR / "meta" / "info.json").is_file():
        pytest.skip(f"real G1 dataset not found at {G1_DIR} (../shared beside the checkout is absent)")
    return G1_DIR


@pytest.fixture
def fake_sources(monkeypatch: pytest.MonkeyPatch) -> list:
    """create_data_loader opens two in-memory FakeSources (2×5 and 1×4 frames) instead of LeRobot roots."""
    from fastmix.openpi import data_loader
    from fastmix.testing.fakes import FakeSource

    sources = [FakeSource("fake/a", num_episodes=2, episode_length=5),
               FakeSource("fake/b", num_episodes=1, episode_length=4)]
    monkeypatch.setattr(data_loader, "open_sources", lambda data_config: sources)
    return sources
