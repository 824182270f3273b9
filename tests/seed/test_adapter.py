"""The tree's own loader and `fastmix.openpi.install()` give the same batches for the tree's two-dataset LIBERO
mixture over two LIBERO-like v2.1 datasets (one written by the fork's lerobot, one by `fastmix.testing.v21`),
`shuffle=False` over a whole epoch, for framework "pytorch" and "jax" with 0 and 2 workers. Every key, shape
and dtype; images and tokens bit-identical; state/actions within float32 rounding.

- fork: its own `MultiDatasetLiberoDataConfig` through its own `create_data_loader`, before and after install();
- upstream (no multi-dataset LeRobot config): fastmix's `MultiDatasetLeRobotConfig` around upstream's
  `LeRobotLiberoDataConfig` after install(), against what an upstream user would build without fastmix: upstream's
  own dataset and transforms per repo, a torch ConcatDataset, upstream's own TorchDataLoader
  (`tests/seed/references.py`).

The float64 decision: openpi's PyTorch path returns float64 state/actions (its `Normalize` mixes float32 data
with float64 stats); its jax path float32. fastmix returns float32 on both (what the model consumes): asserted
below, against openpi's own values rounded to float32.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.seed.conftest import EPISODES, FASTMIX_REPO, FORK_REPO, TREE
from tests.seed.pipelines import fastmix_installed, openpi_batches

BATCH = 6
TOTAL = sum(n * length for n, length in EPISODES.values())
FLOAT_KEYS = ("state", "actions")
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def mixture(request, datasets, assets_dir):
    """(make(num_workers, pi05=False) -> the tree's two-dataset LIBERO TrainConfig (weights 1:3, batch 6),
    reference(config, framework) -> the tree's own batches of a whole epoch without fastmix)."""
    if TREE == "fork":
        from tests.seed.seed_data import fork_train_config

        norm_stats_dir = request.getfixturevalue("norm_stats_dir")

        def make(num_workers: int, *, pi05: bool = False):
            return fork_train_config(f"seed_adapter_w{num_workers}_{'pi05' if pi05 else 'pi0'}",
                                     [FORK_REPO, FASTMIX_REPO], [1.0, 3.0], assets_dir, assets_dir=norm_stats_dir,
                                     batch_size=BATCH, num_workers=num_workers, pi05=pi05)

        def reference(config, framework: str) -> list[dict]:
            return openpi_batches(config, framework=framework, num_batches=TOTAL // BATCH)

        return make, reference
    import dataclasses

    import openpi.training.config as _config

    from fastmix.openpi import MultiDatasetLeRobotConfig
    from tests.seed.references import concat_batches
    from tests.seed.seed_data import openpi_train_config

    def libero(**kwargs):
        return _config.LeRobotLiberoDataConfig(base_config=_config.DataConfig(prompt_from_task=True), **kwargs)

    stats = request.getfixturevalue("tree_norm_stats")("seed_multi_stats", libero(repo_id=FORK_REPO))
    assets = _config.AssetsConfig(assets_dir=str(stats), asset_id=FORK_REPO)

    def make(num_workers: int, *, pi05: bool = False):
        data = MultiDatasetLeRobotConfig(repo_ids=[FORK_REPO, FASTMIX_REPO], dataset_weights=[1.0, 3.0],
                                         assets=assets, dataset_config=libero())
        return openpi_train_config(f"seed_adapter_w{num_workers}_{'pi05' if pi05 else 'pi0'}", data, assets_dir,
                                   batch_size=BATCH, num_workers=num_workers, pi05=pi05)

    def reference(config, framework: str) -> list[dict]:
        singles = [dataclasses.replace(config, name=f"{config.name}_{repo.rsplit('/', 1)[-1]}",
                                       data=libero(repo_id=repo, assets=assets)) for repo in (FORK_REPO, FASTMIX_REPO)]
        return concat_batches(singles, framework=framework, num_batches=TOTAL // BATCH,
                              num_workers=config.num_workers)

    return make, reference


def assert_batches_equal(ref: list[dict], got: list[dict], framework: str) -> None:
    assert len(ref) == len(got) == TOTAL // BATCH
    for b, (r, g) in enumerate(zip(ref, got, strict=True)):
        assert sorted(r) == sorted(g), f"batch {b}: keys {sorted(r)} vs {sorted(g)}"
        for key in r:
            where = f"{framework} batch {b} {key}"
            assert r[key].shape == g[key].shape, f"{where}: shape {r[key].shape} vs {g[key].shape}"
            if key in FLOAT_KEYS:
                assert g[key].dtype == np.float32, f"{where}: fastmix returns float32, got {g[key].dtype}"
                want = r[key].astype(np.float32)
                np.testing.assert_allclose(g[key], want, rtol=4 * EPS32, atol=4 * EPS32, err_msg=where)
            else:
                assert r[key].dtype == g[key].dtype, f"{where}: dtype {r[key].dtype} vs {g[key].dtype}"
                assert np.array_equal(r[key], g[key]), f"{where}: values differ"


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("framework", ["pytorch", "jax"])
def test_same_batches_as_the_trees_loader(mixture, framework, num_workers):
    make, reference = mixture
    config = make(num_workers)
    ref = reference(config, framework)
    with fastmix_installed():
        got = openpi_batches(config, framework=framework, num_batches=TOTAL // BATCH)
    assert_batches_equal(ref, got, framework)
    # the batches really hold both datasets and openpi's model inputs
    assert {"image/base_0_rgb", "image/left_wrist_0_rgb", "tokenized_prompt", "state", "actions"} <= set(ref[0])
    want_dtype = np.float64 if framework == "pytorch" else np.float32
    assert ref[0]["state"].dtype == want_dtype, f"the {TREE}'s dtype of state changed: revisit the float64 note"


def test_same_batches_as_the_trees_loader_pi05(mixture):
    """pi05: quantile normalization and the state tokenized into the prompt (discrete state input)."""
    make, reference = mixture
    config = make(0, pi05=True)
    ref = reference(config, "pytorch")
    with fastmix_installed():
        got = openpi_batches(config, framework="pytorch", num_batches=TOTAL // BATCH)
    assert_batches_equal(ref, got, "pytorch pi05")


def test_prompts_are_each_datasets_tasks(mixture):
    """Per-dataset prompts: the tokens of every sample are its own dataset's task (sequential order: the first
    36 samples come from the fork-written dataset, the rest from the fastmix-written one)."""
    import openpi.models.tokenizer as tok

    from tests.seed.seed_data import FASTMIX_TASKS, FORK_TASKS

    config = mixture[0](0)
    with fastmix_installed():
        got = openpi_batches(config, framework="pytorch", num_batches=TOTAL // BATCH)
    tokenizer = tok.PaligemmaTokenizer(config.model.max_token_len)
    tokens = np.concatenate([b["tokenized_prompt"] for b in got])
    fork_n = EPISODES[FORK_REPO][0] * EPISODES[FORK_REPO][1]
    allowed_fork = {tuple(tokenizer.tokenize(t)[0]) for t in FORK_TASKS}
    allowed_fm = {tuple(tokenizer.tokenize(t)[0]) for t in FASTMIX_TASKS}
    assert {tuple(t) for t in tokens[:fork_n]} == allowed_fork
    assert {tuple(t) for t in tokens[fork_n:]} == allowed_fm
