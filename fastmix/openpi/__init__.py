"""Everything openpi-shaped: `install()` (openpi's own loader routed through fastmix, `adapter`), the config
types (`config`) and the registry of named configs (`registry`), `create_data_loader` (`data_loader`), openpi's
transforms (`transforms`, batched), openpi's `Observation` (`observation`) and norm statistics (`norm_stats`);
for openpi's own configs (`for_openpi`): `MultiDatasetLeRobotConfig`, a multi-dataset LeRobot config in
openpi's types (upstream openpi has none), and `register_openpi_configs`, which adds `TrainConfig`s to openpi's
registry; `python -m fastmix.openpi.launch` runs an openpi script unchanged on fastmix (`launch`).

    import fastmix.openpi
    fastmix.openpi.install()   # openpi.training.data_loader.create_data_loader now runs on fastmix

The names below are imported on first use (nothing loads with the package).
"""

from __future__ import annotations

import importlib
from typing import Any

# `fastmix.openpi.<name>` -> the module defining it: the adapter's functions (openpi's own signatures) and the
# configs in openpi's types (built from openpi's classes on first access)
_EXPORTS = {
    **dict.fromkeys(("create_data_loader", "create_torch_dataset", "install", "is_installed", "openpi_draws",
                     "uninstall"), "fastmix.openpi.adapter"),
    **dict.fromkeys(("MultiDatasetDataConfig", "MultiDatasetLeRobotConfig", "register_openpi_configs"),
                    "fastmix.openpi.for_openpi"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastmix.openpi' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted({*__all__, "adapter", "batched", "config", "data_loader", "for_openpi", "launch", "norm_stats",
                   "observation", "registry", "transforms"})
