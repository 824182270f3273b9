"""`fastmix compute-norm-stats` and the fork's own `scripts/compute_norm_stats.py` on the same config agree:
mean/std up to float rounding, q01/q99 as openpi's own histogram method gives them (same batches in the same
order: the fork's pass is sequential in batches of `config.batch_size`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.seed.conftest import FASTMIX_REPO, FORK_REPO

pytestmark = pytest.mark.tree("fork", reason="compares with the fork's compute_norm_stats.py on its "
                              "MultiDatasetLiberoDataConfig (its repo_id override); upstream's script takes "
                              "single-dataset configs only")


def load_stats(path) -> dict:
    return json.loads(path.read_text())["norm_stats"]


@pytest.fixture(scope="module")
def fork_stats(datasets, assets_dir, tokenizer):
    """(config, the fork's norm stats for it) from the fork's own script."""
    from tests.seed.seed_data import fork_compute_norm_stats, fork_train_config

    config = fork_train_config("seed_norm_compare", [FORK_REPO, FASTMIX_REPO], [1.0, 3.0], assets_dir,
                               batch_size=6, num_workers=0)
    return config, load_stats(fork_compute_norm_stats(config))


def test_norm_stats_equal_the_forks(fork_stats, assets_dir):
    from fastmix.tools.compute_norm_stats import compute_norm_stats

    config, theirs = fork_stats
    ours_path = compute_norm_stats(config, batch_size=config.batch_size, progress=False)
    assert ours_path.parent == assets_dir / config.name / "shared_norm_stats"
    ours = load_stats(ours_path)
    assert sorted(ours) == sorted(theirs) == ["actions", "state"]
    for key in theirs:
        assert sorted(ours[key]) == sorted(theirs[key])
        for stat in ("mean", "std"):
            np.testing.assert_allclose(ours[key][stat], theirs[key][stat], rtol=1e-6, atol=1e-7,
                                       err_msg=f"{key}.{stat}")
        for stat in ("q01", "q99"):
            np.testing.assert_allclose(ours[key][stat], theirs[key][stat], rtol=1e-6, atol=1e-7,
                                       err_msg=f"{key}.{stat}")


def test_norm_stats_cover_the_whole_mixture(fork_stats, datasets):
    """Independent check of the fork's numbers: mean and std of state over all 54 frames, read straight from
    the parquet files with pyarrow."""
    import pyarrow.parquet as pq

    rows = []
    for repo in (FORK_REPO, FASTMIX_REPO):
        for f in sorted((datasets[repo] / "data").glob("*/*.parquet")):
            rows.append(np.stack(pq.read_table(f, columns=["state"]).column("state").to_numpy(zero_copy_only=False)))
    state = np.concatenate(rows).astype(np.float64)
    theirs = fork_stats[1]["state"]
    np.testing.assert_allclose(theirs["mean"], state.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(theirs["std"], state.std(0), rtol=1e-4, atol=1e-6)
