"""The fork's own data path and the same path after `fastmix.openpi.install()`, as flat dicts of numpy arrays."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np


def flat_numpy(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """{"image/base_0_rgb": array, ...} of a nested dict of torch / jax / numpy arrays (None leaves dropped)."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_numpy(value, f"{path}/"))
        elif value is not None:
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            out[path] = np.asarray(value)
    return out


@contextlib.contextmanager
def fastmix_installed() -> Iterator[None]:
    """openpi's `create_data_loader` / `create_torch_dataset` served by fastmix inside the block."""
    import fastmix.openpi

    assert fastmix.openpi.install(), "openpi must be importable in the seed environment"
    try:
        yield
    finally:
        fastmix.openpi.uninstall()


def openpi_batches(config: Any, *, framework: str, num_batches: int, shuffle: bool = False) -> list[dict]:
    """Batches of `openpi.training.data_loader.create_data_loader` (whatever it is bound to now): each the
    Observation's dict plus "actions", flattened to numpy."""
    import openpi.training.data_loader as dl

    loader = dl.create_data_loader(config, shuffle=shuffle, num_batches=num_batches, framework=framework)
    out = []
    try:
        for obs, actions in loader:
            out.append({**flat_numpy(obs.to_dict()), "actions": np.asarray(flat_numpy({"a": actions})["a"])})
    finally:
        close = getattr(loader, "close", None)
        if close is not None:
            close()
    return out


def observed_dataset_shares(config: Any, draws: int) -> tuple[np.ndarray, str]:
    """(per-dataset draw counts, sampler class name) of the fork's own loader for `config` with shuffle=True:
    the indices its torch DataLoader's batch sampler yields, mapped to datasets by the ConcatDataset's sizes."""
    import openpi.training.data_loader as dl

    loader = dl.create_data_loader(config, shuffle=True, num_batches=1, framework="pytorch")
    torch_loader = loader._data_loader.torch_loader  # noqa: SLF001 - the fork exposes no other handle
    dataset = torch_loader.dataset
    while not hasattr(dataset, "cumulative_sizes"):  # TransformedDataset(ConcatDataset(...))
        dataset = dataset._dataset  # noqa: SLF001
    bounds = np.asarray(dataset.cumulative_sizes)
    counts = np.zeros(len(bounds), dtype=np.int64)
    taken = 0
    while taken < draws:
        for batch in torch_loader.batch_sampler:
            idx = np.asarray(batch)[: draws - taken]
            counts += np.bincount(np.searchsorted(bounds, idx, side="right"), minlength=len(bounds))
            taken += len(idx)
            if taken >= draws:
                break
    return counts, type(torch_loader.sampler).__name__


FLOAT_KEYS = ("state", "actions")


def assert_same_batches(ref: list[dict], got: list[dict], where: str, num_batches: int) -> None:
    """`got` (after install()) equals `ref` (openpi's own loader) batch for batch: the same keys, shapes and
    dtypes; images, masks and tokens bit-identical; state/actions within 4 ulps of openpi's values in fastmix's
    dtype: float32 where the data is float32 (openpi's PyTorch path returns float64 there: its `Normalize`
    mixes float32 data with float64 stats; fastmix's keeps the data's dtype), float64 only where openpi's own
    per-sample transforms made the data float64 (e.g. `AlohaInputs`), as openpi's is."""
    assert len(ref) == len(got) == num_batches, f"{where}: {len(ref)} vs {len(got)} batches, want {num_batches}"
    for b, (r, g) in enumerate(zip(ref, got, strict=True)):
        assert sorted(r) == sorted(g), f"{where} batch {b}: keys {sorted(r)} vs {sorted(g)}"
        for key in r:
            at = f"{where} batch {b} {key}"
            assert r[key].shape == g[key].shape, f"{at}: shape {r[key].shape} vs {g[key].shape}"
            if key in FLOAT_KEYS:
                dtype = g[key].dtype
                assert dtype == np.float32 or dtype == r[key].dtype, f"{at}: dtype {r[key].dtype} vs {dtype}"
                eps = float(np.finfo(dtype).eps)
                np.testing.assert_allclose(g[key], r[key].astype(dtype), rtol=4 * eps, atol=4 * eps, err_msg=at)
            else:
                assert r[key].dtype == g[key].dtype, f"{at}: dtype {r[key].dtype} vs {g[key].dtype}"
                assert np.array_equal(r[key], g[key]), f"{at}: values differ"
