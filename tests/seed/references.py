"""References built from the running openpi tree's own pieces, for the mixtures a tree has no config for (upstream
has no multi-dataset LeRobot config): what an openpi user would build by hand without fastmix.

`concat_loader`: one dataset per repo from the tree's own `create_torch_dataset` and `transform_dataset` (each
repo's single-dataset config: its repack, data, Normalize and model transforms), a torch `ConcatDataset` of them,
the tree's own `TorchDataLoader` (optionally with a sampler, e.g. torch's `WeightedRandomSampler`) and
`DataLoaderImpl`. Always the tree's original functions, whether or not fastmix is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _original(name: str) -> Any:
    """The tree's own `openpi.training.data_loader.<name>` (the original when fastmix is installed)."""
    import openpi.training.data_loader as dl

    from fastmix.openpi import adapter

    return adapter._ORIGINALS.get(name, getattr(dl, name))  # noqa: SLF001 - the saved originals


def concat_dataset(configs: Sequence[Any]) -> Any:
    """torch `ConcatDataset` of the tree's own transformed dataset of each single-dataset `TrainConfig`."""
    import torch

    parts = []
    for config in configs:
        data_config = config.data.create(config.assets_dirs, config.model)
        dataset = _original("create_torch_dataset")(data_config, config.model.action_horizon, config.model)
        parts.append(_original("transform_dataset")(dataset, data_config))
    return torch.utils.data.ConcatDataset(parts)


def concat_loader(configs: Sequence[Any], *, framework: str, num_batches: int, num_workers: int = 0,
                  sampler: Any = None, batch_size: int | None = None) -> Any:
    """The tree's own `DataLoaderImpl` over `concat_dataset(configs)` in sequential order (or `sampler`'s),
    `batch_size` (default the first config's) per batch: yields `(Observation, actions)` as openpi's loader."""
    import openpi.training.data_loader as dl

    first = configs[0]
    loader = dl.TorchDataLoader(concat_dataset(configs), local_batch_size=batch_size or first.batch_size,
                                sampler=sampler, num_batches=num_batches, num_workers=num_workers, seed=first.seed,
                                framework=framework)
    return dl.DataLoaderImpl(first.data.create(first.assets_dirs, first.model), loader)


def concat_batches(configs: Sequence[Any], *, framework: str, num_batches: int, num_workers: int = 0) -> list[dict]:
    """`concat_loader`'s batches, each the Observation's dict plus "actions", flattened to numpy (as
    `pipelines.openpi_batches`)."""
    from tests.seed.pipelines import flat_numpy

    loader = concat_loader(configs, framework=framework, num_batches=num_batches, num_workers=num_workers)
    return [{**flat_numpy(obs.to_dict()), "actions": np.asarray(flat_numpy({"a": actions})["a"])}
            for obs, actions in loader]


def weighted_sampler_draws(configs: Sequence[Any], weights: Sequence[float], draws: int, *, seed: int = 0
                           ) -> np.ndarray:
    """Per-dataset counts of `draws` indices from the tree's own `TorchDataLoader` over `concat_dataset(configs)`
    with torch's `WeightedRandomSampler` (each frame of dataset i weighted `weights[i]`: shares ∝ w_i·N_i, the
    per-sample weighting openpi's COTRAINING_GUIDE describes): the batch sampler's indices, nothing decoded."""
    import openpi.training.data_loader as dl
    import torch

    dataset = concat_dataset(configs)
    bounds = np.asarray(dataset.cumulative_sizes)
    sizes = np.diff(np.concatenate([[0], bounds]))
    per_frame = torch.as_tensor(np.repeat(np.asarray(weights, dtype=np.float64), sizes))
    sampler = torch.utils.data.WeightedRandomSampler(per_frame, num_samples=len(dataset), replacement=True,
                                                     generator=torch.Generator().manual_seed(seed))
    loader = dl.TorchDataLoader(dataset, local_batch_size=configs[0].batch_size, sampler=sampler, num_batches=1,
                                framework="pytorch")
    counts = np.zeros(len(bounds), dtype=np.int64)
    taken = 0
    while taken < draws:
        for batch in loader.torch_loader.batch_sampler:
            idx = np.asarray(batch)[: draws - taken]
            counts += np.bincount(np.searchsorted(bounds, idx, side="right"), minlength=len(bounds))
            taken += len(idx)
            if taken >= draws:
                break
    return counts
