"""The loader: `MixtureLoader` (loader.py) and its option groups (options.py: `WorkerOptions`, `MemoryOptions`).

Inside, one batch goes plan → workers → slots → hand-out: `plan.py` (sampler draws → low-dim gather into a slot +
frame requests), `pipeline.py` (one pass: dispatch to the decode workers, in-order collection, copy-out or
lending), `stream.py` (passes chained over epochs on one `prefetch.Prefetcher` thread, each batch with the
position after it), `cursor.py` (the position), `state.py` (the saved position), `workers.py` (main side of
the worker processes) and `worker_main.py` + `readers.py` (the torch-free worker body and its reader stack:
decode, decode-time resize, float conversion), `slots.py` (the shared-memory ring), `lending.py` (zero-copy
hand-out), `device.py` (pinned memory, CUDA streams), `resources.py` (what must be released).

Imports here are lazy so decode workers (which import `fastmix.loader.worker_main`) never load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MemoryOptions": "fastmix.loader.options",
    "MixtureLoader": "fastmix.loader.loader",
    "WorkerOptions": "fastmix.loader.options",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastmix.loader' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
