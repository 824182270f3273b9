"""fastmix's `MultiDatasetLeRobotConfig` in openpi's own types, on the tree this run tests (upstream has no
multi-dataset LeRobot config of its own; the fork's ignores its weights):

- openpi's `TrainConfig`, registry (`register_openpi_configs`), CLI (`cli()`, tyro) and pickle take it;
- after install(), openpi's own `create_data_loader` gives in sequential order exactly the batches openpi's own
  loader gives for each dataset's single-dataset config in turn (same transforms, norm stats, per-dataset
  prompts), and with shuffle the weighted shares (chi-square, both weightings);
- without install() it refuses, naming the fix; bad fields are errors naming the field;
- `python -m fastmix.openpi.launch` runs a script as `__main__` with the configs registered and the loader
  routed through fastmix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from tests.seed.conftest import EPISODES, FASTMIX_REPO, FORK_REPO, TREE
from tests.seed.pipelines import assert_same_batches, fastmix_installed, openpi_batches

BATCH = 6
REPOS = [FORK_REPO, FASTMIX_REPO]
SIZES = np.array([n * length for n, length in (EPISODES[FORK_REPO], EPISODES[FASTMIX_REPO])], dtype=np.float64)
WEIGHTS = np.array([1.0, 10.0])
SHARES = {"per_sample": WEIGHTS * SIZES / (WEIGHTS * SIZES).sum(), "per_dataset": WEIGHTS / WEIGHTS.sum()}
UNIFORM = SIZES / SIZES.sum()


def libero(**kwargs):
    import openpi.training.config as _config

    return _config.LeRobotLiberoDataConfig(base_config=_config.DataConfig(prompt_from_task=True), **kwargs)


@pytest.fixture(scope="module")
def shared_assets(datasets, tree_norm_stats):
    """Norm stats of the first dataset from the tree's own script, shared by the mixture and the references."""
    import openpi.training.config as _config

    stats_dir = tree_norm_stats("seed_multi_stats", libero(repo_id=FORK_REPO))
    return _config.AssetsConfig(assets_dir=str(stats_dir), asset_id=FORK_REPO)


@pytest.fixture(scope="module")
def multi(shared_assets, assets_dir):
    from fastmix.openpi import MultiDatasetLeRobotConfig
    from tests.seed.seed_data import openpi_train_config

    def make(name: str, *, weighting: str = "per_sample", num_workers: int = 0):
        data = MultiDatasetLeRobotConfig(repo_ids=REPOS, dataset_weights=WEIGHTS.tolist(), weighting=weighting,
                                         assets=shared_assets, dataset_config=libero())
        return openpi_train_config(name, data, assets_dir, batch_size=BATCH, num_workers=num_workers)

    return make


@pytest.mark.parametrize(("framework", "num_workers"), [("pytorch", 0), ("jax", 2)])
def test_sequential_batches_are_openpis_per_dataset_batches(multi, shared_assets, assets_dir, framework,
                                                            num_workers):
    """Sequential order walks the concatenation: the mixture's 9 batches equal openpi's own loader's 6 batches
    of the first dataset's single config followed by the 3 of the second's (batch boundaries fall on the
    dataset boundary: 36 and 18 frames). `num_workers` is fastmix's; openpi's references run without workers
    (its batches do not depend on them: test_single_dataset.py)."""
    from tests.seed.seed_data import openpi_train_config

    ref = []
    for repo, size in zip(REPOS, SIZES.astype(int), strict=True):
        single = openpi_train_config(f"seed_multi_ref_{repo.rsplit('/', 1)[-1]}",
                                     libero(repo_id=repo, assets=shared_assets), assets_dir, batch_size=BATCH,
                                     num_workers=0)
        ref += openpi_batches(single, framework=framework, num_batches=size // BATCH)
    config = multi(f"seed_multi_seq_w{num_workers}", num_workers=num_workers)
    with fastmix_installed():
        got = openpi_batches(config, framework=framework, num_batches=int(SIZES.sum()) // BATCH)
    assert_same_batches(ref, got, f"{TREE} {framework} w{num_workers}", int(SIZES.sum()) // BATCH)


@pytest.mark.parametrize("weighting", ["per_sample", "per_dataset"])
def test_weighted_shares_through_openpis_create_data_loader(multi, weighting):
    """openpi's own `create_data_loader(shuffle=True)` after install(): 1,200 samples of real batches, their
    dataset of origin from each batch's meta: shares as the weighting says (chi-square p > 1e-3), not uniform
    over frames (p < 1e-12)."""
    import openpi.training.data_loader as dl

    config = multi(f"seed_multi_weights_{weighting}", weighting=weighting)
    counts = np.zeros(2, dtype=np.int64)
    with fastmix_installed():
        loader = dl.create_data_loader(config, shuffle=True, num_batches=200, framework="pytorch")
        try:
            for _, meta in loader.batches(with_meta=True):
                counts += np.bincount(np.asarray(meta["dataset_index"]), minlength=2)
        finally:
            loader.close()
    assert counts.sum() == 1200
    expected = SHARES[weighting]
    assert stats.chisquare(counts, expected * 1200).pvalue > 1e-3, f"draws {counts}, expected shares {expected}"
    assert stats.chisquare(counts, UNIFORM * 1200).pvalue < 1e-12


def test_openpi_registry_cli_and_pickle_take_it(multi, monkeypatch):
    import openpi.training.config as _config

    from fastmix.errors import ConfigError
    from fastmix.openpi import MultiDatasetLeRobotConfig, register_openpi_configs

    config = multi("seed_multi_registered")
    try:
        assert register_openpi_configs(config) == [config.name]
        assert _config.get_config(config.name) is config
        assert register_openpi_configs(config) == [config.name]  # the same object again: a no-op
        with pytest.raises(ConfigError, match="seed_multi_registered"):
            register_openpi_configs(dataclasses.replace(config, batch_size=12))
        # openpi's own CLI (tyro) over the registry, with overrides of the mixture's fields
        monkeypatch.setattr(sys, "argv", ["train.py", config.name, "--exp-name=cli", "--data.dataset-weights", "2",
                                          "5", "--data.weighting", "per_dataset"])
        parsed = _config.cli()
    finally:
        _config._CONFIGS_DICT.pop(config.name, None)  # noqa: SLF001
    assert isinstance(parsed.data, MultiDatasetLeRobotConfig) and parsed.exp_name == "cli"
    assert tuple(parsed.data.dataset_weights) == (2.0, 5.0) and parsed.data.weighting == "per_dataset"
    assert tuple(parsed.data.repo_ids) == tuple(REPOS)
    assert parsed.data.dataset_config == config.data.dataset_config and parsed.data.assets == config.data.assets
    assert pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(ConfigError, match="TrainConfig"):
        register_openpi_configs(config.data)


def test_created_data_config_is_openpis(multi):
    """`create()` gives openpi's DataConfig (a subclass) with the LIBERO transforms and the first dataset's
    norm stats, `repo_id` None, the mixture in repo_ids / dataset_weights / weighting: to any caller but openpi's
    un-patched loader (here with openpi's data loader imported and fastmix not installed: as fastmix's own
    tools and openpi's policy serving call it)."""
    import openpi.training.config as _config
    import openpi.training.data_loader  # noqa: F401

    import fastmix.openpi

    config = multi("seed_multi_created")
    assert not fastmix.openpi.is_installed()
    created = config.data.create(config.assets_dirs, config.model)
    single = libero(repo_id=FORK_REPO, assets=config.data.assets).create(config.assets_dirs, config.model)
    assert isinstance(created, _config.DataConfig) and created.repo_id is None
    assert tuple(created.repo_ids) == tuple(REPOS) and tuple(created.dataset_weights) == tuple(WEIGHTS)
    assert created.weighting == "per_sample" and created.asset_id == FORK_REPO and created.prompt_from_task
    for field in ("repack_transforms", "data_transforms", "use_quantile_norm", "action_sequence_keys"):
        assert getattr(created, field) == getattr(single, field), field
    assert sorted(created.norm_stats) == sorted(single.norm_stats) == ["actions", "state"]
    np.testing.assert_array_equal(created.norm_stats["state"].mean, single.norm_stats["state"].mean)


def test_refused_without_install(multi):
    """openpi's own loader would read one dataset (upstream) or ignore the weights (the fork): refused."""
    import openpi.training.data_loader as dl

    from fastmix.errors import ConfigError

    config = multi("seed_multi_no_install")
    with pytest.raises(ConfigError, match=r"fastmix\.openpi\.install\(\)") as info:
        dl.create_data_loader(config, framework="pytorch", num_batches=1)
    assert FORK_REPO in str(info.value)


def test_bad_fields_are_named(shared_assets):
    import openpi.training.config as _config

    from fastmix.errors import ConfigError
    from fastmix.openpi import MultiDatasetLeRobotConfig

    def make(**kwargs):
        args = dict(repo_ids=REPOS, dataset_config=libero())
        return MultiDatasetLeRobotConfig(**{**args, **kwargs})

    cases = [
        (dict(repo_id=FORK_REPO), "repo_id='seed/libero_fork_written'"),
        (dict(repo_ids=[]), "needs repo_ids"),
        (dict(repo_ids=[FORK_REPO, FORK_REPO]), "duplicate"),
        (dict(dataset_weights=[1.0]), "dataset_weights"),
        (dict(weighting="uniform"), "weighting='uniform'"),
        (dict(dataset_config=None), "needs dataset_config"),
        (dict(dataset_config=libero(repo_id=FORK_REPO)), "dataset_config has repo_id"),
        (dict(dataset_config=_config.FakeDataConfig()), "fake data"),
        (dict(dataset_config=make()), "single-dataset"),
        (dict(assets=shared_assets, dataset_config=libero(assets=shared_assets)), "assets is set both"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
            make(**kwargs)


def test_launch_runs_a_script_on_fastmix(shared_assets, assets_dir, tmp_path):
    """`python -m fastmix.openpi.launch --configs FILE SCRIPT NAME ...`: the configs file's CONFIGS are in
    openpi's registry when the script's own `_config.cli()` runs, and its `create_data_loader` is fastmix's."""
    configs = tmp_path / "seed_configs.py"
    configs.write_text(f"""
import openpi.models.pi0_config as pi0_config
import openpi.training.config as _config
from fastmix.openpi import MultiDatasetLeRobotConfig

CONFIGS = [_config.TrainConfig(
    name="seed_launched",
    model=pi0_config.Pi0Config(action_horizon=4),
    data=MultiDatasetLeRobotConfig(
        repo_ids={REPOS!r}, dataset_weights=[1.0, 10.0],
        assets=_config.AssetsConfig(assets_dir={shared_assets.assets_dir!r}, asset_id={FORK_REPO!r}),
        dataset_config=_config.LeRobotLiberoDataConfig(base_config=_config.DataConfig(prompt_from_task=True)),
    ),
    assets_base_dir={str(assets_dir)!r}, batch_size=6, num_workers=0,
)]
""")
    script = tmp_path / "seed_script.py"
    script.write_text("""
import json
import numpy as np
import openpi.training.config as _config
import openpi.training.data_loader as _data_loader

config = _config.cli()
loader = _data_loader.create_data_loader(config, shuffle=True, num_batches=3, framework="pytorch")
counts = np.zeros(2, dtype=int)
for _, meta in loader.batches(with_meta=True):
    counts += np.bincount(np.asarray(meta["dataset_index"]), minlength=2)
obs, actions = next(iter(loader))
print("RESULT " + json.dumps({"loader": type(loader).__module__, "exp_name": config.exp_name,
                              "counts": counts.tolist(), "actions": list(actions.shape)}))
""")
    out = subprocess.run([sys.executable, "-m", "fastmix.openpi.launch", "--configs", str(configs), str(script),
                          "seed_launched", "--exp-name=launched"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["loader"] == "fastmix.openpi.data_loader" and result["exp_name"] == "launched"
    assert sum(result["counts"]) == 18 and result["actions"] == [6, 4, 32]
