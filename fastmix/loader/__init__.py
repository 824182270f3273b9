"""The loader stage: `MixtureLoader` (mixture_loader.py) with its position (cursor.py), the pass that plans,
dispatches and collects batches (pipeline.py) over a batch planner (plan.py), a shared-memory slot ring
(slots.py), decode worker processes (workers.py: main side; worker_main.py: the torch-free worker body) and
the pinned/CUDA device stage (device.py).

Imports are lazy so decode workers (which import `fastmix.loader.worker_main`) never load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BatchPlanner": "fastmix.loader.plan",
    "MixtureLoader": "fastmix.loader.loader",
    "SlotRing": "fastmix.loader.slots",
    "WorkerPool": "fastmix.loader.workers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastmix.loader' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
