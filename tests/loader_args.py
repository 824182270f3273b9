"""`grouped(**kwargs)`: MixtureLoader keyword arguments with the worker and memory options put in their groups
(`WorkerOptions`, `MemoryOptions`), so a test helper can take them flat."""

from __future__ import annotations

from typing import Any

from fastmix.loader.options import MemoryOptions, WorkerOptions

WORKER_KEYS = ("reader_factory", "max_open_files", "worker_timeout_s", "mp_context")
MEMORY_KEYS = ("prefetch", "pin_memory", "zero_copy", "shm_dir")


def grouped(**kwargs: Any) -> dict[str, Any]:
    """`kwargs` with the keys of `WORKER_KEYS` as `workers=WorkerOptions(...)` and those of `MEMORY_KEYS` as
    `memory=MemoryOptions(...)` (validation errors then come from the option groups, as for a user)."""
    out = dict(kwargs)
    workers = {k: out.pop(k) for k in WORKER_KEYS if k in out}
    memory = {k: out.pop(k) for k in MEMORY_KEYS if k in out}
    if workers:
        out["workers"] = WorkerOptions(**workers)
    if memory:
        out["memory"] = MemoryOptions(**memory)
    return out
