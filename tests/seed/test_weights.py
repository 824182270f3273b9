"""The weights finding, measured. The fork's `create_torch_data_loader` checks `isinstance(dataset,
ConcatDataset)` after `transform_dataset` has wrapped the ConcatDataset, so it never builds its
WeightedRandomSampler: its draws are uniform over frames whatever `dataset_weights` says. With
`fastmix.openpi.install()` the same call draws the per-sample-weighted shares (∝ w_i·N_i).
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from scipy import stats

from tests.seed.conftest import EPISODES, FASTMIX_REPO, FORK_REPO
from tests.seed.pipelines import fastmix_installed, observed_dataset_shares

SIZES = np.array([n * length for n, length in (EPISODES[FORK_REPO], EPISODES[FASTMIX_REPO])], dtype=np.float64)
WEIGHTS = np.array([1.0, 10.0])
PER_SAMPLE = WEIGHTS * SIZES / (WEIGHTS * SIZES).sum()  # 36:180 -> 0.1667 / 0.8333
UNIFORM = SIZES / SIZES.sum()  # 36:18 -> 0.6667 / 0.3333
ALPHA = 1e-3
FORK_ONLY = pytest.mark.tree("fork", reason="the fork's MultiDatasetLiberoDataConfig and its ignored dataset_weights; "
                             "upstream has no multi-dataset LeRobot config (fastmix's: test_multi_config.py)")


def p_value(counts: np.ndarray, shares: np.ndarray) -> float:
    return float(stats.chisquare(counts, shares * counts.sum()).pvalue)


def weighted_config(datasets, assets_dir, norm_stats_dir, name: str, num_workers: int = 0):
    from tests.seed.seed_data import fork_train_config

    return fork_train_config(name, [FORK_REPO, FASTMIX_REPO], WEIGHTS.tolist(), assets_dir,
                             assets_dir=norm_stats_dir, batch_size=6, num_workers=num_workers)


@FORK_ONLY
def test_fork_ignores_dataset_weights(datasets, assets_dir, norm_stats_dir):
    """20,000 draws of the fork's own training loader (shuffle=True): RandomSampler, shares N_i/N."""
    config = weighted_config(datasets, assets_dir, norm_stats_dir, "seed_weights_fork")
    counts, sampler = observed_dataset_shares(config, 20_000)
    assert sampler == "RandomSampler"
    assert counts.sum() == 20_000
    assert p_value(counts, UNIFORM) > ALPHA, f"fork draws {counts} are not uniform over frames"
    assert p_value(counts, PER_SAMPLE) < 1e-12, f"fork draws {counts} follow the weights after all"


@FORK_ONLY
def test_installed_fastmix_applies_dataset_weights(datasets, assets_dir, norm_stats_dir):
    """The fork's own `create_data_loader` after install(): 1,200 samples of real batches, their dataset of
    origin from each batch's meta: shares ∝ w_i·N_i (chi-square p > 1e-3), not uniform (p < 1e-12)."""
    import openpi.training.data_loader as dl

    config = weighted_config(datasets, assets_dir, norm_stats_dir, "seed_weights_fastmix")
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


@FORK_ONLY
def test_verify_openpi_reports_ignored_weights(datasets, assets_dir, norm_stats_dir, capsys):
    """`fastmix verify CONFIG N --openpi` measures the fork's loader: FAIL with expected vs observed, and the
    counts are exactly the fork's own draws (same seed) measured above by other code."""
    from fastmix.tools import verify
    from tests.seed.seed_data import register_fork_config

    config = weighted_config(datasets, assets_dir, norm_stats_dir, "seed_weights_verify")
    register_fork_config(config)
    code = verify.run(argparse.Namespace(config_name=config.name, num_samples=5000, plot=None, alpha=ALPHA,
                                         openpi=True))
    out = capsys.readouterr().out
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
