"""The weights finding, measured, on each tree.

fork: its `create_torch_data_loader` checks `isinstance(dataset, ConcatDataset)` after `transform_dataset` has
wrapped the ConcatDataset, so it never builds its WeightedRandomSampler: its draws are uniform over frames
whatever `dataset_weights` says. With `fastmix.openpi.install()` the same call draws the per-sample-weighted
shares (∝ w_i·N_i).

upstream: no multi-dataset LeRobot config and no weights. The weighted mixture an upstream user would build by
hand (upstream's own datasets and transforms, a torch ConcatDataset, torch's `WeightedRandomSampler` in upstream's
own `TorchDataLoader`: `tests/seed/references.py`) draws the per-sample-weighted shares; fastmix's
`MultiDatasetLeRobotConfig` after install() draws the same shares (exact probabilities, and against that
reference's own draws).
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from scipy import stats

from tests.seed.conftest import EPISODES, FASTMIX_REPO, FORK_REPO, TREE
from tests.seed.pipelines import fastmix_installed, observed_dataset_shares

SIZES = np.array([n * length for n, length in (EPISODES[FORK_REPO], EPISODES[FASTMIX_REPO])], dtype=np.float64)
WEIGHTS = np.array([1.0, 10.0])
PER_SAMPLE = WEIGHTS * SIZES / (WEIGHTS * SIZES).sum()  # 36:180 -> 0.1667 / 0.8333
UNIFORM = SIZES / SIZES.sum()  # 36:18 -> 0.6667 / 0.3333
ALPHA = 1e-3


def p_value(counts: np.ndarray, shares: np.ndarray) -> float:
    return float(stats.chisquare(counts, shares * counts.sum()).pvalue)


def libero(**kwargs):
    import openpi.training.config as _config

    return _config.LeRobotLiberoDataConfig(base_config=_config.DataConfig(prompt_from_task=True), **kwargs)


@pytest.fixture(scope="module")
def stats_dir(request, datasets):
    """Norm stats: the fork's script over the fork's mixture; upstream's script over the first dataset."""
    if TREE == "fork":
        return request.getfixturevalue("norm_stats_dir")
    return request.getfixturevalue("tree_norm_stats")("seed_multi_stats", libero(repo_id=FORK_REPO))


def weighted_config(datasets, assets_dir, stats_dir, name: str, num_workers: int = 0):
    """The tree's two-dataset mixture with weights 1:10 (fork: its MultiDatasetLiberoDataConfig; upstream:
    fastmix's MultiDatasetLeRobotConfig around LeRobotLiberoDataConfig), batch 6."""
    import openpi.training.config as _config

    from tests.seed.seed_data import fork_train_config, openpi_train_config

    if TREE == "fork":
        return fork_train_config(name, [FORK_REPO, FASTMIX_REPO], WEIGHTS.tolist(), assets_dir,
                                 assets_dir=stats_dir, batch_size=6, num_workers=num_workers)
    from fastmix.openpi import MultiDatasetLeRobotConfig

    assets = _config.AssetsConfig(assets_dir=str(stats_dir), asset_id=FORK_REPO)
    data = MultiDatasetLeRobotConfig(repo_ids=[FORK_REPO, FASTMIX_REPO], dataset_weights=WEIGHTS.tolist(),
                                     assets=assets, dataset_config=libero())
    return openpi_train_config(name, data, assets_dir, batch_size=6, num_workers=num_workers)


def hand_built_reference_draws(config, draws: int) -> np.ndarray:
    """Upstream: per-dataset counts of `draws` indices of the hand-built weighted reference
    (`references.weighted_sampler_draws`) over the datasets of `config`'s mixture."""
    import dataclasses

    from tests.seed.references import weighted_sampler_draws

    inner = config.data.dataset_config
    singles = [dataclasses.replace(config, data=dataclasses.replace(inner, repo_id=r, assets=config.data.assets))
               for r in config.data.repo_ids]
    return weighted_sampler_draws(singles, config.data.dataset_weights, draws, seed=config.seed)


def test_the_trees_own_weighting(datasets, assets_dir, stats_dir):
    """20,000 draws without fastmix. fork: its own training loader (shuffle=True) uses RandomSampler, shares
    N_i/N (the weights ignored). upstream: the hand-built reference applies the weights (shares ∝ w_i·N_i)."""
    config = weighted_config(datasets, assets_dir, stats_dir, "seed_weights_tree")
    if TREE == "upstream":
        counts = hand_built_reference_draws(config, 20_000)
        assert counts.sum() == 20_000
        assert p_value(counts, PER_SAMPLE) > ALPHA, f"reference draws {counts}, expected shares {PER_SAMPLE}"
        assert p_value(counts, UNIFORM) < 1e-12
        return
    counts, sampler = observed_dataset_shares(config, 20_000)
    assert sampler == "RandomSampler"
    assert counts.sum() == 20_000
    assert p_value(counts, UNIFORM) > ALPHA, f"fork draws {counts} are not uniform over frames"
    assert p_value(counts, PER_SAMPLE) < 1e-12, f"fork draws {counts} follow the weights after all"


def test_installed_fastmix_applies_dataset_weights(datasets, assets_dir, stats_dir):
    """The tree's own `create_data_loader` after install(): 1,200 samples of real batches, their dataset of
    origin from each batch's meta: shares ∝ w_i·N_i (chi-square p > 1e-3), not uniform (p < 1e-12); upstream:
    also homogeneous with 20,000 draws of the hand-built torch WeightedRandomSampler reference (p > 1e-3)."""
    import openpi.training.data_loader as dl

    config = weighted_config(datasets, assets_dir, stats_dir, "seed_weights_fastmix")
    with fastmix_installed():
        loader = dl.create_data_loader(config, shuffle=True, num_batches=200, framework="pytorch")
        counts = np.zeros(2, dtype=np.int64)
        try:
            for _, meta in loader.batches(with_meta=True):
                counts += np.bincount(np.asarray(meta["dataset_index"]), minlength=2)
        finally:
            loader.close()
    assert counts.sum() == 1200
    assert p_value(counts, PER_SAMPLE) > ALPHA, f"fastmix draws {counts}, expected shares {PER_SAMPLE}"
    assert p_value(counts, UNIFORM) < 1e-12
    if TREE == "upstream":
        reference = hand_built_reference_draws(config, 20_000)
        assert stats.chi2_contingency(np.stack([counts, reference])).pvalue > ALPHA, (counts, reference)


def test_verify_openpi_reports_the_trees_weighting(datasets, assets_dir, stats_dir, capsys):
    """`fastmix verify CONFIG N --openpi` measures the tree's own loader. fork: FAIL with expected vs observed,
    and the counts are exactly the fork's own draws (same seed) measured above by other code. upstream: its own
    loader has no mixture to measure: exit 2, one line naming the config's datasets and install()."""
    from fastmix.tools import verify
    from tests.seed.seed_data import register_fork_config

    config = weighted_config(datasets, assets_dir, stats_dir, "seed_weights_verify")
    register_fork_config(config)
    try:
        code = verify.run(argparse.Namespace(config_name=config.name, num_samples=5000, plot=None, alpha=ALPHA,
                                             openpi=True))
    finally:
        if TREE == "upstream":
            import openpi.training.config as _config

            _config._CONFIGS_DICT.pop(config.name, None)  # noqa: SLF001 - openpi's registry
    captured = capsys.readouterr()
    if TREE == "upstream":
        err = captured.err.strip()
        assert code == 2 and len(err.splitlines()) == 1, captured
        assert "fastmix.openpi.install()" in err and FORK_REPO in err and FASTMIX_REPO in err, err
        return
    out = captured.out
    assert code == 1
    assert "[FAIL] mixture" in out and "ignores dataset_weights=[1.0, 10.0]" in out and "RandomSampler" in out
    counts, _ = observed_dataset_shares(config, 5000)
    assert f"{int(counts[0])}" in out and f"{int(counts[1])}" in out
    report = verify.verify_openpi(config, 5000, out=lambda _line: None)
    assert report.observed_counts == counts.tolist()
    assert report.expected_shares == PER_SAMPLE.tolist()


def test_verify_openpi_unknown_config_is_an_error(capsys):
    from fastmix.tools import verify

    code = verify.run(argparse.Namespace(config_name="no_such_config", num_samples=10, plot=None, alpha=ALPHA,
                                         openpi=True))
    assert code == 2 and "no_such_config" in capsys.readouterr().err
