"""Generates the demo's embedded mixture (`fastmix/demo/spec.py`) with lerobot's own writer, once.

Each dataset goes to `spec.demo_home() / repo_id`. After a dataset is written completely, a marker file
holding its spec is written next to it; a directory without a matching marker (half-written by an interrupted
run, or generated from an older spec) is deleted and written again. Generation runs under an exclusive lock
(`fcntl.flock` on `spec.demo_home() / LOCK_FILE`): a second `fastmix demo` started meanwhile (another terminal,
another rank) waits for it, then finds the datasets complete and reuses them. Nothing touches the network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fastmix.demo import spec

MARKER = ".fastmix_demo_complete.json"
LOCK_FILE = ".fastmix_demo.lock"


def dataset_root(ds: spec.DemoDataset) -> Path:
    """Where one demo dataset lives."""
    return spec.demo_home() / ds.repo_id


def _expected_marker(ds: spec.DemoDataset) -> dict:
    return {
        "dataset": dataclasses.asdict(ds),
        "fps": spec.DEMO_FPS,
        "camera_shape": list(spec.DEMO_CAMERA_SHAPE),
        "state_dim": spec.DEMO_STATE_DIM,
        "action_dim": spec.DEMO_ACTION_DIM,
    }


def is_complete(ds: spec.DemoDataset) -> bool:
    """Whether `ds` was generated completely from the current spec."""
    marker = dataset_root(ds) / MARKER
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == _expected_marker(ds)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def generation_lock(log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the exclusive lock of the demo's data (`demo_home() / LOCK_FILE`; released when the block ends or the
    process dies). When another process holds it, say so through `log` and wait for it."""
    path = spec.demo_home() / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"  another fastmix process is writing the demo data (lock {path}); waiting for it")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet_writer() -> Iterator[None]:
    """Hide what lerobot's dataset writer prints while writing (the AV1 encoder's banner and `datasets`' progress
    bars, on fd 2): it goes to a temp file, replayed (its last 8000 characters) only when the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-8000:])
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def generate_one(ds: spec.DemoDataset) -> Path:
    """Write `ds` with lerobot's writer (removing any incomplete copy first), then its marker."""
    from fastmix.testing.synth import make_dataset  # imports lerobot: only when something must be generated

    root = dataset_root(ds)
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with quiet_writer():
        make_dataset(
            root,
            ds.repo_id,
            num_episodes=ds.num_episodes,
            episode_length=ds.episode_length,
            fps=spec.DEMO_FPS,
            camera_shape=spec.DEMO_CAMERA_SHAPE,
            use_videos=ds.use_videos,
            state_dim=spec.DEMO_STATE_DIM,
            action_dim=spec.DEMO_ACTION_DIM,
            tasks=(ds.task,),
            seed=ds.seed,
        )
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(_expected_marker(ds), indent=1), encoding="utf-8")
    tmp.replace(root / MARKER)
    return root


def _generate_missing(log: Callable[[str], None]) -> None:
    for ds in spec.DEMO_DATASETS:
        frames = ds.num_episodes * ds.episode_length
        kind = "AV1 video" if ds.use_videos else "images in parquet"
        if is_complete(ds):
            log(f"  {ds.repo_id}: present ({frames} frames, {kind}) at {dataset_root(ds)}")
        else:
            t0 = time.perf_counter()
            generate_one(ds)
            log(f"  {ds.repo_id}: generated {ds.num_episodes} episodes x {ds.episode_length} frames ({kind}) "
                f"in {time.perf_counter() - t0:.1f} s")


def ensure_demo_data(log: Callable[[str], None] = print) -> list[Path]:
    """Generate every demo dataset that is missing or incomplete (under `generation_lock`: concurrent callers
    generate each dataset once and all return complete datasets); returns their roots (spec order)."""
    if all(is_complete(ds) for ds in spec.DEMO_DATASETS):
        _generate_missing(log)  # nothing to write: no lock needed, each one reported present
    else:
        with generation_lock(log):
            _generate_missing(log)
    return [dataset_root(ds) for ds in spec.DEMO_DATASETS]


__all__ = ["LOCK_FILE", "MARKER", "dataset_root", "ensure_demo_data", "generate_one", "generation_lock",
           "is_complete", "quiet_writer"]
