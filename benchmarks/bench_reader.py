"""Native reader against LeRobotDataset on the same data, same run (the larger dataset of the benchmark
mixture: 20 x 100 frames, cameras "image" and "wrist_image" 256x256, state 8, actions 7, action chunk 10).

Groups "reader <variant> per sample" (variant: "video" = AV1 mp4, "image" = PNG in parquet), rows in samples/s:

* reference — `LeRobotDataset(root, video_backend="pyav", delta_timestamps={"actions": [t/10 for t in range(10)]})[i]`
  (float32 CHW frames; the like-for-like loader comparison with lerobot's default decoder is bench_loader.py);
* fastmix item — `LeRobotSource(root, delta_timestamps=...)[i]` (the same dict: float32 CHW frames, tensors);
* fastmix batch32 — one 32-index batch: `gather_lowdim(local)` + `tasks_of(local)` +
  `FrameReader.read(frame_requests(local), out)` into uint8 HWC arrays (what a loader worker does).

Every round reads fresh random indices (the same sequence for every row).
Run: python -m pytest benchmarks/bench_reader.py --benchmark-enable -o python_files='bench_*.py' -q
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

QUICK = os.environ.get("FASTMIX_BENCH_QUICK", "") not in ("", "0")
BATCH = 32
ITEMS_PER_ROUND = 16 if QUICK else 32  # item-by-item rows
ROUNDS = 3 if QUICK else 8
HORIZON = 10
VARIANTS = {"video": "bench_video_mixture", "image": "bench_image_mixture"}

pytestmark = pytest.mark.filterwarnings("ignore:The video decoding and encoding capabilities:UserWarning")


def dataset_root(request, variant: str) -> Path:
    return Path(request.getfixturevalue(VARIANTS[variant])[0])


def delta_timestamps(fps: int) -> dict[str, list[float]]:
    return {"actions": [t / fps for t in range(HORIZON)]}


def index_stream(n: int, size: int) -> Callable[[], np.ndarray]:
    """Each call returns the next `size` random indices of one fixed stream (seed 0)."""
    rng = np.random.default_rng(0)
    return lambda: rng.integers(0, n, size).astype(np.int64)


def tag(benchmark, variant: str, role: str, items: int, fmt: str) -> None:
    benchmark.group = f"reader {variant} per sample"
    benchmark.extra_info.update(role=role, items=items, unit="samples", format=fmt)


def run(benchmark, fn: Callable[[], None]) -> None:
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reference_lerobot_dataset_item(benchmark, request, variant: str) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = dataset_root(request, variant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = LeRobotDataset(f"fastmix-bench/{root.name}", root=root, video_backend="pyav",
                            delta_timestamps=delta_timestamps(ds_fps(root)))
    nxt = index_stream(len(ds), ITEMS_PER_ROUND)

    def read() -> None:
        for i in nxt().tolist():
            ds[i]

    tag(benchmark, variant, "reference", ITEMS_PER_ROUND, "float32 CHW per item")
    run(benchmark, read)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fastmix_source_item(benchmark, request, variant: str) -> None:
    from fastmix.sources.lerobot_source import LeRobotSource

    root = dataset_root(request, variant)
    src = LeRobotSource(root=root, delta_timestamps=delta_timestamps(ds_fps(root)))
    nxt = index_stream(len(src), ITEMS_PER_ROUND)

    def read() -> None:
        for i in nxt().tolist():
            src[i]

    tag(benchmark, variant, "fastmix", ITEMS_PER_ROUND, "float32 CHW per item")
    run(benchmark, read)
    src.close()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fastmix_batch32(benchmark, request, variant: str) -> None:
    from fastmix.sources.frames import FrameReader
    from fastmix.sources.lerobot_source import LeRobotSource

    root = dataset_root(request, variant)
    src = LeRobotSource(root=root, delta_timestamps=delta_timestamps(ds_fps(root)))
    reader = FrameReader(max_open_files=16)
    out = {k: np.empty((BATCH, *src.camera_shape(k)), np.uint8) for k in src.camera_keys}
    nxt = index_stream(len(src), BATCH)

    def read() -> None:
        local = nxt()
        src.gather_lowdim(local)
        src.tasks_of(local)
        reader.read(src.frame_requests(local), out)

    tag(benchmark, variant, "fastmix", BATCH, "uint8 BHWC")
    run(benchmark, read)
    reader.close()


def ds_fps(root: Path) -> int:
    from fastmix.sources.meta import read_info

    return int(read_info(root, root.name)["fps"])
