"""`fastmix compute-norm-stats` against the running tree's own `scripts/compute_norm_stats.py` (fork and upstream):

- every single-dataset LeRobot data config of the tree (LIBERO with delta actions, DROID, ALOHA): the tree's script
  and fastmix's command on the same config write the same file (same path, same keys) with the same numbers;
- a mixture: on the fork its own `MultiDatasetLiberoDataConfig` against the fork's script (its `--repo-id`
  override); on both trees fastmix's `MultiDatasetLeRobotConfig` against the tree's own pipeline over the
  concatenation (the script's loop: its RemoveStrings, TransformedDataset, TorchDataLoader and RunningStats over a
  ConcatDataset of the tree's `create_torch_dataset` per dataset), which upstream's script cannot take;
- the command finds a config in openpi's own registry by name.

Tolerances (openpi's RunningStats is not exact, fastmix's reduction is its float64 form): openpi accumulates the
mean and mean of squares in the data's dtype (float32 here), so its mean differs from the float64 one by float32
rounding (rtol 1e-6 of the largest |value|) and its std, sqrt(E[x^2] - E[x]^2), by the float32 rounding of
E[x^2] divided by 2·std (`_std_tolerance`). q01/q99 are left edges of the same 5000-bin histograms: the bins are
the same (the same batches in the same order, the same rebinning), the edges equal up to float32 rounding of the
first batch's widened range (openpi: min - 1e-10 in float32): rtol 1e-6 of the range. Frame counts are multiples
of the batch size (openpi drops the last partial batch; fastmix counts it)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tests.seed.conftest import FASTMIX_REPO, FORK_REPO, TREE

BATCH = 6


def load_stats(path) -> dict:
    return json.loads(path.read_text())["norm_stats"]


def _std_tolerance(stats: dict) -> np.ndarray:
    mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    mean_sq = mean**2 + std**2
    return 4 * np.finfo(np.float32).eps * (mean_sq + 1e-12) / np.maximum(std, 1e-6) + 1e-7


def assert_same_stats(ours: dict, theirs: dict, what: str) -> None:
    assert sorted(ours) == sorted(theirs) == ["actions", "state"], what
    for key in theirs:
        assert sorted(ours[key]) == sorted(theirs[key]) == ["mean", "q01", "q99", "std"], what
        t = {k: np.asarray(v) for k, v in theirs[key].items()}
        o = {k: np.asarray(v) for k, v in ours[key].items()}
        scale = np.maximum(np.abs(t["q01"]), np.abs(t["q99"])) + 1e-6
        np.testing.assert_allclose(o["mean"], t["mean"], rtol=0, atol=1e-6 * scale.max(), err_msg=f"{what} {key}.mean")
        assert np.all(np.abs(o["std"] - t["std"]) <= _std_tolerance(theirs[key])), (what, key, o["std"], t["std"])
        width = t["q99"] - t["q01"] + 1e-6
        for stat in ("q01", "q99"):
            np.testing.assert_allclose(o[stat], t[stat], rtol=0, atol=1e-6 * width.max() + 1e-9,
                                       err_msg=f"{what} {key}.{stat}")


def _fastmix(config, workers: int = 1):
    from fastmix.tools.compute_norm_stats import compute_norm_stats

    return compute_norm_stats(config, progress=False, workers=workers)


def _libero(repo: str):
    import openpi.training.config as _config

    return _config.LeRobotLiberoDataConfig(repo_id=repo, extra_delta_transform=True,
                                           base_config=_config.DataConfig(prompt_from_task=True))


def _single_configs():
    from tests.seed.test_data_configs import aloha_data, droid_data

    return {"libero": lambda: _libero(FORK_REPO), "droid": droid_data, "aloha": aloha_data}


@pytest.mark.parametrize("kind", ["libero", "droid", "aloha"])
def test_single_dataset_config_equals_the_trees_script(kind, datasets, schema_datasets, assets_dir):
    """The tree's own script, then fastmix's command on the same config: same file, same numbers."""
    from tests.seed.seed_data import openpi_train_config, tree_compute_norm_stats

    config = openpi_train_config(f"seed_ns_{kind}", _single_configs()[kind](), assets_dir, batch_size=BATCH,
                                 num_workers=0, action_horizon=4)
    theirs_path = tree_compute_norm_stats(config, TREE)
    theirs = load_stats(theirs_path)
    theirs_path.unlink()
    ours_path = _fastmix(config, workers=2 if kind == "aloha" else 1)  # AlohaInputs runs per sample: pickled
    assert ours_path == theirs_path  # assets_dirs / repo_id: where the tree's script writes and training reads
    assert_same_stats(load_stats(ours_path), theirs, f"{TREE} {kind}")


def _tree_pipeline_stats(config, repos) -> dict:
    """The tree's compute_norm_stats loop (its own RemoveStrings, TransformedDataset, TorchDataLoader in order,
    RunningStats) over a ConcatDataset of the tree's `create_torch_dataset` for each repo of `config`."""
    import dataclasses
    import importlib.util

    import openpi.shared.normalize as normalize
    import openpi.training.data_loader as _data_loader
    import torch

    from tests.seed.seed_data import tree_dir

    spec = importlib.util.spec_from_file_location(f"{TREE}_cns", tree_dir(TREE) / "scripts" / "compute_norm_stats.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    single = config.data.dataset_config.create(config.assets_dirs, config.model)
    parts = [_data_loader.create_torch_dataset(dataclasses.replace(single, repo_id=r), config.model.action_horizon,
                                               config.model) for r in repos]
    dataset = _data_loader.TransformedDataset(torch.utils.data.ConcatDataset(parts), [
        *single.repack_transforms.inputs, *single.data_transforms.inputs, script.RemoveStrings()])
    loader = _data_loader.TorchDataLoader(dataset, local_batch_size=config.batch_size, num_workers=0, shuffle=False,
                                          num_batches=len(dataset) // config.batch_size)
    stats = {k: normalize.RunningStats() for k in ("state", "actions")}
    for batch in loader:
        for k in stats:
            stats[k].update(np.asarray(batch[k]))
    return json.loads(normalize.serialize_json({k: s.get_statistics() for k, s in stats.items()}))["norm_stats"]


def test_mixture_config_equals_the_trees_pipeline(datasets, assets_dir):
    """fastmix's `MultiDatasetLeRobotConfig` (the mixture config for upstream users) over the two LIBERO datasets:
    fastmix's command (1 and 3 processes: the same file, byte for byte) against the tree's own loop over the
    datasets' concatenation (36 + 18 frames)."""
    import openpi.training.config as _config

    from fastmix.openpi import MultiDatasetLeRobotConfig
    from tests.seed.seed_data import openpi_train_config

    data = MultiDatasetLeRobotConfig(repo_ids=[FORK_REPO, FASTMIX_REPO], dataset_weights=[1.0, 3.0],
                                     assets=_config.AssetsConfig(asset_id="seed_mixture_stats"),
                                     dataset_config=_config.LeRobotLiberoDataConfig(
                                         extra_delta_transform=True,
                                         base_config=_config.DataConfig(prompt_from_task=True)))
    config = openpi_train_config("seed_ns_mixture", data, assets_dir, batch_size=BATCH, num_workers=0)
    theirs = _tree_pipeline_stats(config, [FORK_REPO, FASTMIX_REPO])
    one = _fastmix(config, workers=1).read_bytes()
    path = _fastmix(config, workers=3)
    assert path == assets_dir / "seed_ns_mixture" / "seed_mixture_stats" / "norm_stats.json"
    assert path.read_bytes() == one
    assert_same_stats(load_stats(path), theirs, f"{TREE} MultiDatasetLeRobotConfig")


def test_the_trees_own_mixture_config(datasets, assets_dir):
    """The tree's own multi-dataset path: on the fork its `MultiDatasetLiberoDataConfig` against the fork's script
    (given the asset id through its `repo_id` override); upstream has no such config, so there fastmix's
    `MultiDatasetLeRobotConfig` without delta actions against upstream's loop over the concatenation."""
    from tests.seed.seed_data import ASSET_ID, fork_compute_norm_stats, fork_train_config

    if TREE == "fork":
        config = fork_train_config("seed_norm_compare", [FORK_REPO, FASTMIX_REPO], [1.0, 3.0], assets_dir,
                                   batch_size=BATCH, num_workers=0)
        theirs = load_stats(fork_compute_norm_stats(config))
        ours_path = _fastmix(config)
        assert ours_path.parent == assets_dir / config.name / ASSET_ID
    else:
        import openpi.training.config as _config

        from fastmix.openpi import MultiDatasetLeRobotConfig
        from tests.seed.seed_data import openpi_train_config

        data = MultiDatasetLeRobotConfig(repo_ids=[FORK_REPO, FASTMIX_REPO], assets=_config.AssetsConfig(
            asset_id=ASSET_ID), dataset_config=_config.LeRobotLiberoDataConfig(
            base_config=_config.DataConfig(prompt_from_task=True)))
        config = openpi_train_config("seed_norm_compare", data, assets_dir, batch_size=BATCH, num_workers=0)
        theirs = _tree_pipeline_stats(config, [FORK_REPO, FASTMIX_REPO])
        ours_path = _fastmix(config)
    assert_same_stats(load_stats(ours_path), theirs, f"{TREE} mixture")


def test_cli_finds_a_config_in_openpis_registry(datasets, assets_dir, capsys):
    """`fastmix compute-norm-stats NAME` with NAME only in openpi's registry (as `train.py NAME` finds it)."""
    from fastmix import cli
    from tests.seed.seed_data import openpi_train_config, register_fork_config

    config = openpi_train_config("seed_ns_cli_only_in_openpi", _libero(FORK_REPO), assets_dir, batch_size=BATCH,
                                 num_workers=0)
    register_fork_config(config)
    assert cli.main(["compute-norm-stats", config.name, "--workers", "1"]) == 0
    path = assets_dir / config.name / FORK_REPO / "norm_stats.json"
    assert f"Wrote {path}" in capsys.readouterr().out
    assert load_stats(path)["state"]["mean"] == load_stats(_fastmix(config, workers=1))["state"]["mean"]


def test_norm_stats_cover_the_whole_mixture(datasets, assets_dir):
    """Independent check: mean and std of state over all 54 frames, read straight from the parquet files with
    pyarrow, against fastmix's command."""
    import pyarrow.parquet as pq

    from tests.seed.seed_data import fork_train_config

    rows = []
    for repo in (FORK_REPO, FASTMIX_REPO):
        for f in sorted((datasets[repo] / "data").glob("*/*.parquet")):
            rows.append(np.stack(pq.read_table(f, columns=["state"]).column("state").to_numpy(zero_copy_only=False)))
    state = np.concatenate(rows).astype(np.float64)
    if TREE == "fork":
        config = fork_train_config("seed_norm_whole", [FORK_REPO, FASTMIX_REPO], None, assets_dir, batch_size=BATCH,
                                   num_workers=0)
    else:
        import openpi.training.config as _config

        from fastmix.openpi import MultiDatasetLeRobotConfig
        from tests.seed.seed_data import openpi_train_config

        config = openpi_train_config("seed_norm_whole", MultiDatasetLeRobotConfig(
            repo_ids=[FORK_REPO, FASTMIX_REPO], assets=_config.AssetsConfig(asset_id="whole"),
            dataset_config=_config.LeRobotLiberoDataConfig(base_config=_config.DataConfig(prompt_from_task=True))),
            assets_dir, batch_size=BATCH, num_workers=0)
    ours = load_stats(_fastmix(config))["state"]
    np.testing.assert_allclose(ours["mean"], state.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours["std"], state.std(0), rtol=1e-7, atol=1e-9)


def test_mixture_of_data_configs_each_asset_equals_the_trees_script_on_its_entry(datasets, schema_datasets,
                                                                                 assets_dir):
    """fastmix's `MixtureDataConfig` of the tree's own LIBERO (delta actions), DROID and ALOHA configs, each with
    its own asset id: one pass over each dataset (2 processes) writes one file per entry, each equal to the
    tree's own script run on that entry alone."""
    import openpi.training.config as _config

    from fastmix.openpi.mixture_config import MixtureDataConfig
    from tests.seed.seed_data import openpi_train_config, tree_compute_norm_stats
    from tests.seed.test_data_configs import aloha_data, droid_data

    entries = {"libero": _libero(FORK_REPO), "droid": droid_data(), "aloha": aloha_data()}
    theirs = {}
    for kind, entry in entries.items():
        alone = openpi_train_config(f"seed_ns_entry_{kind}", entry, assets_dir, batch_size=BATCH, num_workers=0)
        theirs[kind] = load_stats(tree_compute_norm_stats(alone, TREE))
    mixture = openpi_train_config("seed_ns_robots", MixtureDataConfig(
        datasets=[dataclasses.replace(e, assets=_config.AssetsConfig(asset_id=f"robot_{k}")) for k, e in entries.items()],
        dataset_weights=[1.0, 2.0, 1.0], weighting="per_dataset"), assets_dir, batch_size=BATCH, num_workers=0)
    paths = _fastmix(mixture, workers=2)
    assert paths == [assets_dir / "seed_ns_robots" / f"robot_{k}" / "norm_stats.json" for k in entries]
    for kind, path in zip(entries, paths, strict=True):
        assert_same_stats(load_stats(path), theirs[kind], f"{TREE} mixture entry {kind}")


def test_cli_in_a_fresh_process_with_a_configs_file(datasets, assets_dir, tmp_path):
    """`python -m fastmix compute-norm-stats FILE.py:NAME --workers 2`, the file registering an openpi TrainConfig
    into openpi's registry (`register_openpi_configs`): a fresh process (JAX not started: forked workers) writes
    the same bytes as one process here."""
    import os
    import subprocess
    import sys

    from tests.seed.seed_data import openpi_train_config

    name = "seed_ns_cli_file"
    configs = tmp_path / "my_configs.py"
    configs.write_text(
        "import openpi.models.pi0_config as pi0_config\n"
        "import openpi.training.config as _config\n"
        "from fastmix.openpi import register_openpi_configs\n"
        f"register_openpi_configs(_config.TrainConfig(name={name!r}, model=pi0_config.Pi0Config(action_horizon=4),\n"
        f"    data=_config.LeRobotLiberoDataConfig(repo_id={FORK_REPO!r}, extra_delta_transform=True,\n"
        "        base_config=_config.DataConfig(prompt_from_task=True)),\n"
        f"    assets_base_dir={str(tmp_path / 'cli_assets')!r}, batch_size={BATCH}, num_workers=0))\n")
    run = subprocess.run([sys.executable, "-m", "fastmix", "compute-norm-stats", f"{configs}:{name}", "--workers",
                          "2"], capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    path = tmp_path / "cli_assets" / name / FORK_REPO / "norm_stats.json"
    assert f"Wrote {path}" in run.stdout
    assert "os.fork() was called" not in run.stderr
    here = openpi_train_config(name, _libero(FORK_REPO), assets_dir, batch_size=BATCH, num_workers=0)
    assert path.read_bytes() == _fastmix(here, workers=1).read_bytes()
