"""`fastmix.MixtureDataConfig` in the tree's own `TrainConfig`, its entries the tree's OWN data config classes
(`LeRobotLiberoDataConfig`, `LeRobotDROIDDataConfig`, `LeRobotAlohaDataConfig`) after `fastmix.openpi.install()`:
three robots of different schemas in one shuffled stream (LIBERO-like video, 8-dim state; DROID-like images in
parquet, joint 7 + gripper 1; ALOHA-like four video cameras, 14-dim state, openpi's `AlohaInputs`).

The reference of every row is that entry's own openpi pipeline for that frame alone: the tree's
`create_torch_dataset(entry's data config, action_horizon, model)` and `transform_dataset(...)` (openpi's
LeRobotDataset, its transforms, the entry's own norm stats computed by the tree's own `compute_norm_stats.py`),
item `index` of the row's dataset. Images, masks and tokens bit-identical; state/actions within 4 ulps of
openpi's values in the precision of the entry's own data (`pipelines.assert_same_batches`, per row): float32 for
the LIBERO and DROID entries (fastmix's Normalize keeps float32 data float32, where openpi's PyTorch path mixes in
its float64 stats); ALOHA's own pipeline gives float64 (openpi's `AlohaInputs` makes its data float64), and with
the default `float_dtype="float32"` every batch is float32 whichever robots it holds, the ALOHA rows openpi's
float64 values rounded to float32 (within 4 float32 ulps). With `float_dtype=None` a batch holding ALOHA rows is
float64 as a whole (ALOHA within 4 float64 ulps), its LIBERO and DROID rows then hold exactly their float32 values.

Every entry runs batched: openpi's LiberoInputs, DroidInputs, AlohaInputs (and the rest of each entry's
transforms) are replaced by fastmix's batched equivalents, and each entry's cameras are decoded as uint8 straight
to the model's 224x224 (`test_data_configs.assert_batched_stages`).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.seed.conftest import ALOHA_REPO, DROID_REPO, FORK_REPO, TREE
from tests.seed.pipelines import assert_same_batches, fastmix_installed, flat_numpy
from tests.seed.test_data_configs import (
    aloha_data,
    assert_batched_stages,
    droid_data,
    entry_decodes,
    stats_assets,
)

BATCH = 6
NUM_BATCHES = 5
FLOAT32_ENTRIES = (0, 1)  # LIBERO, DROID: float32 data (see the module docstring)


def entries(tree_norm_stats):
    """The three entries, each with its own norm stats asset (the tree's compute_norm_stats on it alone)."""
    import openpi.training.config as _config

    libero = _config.LeRobotLiberoDataConfig(repo_id=FORK_REPO, base_config=_config.DataConfig(prompt_from_task=True))
    libero_assets = stats_assets(tree_norm_stats, "seed_mix_libero_stats", libero, FORK_REPO)
    libero = _config.LeRobotLiberoDataConfig(repo_id=FORK_REPO, assets=libero_assets,
                                             base_config=_config.DataConfig(prompt_from_task=True))
    droid = droid_data(stats_assets(tree_norm_stats, "seed_droid_stats", droid_data(), DROID_REPO))
    aloha = aloha_data(stats_assets(tree_norm_stats, "seed_aloha_stats", aloha_data(), ALOHA_REPO))
    return [libero, droid, aloha]


def own_pipeline_items(config, entry):
    """The tree's own transformed dataset of `entry` alone (openpi's functions, not fastmix's)."""
    import openpi.training.data_loader as dl

    data_config = entry.create(config.assets_dirs, config.model)
    dataset = dl.create_torch_dataset(data_config, config.model.action_horizon, config.model)
    return dl.transform_dataset(dataset, data_config)


@pytest.mark.parametrize("float_dtype", ["float32", None])
def test_every_row_equals_its_entrys_own_openpi_pipeline(datasets, schema_datasets, tree_norm_stats, assets_dir,
                                                         float_dtype):
    from fastmix import MixtureDataConfig
    from tests.seed.seed_data import openpi_train_config

    parts = entries(tree_norm_stats)
    data = MixtureDataConfig(datasets=parts, dataset_weights=[1.0, 1.0, 1.0], weighting="per_dataset",
                             float_dtype=float_dtype)
    config = openpi_train_config("seed_mixture_of_configs", data, assets_dir, batch_size=BATCH, num_workers=2)
    refs = [own_pipeline_items(config, e) for e in parts]  # before install(): openpi's own functions
    with fastmix_installed():
        import openpi.training.data_loader as dl

        loader = dl.create_data_loader(config, shuffle=True, num_batches=NUM_BATCHES, framework="pytorch")
        assert type(loader).__module__ == "fastmix.openpi.data_loader"
        decodes = entry_decodes(loader)
        for g, (stages, size, floats) in enumerate(decodes):  # every entry batched, decoded at the model's size
            assert_batched_stages(stages, f"{TREE} mixture entry {g}")
            assert tuple(size) == (224, 224) and not floats, f"entry {g}: decode size {size}, float {floats}"
        assert len(decodes) == 3
        rows, dtypes = [], []
        try:
            for batch, meta in loader.batches(with_meta=True):
                flat = flat_numpy(batch)
                dtypes.append((flat["state"].dtype, flat["actions"].dtype, 2 in meta["dataset_index"]))
                for r in range(BATCH):
                    rows.append((int(meta["dataset_index"][r]), int(meta["index"][r]),
                                 {k: v[r:r + 1] for k, v in flat.items()}))
        finally:
            loader.close()
    assert {d for d, _, _ in rows} == {0, 1, 2}, "every robot appears in the batches"
    if float_dtype == "float32":  # one dtype in every batch, ALOHA rows in it or not
        assert {(s, a) for s, a, _ in dtypes} == {(np.dtype(np.float32),) * 2}, dtypes
    else:  # the widest of the batch's rows: float64 exactly where ALOHA rows are
        assert all((s, a) == ((np.float64,) * 2 if aloha else (np.float32,) * 2) for s, a, aloha in dtypes), dtypes
    for i, (d, index, row) in enumerate(rows):
        ref = {k: np.asarray(v)[None] for k, v in flat_numpy(refs[d][index]).items()}
        if d in FLOAT32_ENTRIES:
            for key in ("state", "actions"):
                exact = row[key].astype(np.float32)
                assert np.array_equal(exact.astype(row[key].dtype), row[key]), f"row {i}: {key} not float32 values"
                row = {**row, key: exact}
        assert_same_batches([ref], [row], f"{TREE} mixture of configs, row {i} (entry {d}, index {index})", 1)


def test_the_mixture_is_one_of_openpis_data_configs(monkeypatch):
    """With entries of the tree's own classes, `MixtureDataConfig` is also the tree's `DataConfigFactory`: the
    tree's `cli()` picks it by name and overrides its weights, and it pickles (as openpi's checkpoints do)."""
    import pickle

    import openpi.models.pi0_config as pi0_config
    import openpi.training.config as _config

    from fastmix import MixtureDataConfig
    from fastmix.openpi import register_openpi_configs

    entries = [_config.LeRobotLiberoDataConfig(repo_id=FORK_REPO), _config.LeRobotAlohaDataConfig(repo_id=ALOHA_REPO)]
    data = MixtureDataConfig(datasets=entries, dataset_weights=[1.0, 2.0])
    assert isinstance(data, _config.DataConfigFactory) and isinstance(data, MixtureDataConfig)
    assert pickle.loads(pickle.dumps(data)) == data
    config = _config.TrainConfig(name="seed_mixture_cli", model=pi0_config.Pi0Config(), data=data)
    register_openpi_configs(config, overwrite=True)
    monkeypatch.setattr("sys.argv", ["train", "seed_mixture_cli", "--exp-name", "e", "--data.dataset-weights", "3", "1"])
    picked = _config.cli()
    assert type(picked.data) is type(data) and list(picked.data.dataset_weights) == [3.0, 1.0]
    assert [type(e).__name__ for e in picked.data.datasets] == ["LeRobotLiberoDataConfig", "LeRobotAlohaDataConfig"]
