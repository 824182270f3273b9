"""Seed tests: fastmix against the real openpi trees (the fork and upstream) and the lerobot they pin (run by
`bash tests/seed/run`, once per tree, each in its own environment).

`FASTMIX_SEED_TREE` ("fork", the default, or "upstream") names the tree of the running environment; the run
stops at once when the importable openpi is the other one. `@pytest.mark.tree("fork", reason=...)` marks a test
that only makes sense for the named trees: it is skipped on the others with that reason (a mark without a
reason is a usage error).

Everything lives under one work folder (`FASTMIX_SEED_WORK`, default a fresh temp dir): lerobot's home with the
test datasets and openpi's data home with the stand-in tokenizer (written once, read by both trees' runs), the
assets with norm stats (one folder per tree) and fastmix's cache (`FASTMIX_CACHE`: nothing in ~/.cache). Nothing is fetched: the hub is switched off before lerobot or
openpi is imported.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.seed.seed_data import offline_environment

WORK = Path(os.environ.get("FASTMIX_SEED_WORK") or tempfile.mkdtemp(prefix="fastmix-seed-"))
offline_environment(WORK)

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FASTMIX_SHARED", REPO.parent / "shared"))
G1_ROOT = SHARED / "data" / "g1_v21_partial"
# Episodes of the G1 subset whose videos are present (shared/README.md).
G1_EPISODES = [4, 5, 7, 8, *range(10, 22)]

TREES = ("fork", "upstream")
TREE = os.environ.get("FASTMIX_SEED_TREE", "fork")

FORK_REPO = "seed/libero_fork_written"
FASTMIX_REPO = "seed/interp_fastmix_written"
EPISODES = {FORK_REPO: (3, 12), FASTMIX_REPO: (2, 9)}  # (episodes, frames each): 36 + 18 = 54 frames
# Datasets of the other robots' schemas (seed_data.ALOHA, seed_data.DROID), written by the pinned lerobot.
ALOHA_REPO = "seed/aloha_written"
DROID_REPO = "seed/droid_written"
DROID_REPO_2 = "seed/droid_written_2"
SCHEMA_EPISODES = {ALOHA_REPO: (2, 9), DROID_REPO: (2, 9), DROID_REPO_2: (2, 6)}


def running_tree() -> str:
    """Which openpi tree is importable: the fork has `MultiDatasetLiberoDataConfig`, upstream has none."""
    import openpi.training.config as _config

    return "fork" if hasattr(_config, "MultiDatasetLiberoDataConfig") else "upstream"


def pytest_configure(config: pytest.Config) -> None:
    import lerobot.common.datasets  # noqa: F401
    import openpi  # noqa: F401 - fail the whole run at once outside the seed environment

    if not G1_ROOT.is_dir():
        raise pytest.UsageError(f"the shared G1 dataset is missing at {G1_ROOT} (../shared beside the checkout)")
    if TREE not in TREES:
        raise pytest.UsageError(f"FASTMIX_SEED_TREE={TREE!r}: expected one of {TREES}")
    if running_tree() != TREE:
        raise pytest.UsageError(f"FASTMIX_SEED_TREE={TREE!r}, but the openpi of this environment "
                                f"({openpi.__file__}) is the {running_tree()} tree: run tests/seed/run")


def pytest_report_header(config: pytest.Config) -> str:
    import openpi

    return f"openpi tree: {TREE} ({openpi.__file__})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.tree(*trees, reason=...)`: skipped, with the reason, on the trees not named."""
    for item in items:
        for mark in item.iter_markers("tree"):
            reason = mark.kwargs.get("reason")
            unknown = set(mark.args) - set(TREES)
            if not reason or not mark.args or unknown:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.tree needs tree names from {TREES} and "
                                        f"reason=... (got args {mark.args}, reason {reason!r})")
            if TREE not in mark.args:
                item.add_marker(pytest.mark.skip(reason=f"{'/'.join(mark.args)} tree only: {reason}"))


@pytest.fixture(scope="session")
def tokenizer() -> Path:
    from tests.seed.seed_data import train_tokenizer

    path = WORK / "openpi" / "big_vision" / "paligemma_tokenizer.model"
    return path if path.is_file() else train_tokenizer(path)


@pytest.fixture(scope="session")
def datasets(tokenizer: Path) -> dict[str, Path]:
    """{repo_id: root} of the two LIBERO-like v2.1 datasets under lerobot's home."""
    from tests.seed.seed_data import write_fastmix_dataset, write_fork_dataset

    home = WORK / "lerobot"
    roots = {FORK_REPO: home / FORK_REPO, FASTMIX_REPO: home / FASTMIX_REPO}
    if not (roots[FORK_REPO] / "meta" / "info.json").is_file():
        n, length = EPISODES[FORK_REPO]
        write_fork_dataset(roots[FORK_REPO], FORK_REPO, num_episodes=n, episode_length=length, seed=1)
    if not (roots[FASTMIX_REPO] / "meta" / "info.json").is_file():
        n, length = EPISODES[FASTMIX_REPO]
        write_fastmix_dataset(roots[FASTMIX_REPO], FASTMIX_REPO, WORK, num_episodes=n, episode_length=length,
                              seed=2)
    return roots


@pytest.fixture(scope="session")
def schema_datasets(tokenizer: Path) -> dict[str, Path]:
    """{repo_id: root} of the ALOHA- and DROID-schema v2.1 datasets under lerobot's home (the pinned lerobot's
    writer; ALOHA: four cameras as video, DROID: three cameras as images in the parquet files)."""
    from tests.seed.seed_data import ALOHA, DROID, write_schema_dataset

    home = WORK / "lerobot"
    schemas = {ALOHA_REPO: (ALOHA, 3), DROID_REPO: (DROID, 4), DROID_REPO_2: (DROID, 5)}
    roots = {}
    for repo_id, (schema, seed) in schemas.items():
        roots[repo_id] = home / repo_id
        if not (roots[repo_id] / "meta" / "info.json").is_file():
            n, length = SCHEMA_EPISODES[repo_id]
            write_schema_dataset(roots[repo_id], repo_id, schema, num_episodes=n, episode_length=length, seed=seed)
    return roots


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """This tree's assets folder (norm stats written by this tree's own scripts)."""
    path = WORK / "assets" / TREE
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tree_norm_stats(assets_dir: Path):
    """`stats(name, data) -> assets dir`: this tree's own `scripts/compute_norm_stats.py` run once per `name` on a
    single-dataset openpi config with the data factory `data` (batch 6, no workers); the returned folder holds
    `<repo_id>/norm_stats.json`, for `AssetsConfig(assets_dir=..., asset_id=repo_id)`."""
    from tests.seed.seed_data import openpi_train_config, tree_compute_norm_stats

    done: dict[str, Path] = {}

    def stats(name: str, data) -> Path:
        if name not in done:
            config = openpi_train_config(name, data, assets_dir, batch_size=6, num_workers=0)
            written = tree_compute_norm_stats(config, TREE)
            assert written.is_file(), f"{TREE}'s compute_norm_stats.py wrote no {written}"
            done[name] = Path(config.assets_dirs)
        return done[name]

    return stats


@pytest.fixture(scope="session")
def norm_stats_dir(datasets, assets_dir: Path) -> Path:
    """An assets dir holding `shared_norm_stats/norm_stats.json` for the two-dataset mixture, written by the
    fork's own compute_norm_stats.py (batch 6, its default sequential pass)."""
    import shutil

    from tests.seed.seed_data import ASSET_ID, fork_compute_norm_stats, fork_train_config

    shared = assets_dir / "shared"
    if not (shared / ASSET_ID / "norm_stats.json").is_file():
        config = fork_train_config("seed_norm_source", [FORK_REPO, FASTMIX_REPO], [1.0, 3.0], assets_dir,
                                   batch_size=6, num_workers=0)
        written = fork_compute_norm_stats(config)
        (shared / ASSET_ID).mkdir(parents=True, exist_ok=True)
        shutil.copy(written, shared / ASSET_ID / "norm_stats.json")
    return shared
