"""Soak: a MixtureLoader (2 real v3.0 video datasets, 2 decode workers) runs for 10 minutes while the RSS and
the open file descriptors of the whole process tree (main + workers) are sampled every 30 s; both must stay
flat (no leak of memory, decoders, shared-memory mappings or files across epochs). Marked slow: run by the
benchmark suite (`python -m benchmarks`), not by CI. FASTMIX_BENCH_QUICK=1 shortens it to ~60 s (samples every
10 s). The report's items/s is the loader's sustained throughput over the whole soak.

Run: python -m pytest benchmarks/bench_soak.py --benchmark-enable -q -m slow
"""

from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pytest

from fastmix.loader.loader import MixtureLoader
from fastmix.loader.options import MemoryOptions
from fastmix.loader.slots import leftover_segments
from fastmix.testing.fakes import live_pids, wait_gone

QUICK = os.environ.get("FASTMIX_BENCH_QUICK", "") not in ("", "0")
DURATION_S = 60.0 if QUICK else 600.0
SAMPLE_EVERY_S = 10.0 if QUICK else 30.0
BATCH_SIZE = 16
RSS_SLACK = 0.10          # relative growth allowed between the first steady sample and the end
RSS_SLACK_BYTES = 48 << 20
FD_SLACK = 4


def tree_usage() -> tuple[int, int, int]:
    """(RSS bytes, open fds, processes) summed over this process and its live descendants."""
    me = psutil.Process()
    rss = fds = n = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            rss += p.memory_info().rss
            fds += p.num_fds()
            n += 1
        except psutil.Error:
            continue
    return rss, fds, n


@pytest.fixture(scope="module")
def soak_sources(tmp_path_factory):
    from fastmix.sources.lerobot_source import LeRobotSource
    from fastmix.testing.synth import make_dataset

    root = tmp_path_factory.mktemp("soak")
    a = make_dataset(root / "soak_a", "soak/a", num_episodes=4, episode_length=30, camera_shape=(32, 32, 3))
    b = make_dataset(root / "soak_b", "soak/b", num_episodes=3, episode_length=20, camera_shape=(32, 32, 3),
                     seed=1)
    return [LeRobotSource("soak/a", root=a), LeRobotSource("soak/b", root=b)]


def soak(sources, duration_s: float, every_s: float) -> dict:
    samples: list[tuple[float, int, int, int]] = []
    items = 0
    seen_epochs = 0
    t0 = time.monotonic()
    next_sample = t0
    with MixtureLoader(sources, dataset_weights=[1.0, 2.0], batch_size=BATCH_SIZE, action_horizon=10,
                       num_workers=2, seed=0, memory=MemoryOptions(pin_memory=False)) as loader:
        epoch = 0
        while time.monotonic() - t0 < duration_s:
            loader.set_epoch(epoch)
            for batch in loader:
                items += int(batch["index"].shape[0])
                assert np.isfinite(batch["actions"].numpy()).all()
                now = time.monotonic()
                if now >= next_sample:
                    samples.append((now - t0, *tree_usage()))
                    next_sample += every_s
                if now - t0 >= duration_s:
                    break
            epoch += 1
            seen_epochs += 1
        samples.append((time.monotonic() - t0, *tree_usage()))
        pids = loader.worker_pids
    elapsed = time.monotonic() - t0
    return dict(samples=samples, items=items, elapsed=elapsed, epochs=seen_epochs, pids=pids)


@pytest.mark.slow
@pytest.mark.timeout(DURATION_S + 300)
def test_soak_rss_and_fds_flat(benchmark, soak_sources):
    benchmark.group = f"soak {int(DURATION_S)}s loader"
    segs_before = set(leftover_segments(pid=os.getpid()))
    result = benchmark.pedantic(soak, args=(soak_sources, DURATION_S, SAMPLE_EVERY_S), rounds=1, iterations=1)
    samples = result["samples"]
    benchmark.extra_info.update(
        role="fastmix", items=result["items"], unit="samples", duration_s=round(result["elapsed"], 1),
        epochs=result["epochs"],
        rss_mib=[round(s[1] / 2**20, 1) for s in samples], fds=[s[2] for s in samples],
        procs=[s[3] for s in samples], sample_t_s=[round(s[0], 1) for s in samples])
    assert len(samples) >= 3, f"too few samples: {samples}"
    # the first sample is taken while workers warm up (imports, first decoders): steady state starts at the 2nd
    base_rss, base_fds = samples[1][1], samples[1][2]
    last_rss, last_fds = samples[-1][1], samples[-1][2]
    peak_rss = max(s[1] for s in samples[1:])
    limit = base_rss * (1 + RSS_SLACK) + RSS_SLACK_BYTES
    assert peak_rss <= limit, (f"RSS of the process tree grew from {base_rss / 2**20:.1f} MiB to "
                               f"{peak_rss / 2**20:.1f} MiB (limit {limit / 2**20:.1f}): {samples}")
    assert max(s[2] for s in samples[1:]) <= base_fds + FD_SLACK, f"open fds grew: {samples}"
    assert last_fds <= base_fds + FD_SLACK and last_rss <= limit
    assert all(s[3] == samples[1][3] for s in samples[1:]), f"worker processes came or went: {samples}"
    assert result["items"] > 0
    # after close: no worker left, no shared-memory segment left
    assert wait_gone(result["pids"], within_s=5), f"workers still alive: {live_pids(result['pids'])}"
    assert set(leftover_segments(pid=os.getpid())) == segs_before
