"""Run existing openpi configs on fastmix: `fastmix.openpi.install()` routes openpi's
`openpi.training.data_loader.create_torch_dataset` and `create_data_loader` through fastmix.

    import fastmix.openpi
    fastmix.openpi.install()          # before openpi's train script calls create_data_loader

After `install()`, openpi configs using `MultiDatasetLiberoDataConfig` (or any LeRobot data config) load with
fastmix's weighted mixture loader: same arguments, same `(Observation, actions)` batches, openpi's own
transforms (applied per sample where they are not fastmix's). RLDS and fake-data configs keep openpi's
original functions. Call `install()` before other modules bind the functions with `from ... import`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

logger = logging.getLogger("fastmix")

TARGET_MODULE = "openpi.training.data_loader"
_ORIGINALS: dict[str, Any] = {}


def _use_openpi(data_config: Any) -> bool:
    """Configs fastmix leaves to openpi: RLDS data and fake data."""
    return getattr(data_config, "rlds_data_dir", None) is not None or getattr(data_config, "repo_id", None) == "fake"


def create_torch_dataset(data_config: Any, action_horizon: int, model_config: Any) -> Any:
    """openpi's `create_torch_dataset(data_config, action_horizon, model_config)` on fastmix's reader."""
    if _use_openpi(data_config):
        return _ORIGINALS["create_torch_dataset"](data_config, action_horizon, model_config)
    from fastmix import data_loader

    return data_loader.create_torch_dataset(data_config, action_horizon, model_config)


def create_data_loader(
    config: Any,
    *,
    sharding: Any = None,
    shuffle: bool = False,
    num_batches: int | None = None,
    skip_norm_stats: bool = False,
    framework: str = "jax",
) -> Any:
    """openpi's `create_data_loader` signature and defaults, served by `fastmix.create_data_loader`.

    With framework "jax" and no sharding, batches are placed with openpi's default data-parallel sharding
    when jax is importable (numpy arrays otherwise).
    """
    data_config = config.data.create(config.assets_dirs, config.model)
    if _use_openpi(data_config):
        return _ORIGINALS["create_data_loader"](
            config,
            sharding=sharding,
            shuffle=shuffle,
            num_batches=num_batches,
            skip_norm_stats=skip_norm_stats,
            framework=framework,
        )
    if framework == "jax" and sharding is None:
        sharding = _default_jax_sharding()
    from fastmix import data_loader

    return data_loader.create_data_loader(
        config,
        shuffle=shuffle,
        num_batches=num_batches,
        skip_norm_stats=skip_norm_stats,
        framework=framework,  # type: ignore[arg-type]
        sharding=sharding,
    )


def _default_jax_sharding() -> Any:
    try:
        import jax
    except ImportError:
        return None
    return jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ("B",)), jax.sharding.PartitionSpec("B"))


def install() -> bool:
    """Patch openpi's data loader functions; returns False (and changes nothing) when openpi is not importable."""
    try:
        module = importlib.import_module(TARGET_MODULE)
    except ImportError:
        logger.info("openpi is not importable; fastmix.openpi.install() changed nothing")
        return False
    if getattr(module, "_fastmix_installed", False):
        return True
    for name, replacement in (("create_torch_dataset", create_torch_dataset), ("create_data_loader", create_data_loader)):
        if not hasattr(module, name):
            raise AttributeError(f"{TARGET_MODULE} has no {name}; this openpi version is not supported by fastmix")
        _ORIGINALS[name] = getattr(module, name)
        setattr(module, name, replacement)
    module._fastmix_installed = True
    logger.info("openpi's create_torch_dataset/create_data_loader now run on fastmix")
    return True


def uninstall() -> None:
    """Restore openpi's original functions (no-op when not installed)."""
    try:
        module = importlib.import_module(TARGET_MODULE)
    except ImportError:
        return
    if not getattr(module, "_fastmix_installed", False):
        return
    for name, original in _ORIGINALS.items():
        setattr(module, name, original)
    _ORIGINALS.clear()
    module._fastmix_installed = False


def is_installed() -> bool:
    """Whether openpi's data loader functions currently run on fastmix."""
    try:
        module = importlib.import_module(TARGET_MODULE)
    except ImportError:
        return False
    return bool(getattr(module, "_fastmix_installed", False))


__all__ = ["create_data_loader", "create_torch_dataset", "install", "is_installed", "uninstall"]
