"""Bad input through openpi's own entry points, with and without `fastmix.openpi.install()`: the errors stay
clear (openpi's own validation where openpi validates; fastmix's named errors where it reads data). The tree's
two-dataset config here: the fork's `MultiDatasetLiberoDataConfig`; on upstream, which has none, fastmix's
`MultiDatasetLeRobotConfig` around upstream's `LeRobotLiberoDataConfig` (upstream's own messages from what an
upstream user would build without fastmix: `tests/seed/references.py`). Single-dataset configs:
test_single_dataset.py."""

from __future__ import annotations

import pytest

from tests.seed.conftest import FASTMIX_REPO, FORK_REPO, TREE
from tests.seed.pipelines import fastmix_installed, openpi_batches


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


def mixture_config(name: str, repo_ids: list[str], weights: list[float] | None, assets_dir, stats_dir=None):
    """The tree's two-dataset LIBERO TrainConfig (batch 6, no workers); norm stats from `stats_dir` (None: none).
    Upstream: fastmix's `MultiDatasetLeRobotConfig`, whose own checks run when it is built."""
    import openpi.training.config as _config

    from tests.seed.seed_data import fork_train_config, openpi_train_config

    if TREE == "fork":
        return fork_train_config(name, repo_ids, weights, assets_dir, assets_dir=stats_dir, batch_size=6,
                                 num_workers=0)
    from fastmix.openpi import MultiDatasetLeRobotConfig

    assets = _config.AssetsConfig() if stats_dir is None else _config.AssetsConfig(assets_dir=str(stats_dir),
                                                                                  asset_id=FORK_REPO)
    data = MultiDatasetLeRobotConfig(repo_ids=repo_ids, dataset_weights=weights, assets=assets,
                                     dataset_config=_config.LeRobotLiberoDataConfig(
                                         base_config=_config.DataConfig(prompt_from_task=True)))
    return openpi_train_config(name, data, assets_dir, batch_size=6, num_workers=0)


@pytest.fixture(scope="module")
def stats_dir(request, datasets):
    """Norm stats for the mixture: the fork's script over the fork's mixture; upstream's over the first dataset."""
    if TREE == "fork":
        return request.getfixturevalue("norm_stats_dir")
    import openpi.training.config as _config

    libero = _config.LeRobotLiberoDataConfig(repo_id=FORK_REPO, base_config=_config.DataConfig(prompt_from_task=True))
    return request.getfixturevalue("tree_norm_stats")("seed_multi_stats", libero)


def test_weights_length_mismatch_is_named(datasets, assets_dir, stats_dir):
    """Three weights for two datasets: the fork's own error, kept by fastmix; upstream: fastmix's config refuses
    when it is built, naming both lengths."""
    from fastmix.errors import ConfigError

    args = ("seed_bad_weights", [FORK_REPO, FASTMIX_REPO], [1.0, 2.0, 3.0], assets_dir, stats_dir)
    if TREE == "upstream":
        with pytest.raises(ConfigError, match=r"dataset_weights length \(3\) must match repo_ids length \(2\)"):
            mixture_config(*args)
        return
    config = mixture_config(*args)
    with pytest.raises(ValueError, match=r"dataset_weights length \(3\) must match repo_ids length \(2\)"):
        openpi_batches(config, framework="pytorch", num_batches=1)
    with fastmix_installed(), pytest.raises(ValueError, match=r"dataset_weights length \(3\) must match"):
        openpi_batches(config, framework="pytorch", num_batches=1)


def test_missing_dataset_names_the_repo(datasets, assets_dir, stats_dir):
    """A repo id with no dataset under lerobot's home: openpi tries the (offline) hub; fastmix names the repo
    id and the path it looked at."""
    from fastmix.errors import FastmixError

    config = mixture_config("seed_missing_repo", [FORK_REPO, "seed/does_not_exist"], None, assets_dir, stats_dir)
    with fastmix_installed(), pytest.raises(FastmixError, match=r"seed/does_not_exist") as info:
        openpi_batches(config, framework="pytorch", num_batches=1)
    assert "seed/does_not_exist" in str(info.value) and "lerobot" in str(info.value)


def test_missing_norm_stats_is_openpis_message(datasets, assets_dir):
    """No norm stats: openpi's own "Normalization stats not found" (the fork's loader on its mixture; upstream's
    own pieces on each dataset), and fastmix's loader the same message plus the command that writes them."""
    import dataclasses

    config = mixture_config("seed_no_stats", [FORK_REPO, FASTMIX_REPO], None, assets_dir)
    with pytest.raises(ValueError, match="Normalization stats not found"):
        if TREE == "fork":
            openpi_batches(config, framework="pytorch", num_batches=1)
        else:
            from tests.seed.references import concat_loader

            singles = [dataclasses.replace(config, data=dataclasses.replace(config.data.dataset_config, repo_id=r))
                       for r in (FORK_REPO, FASTMIX_REPO)]
            concat_loader(singles, framework="pytorch", num_batches=1)
    with fastmix_installed(), pytest.raises(Exception, match="Normalization stats not found") as info:
        openpi_batches(config, framework="pytorch", num_batches=1)
    assert "compute-norm-stats" in str(info.value) or "compute_norm_stats" in str(info.value)
