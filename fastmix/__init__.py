"""fastmix: a high-performance weighted multi-dataset loader for co-training on LeRobot datasets.

The public API is imported lazily (torch, numba and PyAV load only when first needed). The folders are the
layers, imports run only downward: kernels → core → sources → loader → openpi → tools → demo (and `cli` on top);
`errors`, `_args` and `distributed` sit below them all.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # errors
    "ConfigError": "fastmix.errors",
    "DatasetFormatError": "fastmix.errors",
    "DecodeError": "fastmix.errors",
    "FastmixError": "fastmix.errors",
    "IncompatibleDatasetsError": "fastmix.errors",
    "MissingFileError": "fastmix.errors",
    "WorkerError": "fastmix.errors",
    # sampling core
    "AliasTable": "fastmix.core.alias",
    "FrameFilter": "fastmix.core.filters",
    "IndexMap": "fastmix.core.index_map",
    "Mixture": "fastmix.core.mixture",
    "MixtureSampler": "fastmix.core.sampler",
    "backend": "fastmix.kernels.backend",
    # reader
    "LeRobotSource": "fastmix.sources.lerobot_source",
    "check_compatible": "fastmix.sources.compat",
    # loader
    "MemoryOptions": "fastmix.loader.options",
    "MixtureLoader": "fastmix.loader.loader",
    "WorkerOptions": "fastmix.loader.options",
    # openpi surface
    "AssetsConfig": "fastmix.openpi.config",
    "DataConfig": "fastmix.openpi.config",
    "LeRobotLiberoDataConfig": "fastmix.openpi.config",
    "MixtureDataConfig": "fastmix.openpi.mixture_config",
    "MultiDatasetLiberoDataConfig": "fastmix.openpi.config",
    "Pi0Config": "fastmix.openpi.config",
    "TrainConfig": "fastmix.openpi.config",
    "create_data_loader": "fastmix.openpi.data_loader",
    "get_config": "fastmix.openpi.registry",
    "list_configs": "fastmix.openpi.registry",
    "register": "fastmix.openpi.registry",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastmix' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
