"""`MixtureLoader`'s option groups and the checks of its arguments.

The loader's own arguments are what most users set (datasets, weights, batch size, action horizon, workers,
seed, device, image format); how the decode workers run (`WorkerOptions`) and how batches are held in memory
(`MemoryOptions`) are grouped here with their defaults, each validated once when constructed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastmix._args import check_int, check_optional_int, check_seconds
from fastmix.errors import ConfigError
from fastmix.loader.slots import SHM_DIR

# zero-copy: how many batches the consumer side may hold (its current batch, the one being handed to it, ones
# queued by a prefetching wrapper) before further batches are copied: LEND_BYTES worth of slots, within bounds
LEND_SLOTS_BOUNDS = (4, 8)
LEND_BYTES = 256 << 20
MAX_OPEN_FILES_BOUNDS = (16, 128)  # default container cache per worker: cameras x batch rows, clamped
MP_CONTEXTS = ("spawn", "forkserver")


@dataclass(frozen=True)
class WorkerOptions:
    """How the decode workers run.

    Args:
        reader_factory: picklable callable building a frame reader in each worker (default: fastmix's
            `FrameReader`, with the decode-time resize and float conversion the loader asks for).
        max_open_files: open containers each worker's default reader keeps (default: cameras x batch_size,
            clamped to [16, 128]); ignored with a custom `reader_factory`.
        worker_timeout_s: a worker with work that makes no progress for this many seconds (stopped, hung in a
            decoder) is killed and reported with its pid and the file it was decoding.
        mp_context: "spawn" or "forkserver" (fork is unsafe with decoder and CUDA state).
    """

    reader_factory: Callable[[], Any] | None = None
    max_open_files: int | None = None
    worker_timeout_s: float = 30.0
    mp_context: str = "spawn"

    def __post_init__(self) -> None:
        if self.reader_factory is not None and not callable(self.reader_factory):
            raise ConfigError(f"reader_factory must be callable or None, got reader_factory={self.reader_factory!r}")
        object.__setattr__(self, "max_open_files", check_optional_int(self.max_open_files, "max_open_files",
                                                                      minimum=1))
        object.__setattr__(self, "worker_timeout_s", check_seconds(self.worker_timeout_s, "worker_timeout_s"))
        if self.mp_context not in MP_CONTEXTS:
            raise ConfigError(f"mp_context must be one of {MP_CONTEXTS} (fork is unsafe with decoder and CUDA "
                              f"state), got mp_context={self.mp_context!r}")


@dataclass(frozen=True)
class MemoryOptions:
    """How batches are held: the shared-memory ring, pinning and the zero-copy hand-out.

    Args:
        prefetch: batches decoded ahead of the consumer (the ring has prefetch + 2 slots, plus lendable ones).
        pin_memory: pin host batches (default: when CUDA is available).
        zero_copy: CPU batches are arrays over the shared-memory slot itself (no copy); a slot is reused only
            once every array of its batch is gone; while the consumer side holds 4..8 batches (256 MiB of
            slots) the next ones are copied. Only camera arrays are lent (low-dim fields are copied): keeping
            any slice of a lent image keeps that camera array of its slot lent (and, after close(), resident in
            shared memory; the rest of the ring is released at close()) until it is dropped. Default: on for
            CPU output without pinning; False copies every batch.
        shm_dir: an existing, writable directory where the slot ring lives (a tmpfs).
    """

    prefetch: int = 2
    pin_memory: bool | None = None
    zero_copy: bool | None = None
    shm_dir: str = SHM_DIR

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefetch", check_int(self.prefetch, "prefetch", minimum=1))
        object.__setattr__(self, "shm_dir", check_shm_dir(self.shm_dir))


def check_shm_dir(shm_dir: Any) -> str:
    """`shm_dir` as a path string: an existing directory this user can create files in."""
    if not isinstance(shm_dir, (str, os.PathLike)):
        raise ConfigError(f"shm_dir must be a directory path, got shm_dir={shm_dir!r}")
    path = os.fspath(shm_dir)
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise ConfigError(f"shm_dir={path!r} {what}: the loader keeps its batch slots there. Create it, or pass "
                          f"an existing tmpfs directory (default {SHM_DIR!r}).")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"shm_dir={path!r} is not writable by this user: the loader creates its batch slots "
                          f"there. Fix its permissions or pass another directory (default {SHM_DIR!r}).")
    return path


def as_source(obj: Any) -> Any:
    """A source of the mixture: a LeRobotSource-like object, or a LeRobotSource opened at a dataset root."""
    if isinstance(obj, (str, os.PathLike)) and Path(obj).exists():
        from fastmix.sources.lerobot_source import LeRobotSource

        return LeRobotSource(root=obj)
    if isinstance(obj, str):
        raise ConfigError(f"source {obj!r} is not a LeRobotSource and no dataset root exists at that path; "
                          "pass LeRobotSource(repo_id, root=...) objects or dataset roots")
    for attr in ("gather_lowdim", "frame_requests", "tasks_of", "camera_keys"):
        if not hasattr(obj, attr):
            raise ConfigError(f"source {obj!r} lacks {attr!r}; MixtureLoader needs LeRobotSource objects")
    return obj


def image_size(size: Any) -> tuple[int, int] | None:
    """None, or `resize_images` as (height, width), two ints >= 1."""
    if size is None:
        return None
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ConfigError(f"resize_images must be (height, width) or None, got resize_images={size!r}") from None
    return check_int(h, "resize_images[0]", minimum=1), check_int(w, "resize_images[1]", minimum=1)


def default_max_open_files(num_cameras: int, batch_size: int) -> int:
    """Open containers a worker keeps: every file one batch can touch (cameras x rows), so a batch's files
    stay open for the next when the mixture has few files, clamped to `MAX_OPEN_FILES_BOUNDS`."""
    lo, hi = MAX_OPEN_FILES_BOUNDS
    return int(min(hi, max(lo, num_cameras * batch_size)))


__all__ = ["LEND_BYTES", "LEND_SLOTS_BOUNDS", "MAX_OPEN_FILES_BOUNDS", "MemoryOptions", "WorkerOptions",
           "as_source", "check_shm_dir", "default_max_open_files", "image_size"]
