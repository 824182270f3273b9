"""Bad input through openpi's own entry points, with and without `fastmix.openpi.install()`: the errors stay
clear (openpi's own validation where openpi validates; fastmix's named errors where it reads data). The fork's
multi-dataset config here; upstream's single-dataset config in test_single_dataset.py."""

from __future__ import annotations

import pytest

from tests.seed.conftest import FASTMIX_REPO, FORK_REPO
from tests.seed.pipelines import fastmix_installed, openpi_batches

FORK_ONLY = pytest.mark.tree("fork", reason="the fork's MultiDatasetLiberoDataConfig (upstream's single-dataset "
                             "counterparts: test_single_dataset.py)")


def test_install_and_uninstall_restore_openpis_functions():
    import openpi.training.data_loader as dl

    import fastmix.openpi

    before = (dl.create_data_loader, dl.create_torch_dataset)
    with fastmix_installed():
        assert fastmix.openpi.is_installed()
        assert dl.create_data_loader is fastmix.openpi.create_data_loader
        assert dl.create_torch_dataset is fastmix.openpi.create_torch_dataset
    assert (dl.create_data_loader, dl.create_torch_dataset) == before
    assert not fastmix.openpi.is_installed()


def test_signatures_are_openpis():
    """fastmix's replacements take exactly the arguments of this tree's own functions (names, kinds, defaults)."""
    import inspect

    import openpi.training.data_loader as dl

    import fastmix.openpi

    for name in ("create_data_loader", "create_torch_dataset"):
        theirs = inspect.signature(getattr(dl, name)).parameters.values()
        ours = inspect.signature(getattr(fastmix.openpi, name)).parameters.values()
        assert [(p.name, p.kind, p.default) for p in ours] == [(p.name, p.kind, p.default) for p in theirs], name


@FORK_ONLY
def test_weights_length_mismatch_is_the_forks_error(datasets, assets_dir, norm_stats_dir):
    from tests.seed.seed_data import fork_train_config

    config = fork_train_config("seed_bad_weights", [FORK_REPO, FASTMIX_REPO], [1.0, 2.0, 3.0], assets_dir,
                               assets_dir=norm_stats_dir, batch_size=6, num_workers=0)
    with pytest.raises(ValueError, match=r"dataset_weights length \(3\) must match repo_ids length \(2\)"):
        openpi_batches(config, framework="pytorch", num_batches=1)
    with fastmix_installed(), pytest.raises(ValueError, match=r"dataset_weights length \(3\) must match"):
        openpi_batches(config, framework="pytorch", num_batches=1)


@FORK_ONLY
def test_missing_dataset_names_the_repo(datasets, assets_dir, norm_stats_dir):
    """A repo id with no dataset under lerobot's home: the fork tries the (offline) hub; fastmix names the repo
    id and the path it looked at."""
    from fastmix.errors import FastmixError
    from tests.seed.seed_data import fork_train_config

    config = fork_train_config("seed_missing_repo", [FORK_REPO, "seed/does_not_exist"], None, assets_dir,
                               assets_dir=norm_stats_dir, batch_size=6, num_workers=0)
    with fastmix_installed(), pytest.raises(FastmixError, match=r"seed/does_not_exist") as info:
        openpi_batches(config, framework="pytorch", num_batches=1)
    assert "seed/does_not_exist" in str(info.value) and "lerobot" in str(info.value)


@FORK_ONLY
def test_missing_norm_stats_is_openpis_message(datasets, assets_dir):
    from tests.seed.seed_data import fork_train_config

    config = fork_train_config("seed_no_stats", [FORK_REPO, FASTMIX_REPO], None, assets_dir, batch_size=6,
                               num_workers=0)
    with pytest.raises(ValueError, match="Normalization stats not found"):
        openpi_batches(config, framework="pytorch", num_batches=1)
    with fastmix_installed(), pytest.raises(Exception, match="Normalization stats not found") as info:
        openpi_batches(config, framework="pytorch", num_batches=1)
    assert "compute-norm-stats" in str(info.value) or "compute_norm_stats" in str(info.value)
