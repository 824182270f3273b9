"""Shared benchmark data: the LIBERO-like mixtures of the loader benchmarks, written by lerobot's own writer.

Two datasets (20 x 100 and 5 x 100 frames, 10 fps), cameras "image" and "wrist_image" 256x256, "state" (8),
"actions" (7); `bench_video_mixture` stores the cameras as AV1 mp4, `bench_image_mixture` as PNG in parquet
(openpi's LIBERO conversion). Generated once and cached under $FASTMIX_BENCH_DATA (default
~/.cache/fastmix/bench); a dataset is regenerated when its marker does not match the spec below.

`bench_*_seed.py` files run only in the seed environment (tests/seed/make-env: the openpi fork and its pinned
lerobot), where `python -m benchmarks` runs them with FASTMIX_BENCH_SEED=1; elsewhere they are not collected.
A benchmark that is skipped is recorded with its reason in $FASTMIX_BENCH_NOT_RUN (a JSON-lines file, when
set), so the report lists it as not run instead of dropping it silently.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEED_RUN = os.environ.get("FASTMIX_BENCH_SEED", "") not in ("", "0")
# pytest reads this: the seed-environment benchmarks are collected only in the seed run, and only they are.
collect_ignore_glob = [] if SEED_RUN else ["bench_*_seed.py"]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Append a skipped benchmark's name and reason to $FASTMIX_BENCH_NOT_RUN (read by the report)."""
    path = os.environ.get("FASTMIX_BENCH_NOT_RUN")
    if not path or not report.skipped or report.when not in ("setup", "call"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    name = report.nodeid.rsplit("::", 1)[-1]
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"name": name, "reason": reason.removeprefix("Skipped: ")}) + "\n")

CAMERA_SHAPE = (256, 256, 3)
FPS = 10
MARKER = "fastmix_bench.json"


@dataclass(frozen=True)
class BenchDataset:
    name: str
    num_episodes: int
    episode_length: int
    tasks: tuple[str, ...]
    seed: int


MIXTURE = (
    BenchDataset("libero_a", 20, 100, ("pick up the black bowl and place it on the plate",
                                       "put the ketchup in the basket"), 0),
    BenchDataset("libero_b", 5, 100, ("open the top drawer of the cabinet",), 1),
)


def bench_data_dir() -> Path:
    """$FASTMIX_BENCH_DATA, else ~/.cache/fastmix/bench."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "fastmix", "bench")
    return Path(os.environ.get("FASTMIX_BENCH_DATA", default)).expanduser()


def _spec(ds: BenchDataset, use_videos: bool) -> dict:
    return {**asdict(ds), "tasks": list(ds.tasks), "use_videos": use_videos, "fps": FPS,
            "camera_shape": list(CAMERA_SHAPE), "writer": "lerobot LeRobotDataset.create v3.0"}


def ensure_dataset(ds: BenchDataset, use_videos: bool) -> Path:
    """The cached root of `ds` (video or image variant), generated when missing or stale."""
    root = bench_data_dir() / ("video" if use_videos else "image") / ds.name
    spec = _spec(ds, use_videos)
    try:
        if json.loads((root / MARKER).read_text(encoding="utf-8")) == spec:
            return root
    except (OSError, ValueError):
        pass
    from fastmix.testing.synth import make_dataset

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ds.name}-", dir=root.parent))
    try:
        make_dataset(tmp / ds.name, f"fastmix-bench/{ds.name}", num_episodes=ds.num_episodes,
                     episode_length=ds.episode_length, fps=FPS, camera_shape=CAMERA_SHAPE, use_videos=use_videos,
                     tasks=ds.tasks, seed=ds.seed)
        (tmp / ds.name / MARKER).write_text(json.dumps(spec, indent=1), encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        (tmp / ds.name).rename(root)  # complete datasets only ever appear under `root`
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


@pytest.fixture(scope="session")
def bench_video_mixture() -> list[Path]:
    """Roots of the video mixture [libero_a (20x100), libero_b (5x100)], cameras as 256x256 AV1 mp4."""
    return [ensure_dataset(ds, True) for ds in MIXTURE]


@pytest.fixture(scope="session")
def bench_image_mixture() -> list[Path]:
    """Roots of the same mixture with the cameras stored as PNG images in parquet."""
    return [ensure_dataset(ds, False) for ds in MIXTURE]
