"""openpi's own `create_data_loader` and the same call after `fastmix.openpi.install()` give the same batches for
a single-dataset `LeRobotLiberoDataConfig`, the LIBERO config both trees have, on the tree this run tests: the
v2.1 LIBERO dataset the pinned lerobot wrote, `shuffle=False` over a whole epoch, framework "pytorch" and "jax",
0 and 2 workers. Norm stats come from the tree's own `scripts/compute_norm_stats.py`. Bad input through the same
config: a missing dataset is named, missing norm stats keep openpi's message.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.seed.conftest import EPISODES, FORK_REPO, TREE
from tests.seed.pipelines import assert_same_batches, fastmix_installed, openpi_batches

BATCH = 6
FRAMES = EPISODES[FORK_REPO][0] * EPISODES[FORK_REPO][1]  # 36


def libero_data(repo_id: str, assets=None):
    import openpi.training.config as _config

    return _config.LeRobotLiberoDataConfig(repo_id=repo_id, base_config=_config.DataConfig(prompt_from_task=True),
                                           assets=assets or _config.AssetsConfig())


@pytest.fixture(scope="module")
def libero_assets(datasets, tree_norm_stats):
    """`AssetsConfig` of the norm stats the tree's own script computed for the LIBERO dataset."""
    import openpi.training.config as _config

    stats = tree_norm_stats("seed_single_libero_stats", libero_data(FORK_REPO))
    return _config.AssetsConfig(assets_dir=str(stats), asset_id=FORK_REPO)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("framework", ["pytorch", "jax"])
def test_same_batches_as_openpi(libero_assets, assets_dir, framework, num_workers):
    from tests.seed.seed_data import openpi_train_config

    config = openpi_train_config(f"seed_single_libero_w{num_workers}", libero_data(FORK_REPO, libero_assets),
                                 assets_dir, batch_size=BATCH, num_workers=num_workers)
    ref = openpi_batches(config, framework=framework, num_batches=FRAMES // BATCH)
    with fastmix_installed():
        got = openpi_batches(config, framework=framework, num_batches=FRAMES // BATCH)
    assert_same_batches(ref, got, f"{TREE} {framework} w{num_workers}", FRAMES // BATCH)
    assert {"image/base_0_rgb", "image/left_wrist_0_rgb", "tokenized_prompt", "state", "actions"} <= set(ref[0])
    # the images are the dataset's (not blank), and the state is z-scored with the stats of this very epoch
    assert ref[0]["image/base_0_rgb"].std() > 0.1
    state = np.concatenate([b["state"] for b in ref])[:, :8].astype(np.float64)
    np.testing.assert_allclose(state.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(state.std(0), 1.0, atol=1e-2)


def test_missing_dataset_names_the_repo(libero_assets, assets_dir):
    """A repo id with no dataset under lerobot's home: fastmix names the repo id and where it looked."""
    from fastmix.errors import FastmixError
    from tests.seed.seed_data import openpi_train_config

    config = openpi_train_config("seed_single_missing", libero_data("seed/does_not_exist", libero_assets),
                                 assets_dir, batch_size=BATCH, num_workers=0)
    with fastmix_installed(), pytest.raises(FastmixError, match=r"seed/does_not_exist") as info:
        openpi_batches(config, framework="pytorch", num_batches=1)
    assert "lerobot" in str(info.value)


def test_missing_norm_stats_is_openpis_message(datasets, assets_dir):
    from tests.seed.seed_data import openpi_train_config

    config = openpi_train_config("seed_single_no_stats", libero_data(FORK_REPO), assets_dir, batch_size=BATCH,
                                 num_workers=0)
    with pytest.raises(ValueError, match="Normalization stats not found"):
        openpi_batches(config, framework="pytorch", num_batches=1)
    with fastmix_installed(), pytest.raises(Exception, match="Normalization stats not found") as info:
        openpi_batches(config, framework="pytorch", num_batches=1)
    assert "compute-norm-stats" in str(info.value) or "compute_norm_stats" in str(info.value)


def test_norm_stats_script_on_fastmixs_torch_dataset(datasets, assets_dir):
    """The tree's own `scripts/compute_norm_stats.py` reads through `create_torch_dataset`: after install() it
    reads fastmix's dataset (`LeRobotSource` items) and writes the same statistics as on lerobot's."""
    import json

    from tests.seed.seed_data import openpi_train_config, tree_compute_norm_stats

    written = {}
    for installed in (False, True):
        config = openpi_train_config(f"seed_single_script_{installed}", libero_data(FORK_REPO), assets_dir,
                                     batch_size=BATCH, num_workers=0)
        if installed:
            with fastmix_installed():
                import openpi.training.data_loader as dl

                import fastmix.openpi

                assert dl.create_torch_dataset is fastmix.openpi.create_torch_dataset
                path = tree_compute_norm_stats(config, TREE)
        else:
            path = tree_compute_norm_stats(config, TREE)
        written[installed] = json.loads(path.read_text())["norm_stats"]
    assert sorted(written[True]) == sorted(written[False]) == ["actions", "state"]
    for key, stats in written[False].items():
        for stat, values in stats.items():
            np.testing.assert_array_equal(written[True][key][stat], values, err_msg=f"{key}.{stat}")
