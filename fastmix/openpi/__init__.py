"""Everything openpi-shaped: `install()` (openpi's own loader routed through fastmix, `adapter`), the config
types (`config`) and the registry of named configs (`registry`), `create_data_loader` (`data_loader`), openpi's
transforms (`transforms`, batched), openpi's `Observation` (`observation`) and norm statistics (`norm_stats`).

    import fastmix.openpi
    fastmix.openpi.install()   # openpi.training.data_loader.create_data_loader now runs on fastmix

The names below are imported on first use (nothing loads with the package).
"""

from __future__ import annotations

import importlib
from typing import Any

# the adapter's functions, as `fastmix.openpi.<name>` (openpi's own signatures)
_EXPORTS = ("create_data_loader", "create_torch_dataset", "install", "is_installed", "openpi_draws", "uninstall")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastmix.openpi' has no attribute {name!r}")
    return getattr(importlib.import_module("fastmix.openpi.adapter"), name)


def __dir__() -> list[str]:
    return sorted({*__all__, "adapter", "batched", "config", "data_loader", "norm_stats", "observation",
                   "registry", "transforms"})
