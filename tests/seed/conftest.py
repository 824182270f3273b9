"""Seed tests: fastmix against the real openpi fork and the lerobot it pins (run by `bash tests/seed/run`).

Everything lives under one work folder (`FASTMIX_SEED_WORK`, default a fresh temp dir): lerobot's home with the
test datasets, openpi's data home with the stand-in tokenizer, the assets with norm stats. Nothing is fetched:
the hub is switched off before lerobot or openpi is imported.
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

FORK_REPO = "seed/libero_fork_written"
FASTMIX_REPO = "seed/interp_fastmix_written"
EPISODES = {FORK_REPO: (3, 12), FASTMIX_REPO: (2, 9)}  # (episodes, frames each): 36 + 18 = 54 frames


def pytest_configure(config: pytest.Config) -> None:
    import lerobot.common.datasets  # noqa: F401
    import openpi  # noqa: F401 - fail the whole run at once outside the seed environment

    if not G1_ROOT.is_dir():
        raise pytest.UsageError(f"the shared G1 dataset is missing at {G1_ROOT} (../shared beside the checkout)")


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
def assets_dir() -> Path:
    path = WORK / "assets"
    path.mkdir(parents=True, exist_ok=True)
    return path


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
