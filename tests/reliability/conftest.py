"""Shared helpers of the reliability catalogue: leak checks (child processes, /dev/shm segments, fds) and
small damaged copies of generated datasets. Root fixtures (video_ds, image_ds, v21_ds) come from
tests/conftest.py; everything here is cheap so the catalogue runs in well under 90 s on 2 cores."""

from __future__ import annotations

import gc
import os
import shutil
import time
from pathlib import Path

import psutil
import pytest

from fastmix.loader.slots import leftover_segments


def _live_children() -> set[int]:
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _fds() -> int:
    return psutil.Process().num_fds()


@pytest.fixture
def no_leaks():
    """Asserts after the test: no new live child process (bar multiprocessing's resource tracker), no new
    fastmix /dev/shm segment of this process, and no fd growth beyond a small slack.

    After the first full collection the surviving objects are frozen (`gc.freeze`): with torch and lerobot
    imported a full collection takes ~1 s, and only what a test creates can leak from it."""
    gc.collect()
    gc.freeze()
    children = _live_children()
    segs = set(leftover_segments(pid=os.getpid()))
    fds = _fds()
    yield
    gc.collect()
    deadline = time.monotonic() + 5.0
    while True:
        new = {p for p in _live_children() - children
               if "resource_tracker" not in " ".join(_cmdline(p))}
        if not new or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not new, f"leaked child processes: {[(p, _cmdline(p)) for p in new]}"
    assert set(leftover_segments(pid=os.getpid())) == segs, "leaked /dev/shm segment"
    assert _fds() <= fds + 3, f"fd leak: {fds} -> {_fds()}"


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


@pytest.fixture(scope="session")
def rel_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="session")
def tiny_video(rel_root) -> Path:
    """A v3.0 video dataset: 2 episodes x 6 frames, 16x16 cameras (generated once per session)."""
    from fastmix.testing.synth import make_dataset

    return make_dataset(rel_root / "tiny_video", "rel/tiny_video", num_episodes=2, episode_length=6,
                        camera_shape=(16, 16, 3), tasks=("pick the bowl", "open the drawer"))


@pytest.fixture(scope="session")
def tiny_image(rel_root) -> Path:
    """A v3.0 image-in-parquet dataset with a one-frame episode and non-ASCII task strings."""
    from fastmix.testing.synth import make_dataset

    return make_dataset(rel_root / "tiny_image", "rel/tiny_image", num_episodes=2, episode_length=1,
                        camera_shape=(16, 16, 3), use_videos=False,
                        tasks=("ramasser la tasse à café ☕", "把碗放进抽屉"))


@pytest.fixture
def copy_ds(tmp_path):
    """copy_ds(root) -> a fresh copy under tmp_path to damage (shared data is never touched)."""

    def _copy(root: Path) -> Path:
        dst = tmp_path / Path(root).name
        shutil.copytree(root, dst)
        return dst

    return _copy


@pytest.fixture(scope="session")
def tiny3(rel_root) -> Path:
    """A v3.0 video dataset: 3 episodes x 6 frames, one 16x16 camera "image" (generated once per session)."""
    from fastmix.testing.synth import make_dataset

    return make_dataset(rel_root / "tiny3", "rel/tiny3", num_episodes=3, episode_length=6, cameras=("image",),
                        camera_shape=(16, 16, 3), tasks=("pick the bowl", "open the drawer"), seed=3)


@pytest.fixture(scope="session")
def tiny3_v21(tiny3, rel_root) -> Path:
    """`tiny3` rewritten as v2.1 (lerobot 0cf8648's layout: one parquet and one mp4 per episode)."""
    from fastmix.testing.v21 import write_v21

    return write_v21(tiny3, rel_root / "tiny3_v21")
