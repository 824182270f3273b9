"""Run existing openpi configs on fastmix: `fastmix.openpi.install()` routes openpi's
`openpi.training.data_loader.create_torch_dataset` and `create_data_loader` through fastmix.

    import fastmix.openpi
    fastmix.openpi.install()          # before openpi's train script calls create_data_loader

After `install()`, openpi configs using `MultiDatasetLiberoDataConfig` (or any LeRobot data config) load with
fastmix's weighted mixture loader: same arguments, same `(Observation, actions)` batches, openpi's own
transforms (applied per sample where they are not fastmix's, on rows in LeRobotDataset's own format), and a
resumed run continues its data stream (the loader state is saved with openpi's checkpoints: `resume`). RLDS and
fake-data configs keep openpi's original functions. Call `install()` before other modules bind the functions
with `from ... import`. Both openpi trees have these two functions with these signatures: the co-training fork
and upstream openpi, whose configs mix LeRobot datasets through `fastmix.openpi.MultiDatasetLeRobotConfig`
(`for_openpi`); `python -m fastmix.openpi.launch` runs their train scripts unchanged with `install()` done.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from typing import Any

import numpy as np

from fastmix._args import check_int

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
    from fastmix.openpi import torch_dataset

    return torch_dataset.create_torch_dataset(data_config, action_horizon, model_config)


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

    When `config.resume` and the checkpoint the train script restores holds fastmix's loader state, the loader
    continues after the batches that run trained on (`fastmix.openpi.resume`).

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
    from fastmix.openpi import data_loader, resume

    loader = data_loader.create_data_loader(
        config,
        shuffle=shuffle,
        num_batches=num_batches,
        skip_norm_stats=skip_norm_stats,
        framework=framework,  # type: ignore[arg-type]
        sharding=sharding,
    )
    return resume.attach(loader, config, framework=framework, shuffle=shuffle)


def _default_jax_sharding() -> Any:
    try:
        import jax
    except ImportError:
        return None
    return jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ("B",)), jax.sharding.PartitionSpec("B"))


def install() -> bool:
    """Patch openpi's data loader functions. When openpi is not importable: a RuntimeWarning saying so (and
    why), nothing changed, returns False."""
    try:
        module = importlib.import_module(TARGET_MODULE)
    except ImportError as e:
        warnings.warn(f"fastmix.openpi.install() changed nothing: {TARGET_MODULE} is not importable "
                      f"({type(e).__name__}: {e}); openpi's training loader does not run on fastmix in this "
                      "environment (install openpi next to fastmix)", RuntimeWarning, stacklevel=2)
        return False
    if getattr(module, "_fastmix_installed", False):
        return True
    for name, replacement in (("create_torch_dataset", create_torch_dataset), ("create_data_loader", create_data_loader)):
        if not hasattr(module, name):
            raise AttributeError(f"{TARGET_MODULE} has no {name}; this openpi version is not supported by fastmix")
        _ORIGINALS[name] = getattr(module, name)
        setattr(module, name, replacement)
    module._fastmix_installed = True
    from fastmix.openpi import resume

    hooked = resume.install_hooks()
    logger.info("openpi's create_torch_dataset/create_data_loader now run on fastmix; loader state saved with "
                "checkpoints through %s", hooked or "nothing (openpi's checkpoint modules are not importable)")
    return True


def _concat_of(dataset: Any) -> Any:
    """The `ConcatDataset` (or the single dataset) under openpi's dataset wrappers (`TransformedDataset`)."""
    seen = 0
    while not hasattr(dataset, "cumulative_sizes") and hasattr(dataset, "_dataset") and seen < 16:
        dataset, seen = dataset._dataset, seen + 1  # noqa: SLF001 - openpi's wrapper keeps it there
    return dataset


def openpi_draws(config: Any, num_samples: int) -> tuple[list[int], np.ndarray, str]:
    """Measure what openpi's own (un-patched) training loader draws for `config`.

    Builds the loader as training does (`create_data_loader(config, shuffle=True, framework="pytorch")`) and
    takes `num_samples` indices from the batch sampler its torch `DataLoader` iterates (nothing is decoded).
    Returns (dataset sizes, draws per dataset int64 (K,), the sampler's class name).
    """
    num_samples = check_int(num_samples, "num_samples", minimum=1)
    module = importlib.import_module(TARGET_MODULE)
    create = _ORIGINALS.get("create_data_loader", module.create_data_loader)
    loader = create(config, shuffle=True, num_batches=1, framework="pytorch")
    torch_loader = getattr(getattr(loader, "_data_loader", None), "torch_loader", None)
    if torch_loader is None:
        raise TypeError(f"openpi's loader for config '{config.name}' has no torch DataLoader (RLDS or fake data?)")
    dataset = _concat_of(torch_loader.dataset)
    bounds = np.asarray(getattr(dataset, "cumulative_sizes", [len(dataset)]), dtype=np.int64)
    counts = np.zeros(len(bounds), dtype=np.int64)
    taken = 0
    while taken < num_samples:
        for batch in torch_loader.batch_sampler:
            idx = np.asarray(batch, dtype=np.int64)[: num_samples - taken]
            counts += np.bincount(np.searchsorted(bounds, idx, side="right"), minlength=len(bounds))
            taken += len(idx)
            if taken >= num_samples:
                break
    sizes = np.diff(np.concatenate([[0], bounds])).tolist()
    return sizes, counts, type(torch_loader.sampler).__name__


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
    from fastmix.openpi import resume

    resume.uninstall_hooks()
    _ORIGINALS.clear()
    module._fastmix_installed = False


def is_installed() -> bool:
    """Whether openpi's data loader functions currently run on fastmix."""
    try:
        module = importlib.import_module(TARGET_MODULE)
    except ImportError:
        return False
    return bool(getattr(module, "_fastmix_installed", False))


__all__ = ["create_data_loader", "create_torch_dataset", "install", "is_installed", "openpi_draws", "uninstall"]
