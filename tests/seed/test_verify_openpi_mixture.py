"""`fastmix verify` on a `MixtureDataConfig` whose entries are the tree's OWN data config classes (LIBERO, DROID,
ALOHA; each with its own norm stats from the tree's `compute_norm_stats.py`): every single-config check runs per
entry and passes — openpi's `TokenizePrompt` consumes the prompts and the prompt check still reads them — and
the mixture's shares pass the chi-square against the exact expected shares."""

from __future__ import annotations

from tests.seed.pipelines import fastmix_installed
from tests.seed.test_mixture_configs import entries

PER_ENTRY = ("datasets", "compatibility", "finite data", "loading", "statistics", "transforms", "prompts")
CLASSES = ("LeRobotLiberoDataConfig", "LeRobotDROIDDataConfig", "LeRobotAlohaDataConfig")


def test_verify_runs_every_check_per_entry_of_openpis_configs(datasets, schema_datasets, tree_norm_stats,
                                                               assets_dir, tmp_path):
    from fastmix import MixtureDataConfig
    from fastmix.tools.verify import verify
    from tests.seed.seed_data import openpi_train_config

    data = MixtureDataConfig(datasets=entries(tree_norm_stats), dataset_weights=[1.0, 2.0, 1.0],
                             weighting="per_dataset")
    config = openpi_train_config("seed_verify_mixture", data, assets_dir, batch_size=8, num_workers=0)
    lines: list[str] = []
    with fastmix_installed():
        report = verify(config, 240, plot_path=tmp_path / "mixture.png", out=lines.append)
    names = [c.name for c in report.checks]
    for g, cls in enumerate(CLASSES):
        for check in PER_ENTRY:
            mine = [n for n in names if n.startswith(f"{check} entry {g} ({cls}")]
            assert len(mine) == 1, (check, g, names)
            assert report.check(mine[0]).ok, (mine[0], report.check(mine[0]).detail)
    assert report.ok, "\n".join(lines)
    assert sum(report.observed_counts) == 240 and len(report.expected_shares) == 3
    assert [round(s, 12) for s in report.expected_shares] == [0.25, 0.5, 0.25]  # per_dataset: w / sum(w)
