"""The real G1 v2.1 data (../shared/data/g1_v21_partial: AV1 480x640, 30 fps, the 16 episodes whose videos are
present): MixtureLoader against lerobot's LeRobotDataset. Seed environment only: lerobot 0.4.4 (the main
environment) reads only format v3.0, the fork's pinned lerobot (0cf8648, `lerobot.common.datasets`) reads this
v2.1 dataset in place, so the reference is the pinned lerobot and no conversion is involved.

Group "loader G1 v2.1 B=32" (samples/s), single frames (camera + state + action of one timestep, no action
chunks: the pinned lerobot indexes its episode ranges by episode index, which is wrong for a non-contiguous
`episodes=` selection, so chunks cannot be compared there):

* reference (primary) — `LeRobotDataset("g1_v21_partial", root, episodes=[4, 5, 7, 8, 10..21])` with lerobot's
  default decoder (torchcodec), `DataLoader(batch_size=32, shuffle=True, num_workers=2, spawn,
  persistent_workers=True)`: float32 BCHW in [0, 1];
* fastmix float32 — `MixtureLoader([LeRobotSource(root, episodes=...)], batch_size=32, num_workers=2,
  image_dtype="float32")`: float32 BCHW in [0, 1] (converted by the decode workers into float32 slots);
* fastmix uint8 — the same with image_dtype="uint8": uint8 BHWC (not like-for-like; its ratio cell says so).

Run (seed env python, from the repo root):
  FASTMIX_BENCH_SEED=1 PYTHONPATH=$PWD python -m pytest benchmarks/bench_g1_seed.py --benchmark-enable \
      -o python_files='bench_*.py' -q
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from benchmarks import seed_setup

pytest.importorskip("lerobot.common.datasets", reason="needs the seed environment's lerobot (v2.1 reader)")

QUICK = os.environ.get("FASTMIX_BENCH_QUICK", "") not in ("", "0")
BATCH = 32
WORKERS = 2
ROUNDS = 2 if QUICK else 3
BATCHES = 2 if QUICK else 4  # per round
WARMUP_BATCHES = 2 * 2 * WORKERS + 1  # both sides: workers started, prefetch queues drained
GROUP = f"loader G1 v2.1 B={BATCH}"
FORMATS = {"float32": "float32 BCHW", "uint8": "uint8 BHWC"}
CAMERA = "observation.images.cam_high"


@pytest.fixture(scope="module")
def g1_root():
    if not seed_setup.G1_ROOT.is_dir():
        pytest.skip(f"the shared G1 dataset is missing at {seed_setup.G1_ROOT} (../shared beside the checkout)")
    return seed_setup.G1_ROOT


def tag(benchmark, role: str, fmt: str, desc: str, *, primary: bool = False) -> None:
    benchmark.group = GROUP
    benchmark.extra_info.update(role=role, items=BATCHES * BATCH, unit="samples", format=fmt, desc=desc,
                                env=seed_setup.seed_versions())
    if primary:
        benchmark.extra_info["primary"] = True


def timed(benchmark, next_batch) -> None:
    def run() -> int:
        return sum(len(next_batch()["task"]) for _ in range(BATCHES))

    assert benchmark.pedantic(run, rounds=ROUNDS, iterations=1) == BATCHES * BATCH


def test_reference_lerobot_v21(benchmark, g1_root) -> None:
    import torch
    from lerobot.common.datasets.lerobot_dataset import LeRobotDataset
    from torch.utils.data import DataLoader

    ds = LeRobotDataset("g1_v21_partial", root=g1_root, episodes=seed_setup.G1_EPISODES)
    if ds.video_backend != "torchcodec":
        pytest.skip(f"lerobot's default decoder here is {ds.video_backend!r}, not torchcodec (is torchcodec "
                    "installed and the system FFmpeg present?)")
    dl = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS, multiprocessing_context="spawn",
                    persistent_workers=True, drop_last=True, generator=torch.Generator().manual_seed(0))
    state: dict[str, Any] = {"it": iter(dl)}

    def next_batch():
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(dl)
            return next(state["it"])

    try:
        for _ in range(WARMUP_BATCHES):  # workers started, prefetch queues drained
            batch = next_batch()
        img = batch[CAMERA]
        assert img.dtype == torch.float32 and tuple(img.shape) == (BATCH, 3, 480, 640), (img.dtype, img.shape)
        tag(benchmark, "reference", "float32 BCHW",
            f"pinned lerobot (v2.1) LeRobotDataset, episodes {len(seed_setup.G1_EPISODES)} of 100 (videos "
            f"present), default decoder ({ds.video_backend}), DataLoader shuffle, {WORKERS} spawn workers; "
            "single frames, AV1 480x640: images float32 BCHW in [0, 1]", primary=True)
        timed(benchmark, next_batch)
    finally:
        it = state.pop("it")
        try:
            if hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()  # noqa: SLF001 - persistent workers: stop them now
        except RuntimeError as exc:  # its decoder workers sometimes abort at exit (after the timing)
            benchmark.extra_info["reference_shutdown_error"] = str(exc)


@pytest.mark.parametrize("image_dtype", list(FORMATS))
def test_fastmix_loader_g1(benchmark, g1_root, image_dtype: str) -> None:
    from fastmix.loader.loader import MixtureLoader
    from fastmix.sources.lerobot_source import LeRobotSource

    src = LeRobotSource("g1_v21_partial", root=g1_root, episodes=seed_setup.G1_EPISODES)
    loader = MixtureLoader([src], batch_size=BATCH, num_workers=WORKERS, seed=0, num_batches=10**9,
                           image_dtype=image_dtype)
    try:
        it = iter(loader)
        for _ in range(WARMUP_BATCHES):  # the same warm-up as the reference (workers' files opened)
            batch = next(it)
        img = batch[CAMERA]
        want = (BATCH, 3, 480, 640) if image_dtype == "float32" else (BATCH, 480, 640, 3)
        assert str(img.dtype) == f"torch.{image_dtype}" and tuple(img.shape) == want, (img.dtype, img.shape)
        where = "converted by the decode workers into float32 slots" if image_dtype == "float32" else "as decoded"
        tag(benchmark, "fastmix", FORMATS[image_dtype],
            f"MixtureLoader image_dtype={image_dtype!r}, {WORKERS} workers, the same episodes; single frames: "
            f"images {FORMATS[image_dtype]} ({where})")
        timed(benchmark, lambda: next(it))
    finally:
        loader.close()
