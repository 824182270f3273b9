"""Generates the demo's embedded mixture (`fastmix/demo/spec.py`) with lerobot's own writer, once.

Each dataset goes to `spec.demo_home() / repo_id`. After a dataset is written completely, a marker file
holding its spec is written next to it; a directory without a matching marker (half-written by an interrupted
run, or generated from an older spec) is deleted and written again. Nothing touches the network.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
def _captured_stderr() -> Iterator[None]:
    """Send fd 2 (the AV1 encoder's and `datasets`' progress chatter) to a temp file; replay it on error."""
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
    with _captured_stderr():
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


def ensure_demo_data(log: Callable[[str], None] = print) -> list[Path]:
    """Generate every demo dataset that is missing or incomplete; returns their roots (spec order)."""
    roots = []
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
        roots.append(dataset_root(ds))
    return roots


__all__ = ["MARKER", "dataset_root", "ensure_demo_data", "generate_one", "is_complete"]
