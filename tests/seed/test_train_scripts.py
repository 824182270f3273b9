"""openpi's own train scripts, unchanged, on fastmix: `scripts/train.py` (JAX) and `scripts/train_pytorch.py` of
the tree under test, run as subprocesses by `python -m fastmix.openpi.launch` with a dummy pi0 (as upstream's
`train_test.py`) and fastmix's `MultiDatasetLeRobotConfig` over the two seed datasets: a few steps with
checkpoints, then a resume from the first checkpoint, as if the run had stopped after saving it.

What each step trained on is recorded by `train_record` (a digest of the batch's actions, state and images, its
shapes and, for JAX, its sharding at the jitted step); the scripts themselves are not touched.

- the run trains (finite losses), checkpoints, and the checkpoint's assets hold the norm stats as openpi writes
  them (read back with openpi's own `normalize.load`) and fastmix's loader state;
- JAX batches reach the jitted train step with openpi's data sharding;
- a run resumed at checkpoint k trains, step for step, on the batches the uninterrupted run trained on (and
  gives the same losses): the data stream continues;
- without the loader state (a checkpoint as openpi alone writes it) the resumed run starts the stream again:
  its first step after the resume trains on batch 0 — as openpi's own loader does (measured here too: its
  loader, built again as a resumed run builds it, gives batches 0, 1, ... again).

CI runs both scripts on the tree under test (JAX without loader workers, PyTorch with 2); FASTMIX_SEED_SLOW=1
adds the other worker counts and the resumes without loader state (each one more run of a script per tree).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.seed.conftest import FASTMIX_REPO, FORK_REPO, TREE
from tests.seed.seed_data import tree_dir
from tests.seed.train_runs import Variant, configs_source, resumable_copy, run_script, transformers_overlay

REPOS = [FORK_REPO, FASTMIX_REPO]
WEIGHTS = [1.0, 3.0]
# JAX: steps 0..3, checkpoints after steps 1, 2, 3; resumed from 1, it trains steps 2 and 3. PyTorch: steps
# 0..4, checkpoints after 3 and 4 steps; resumed from 3, it trains steps 3 and 4.
JAX = Variant("jax", 0, steps=4, save_interval=1, resume_from=1)
PYTORCH = Variant("pytorch", 2, steps=5, save_interval=3, resume_from=3)
ALL_VARIANTS = [JAX, dataclasses.replace(JAX, num_workers=2), PYTORCH, dataclasses.replace(PYTORCH, num_workers=0)]
# CI runs both scripts on both trees (JAX without loader workers, PyTorch with 2); FASTMIX_SEED_SLOW=1 adds the
# other worker counts and the resumes without loader state.
SLOW = os.environ.get("FASTMIX_SEED_SLOW") == "1"
VARIANTS = ALL_VARIANTS if SLOW else [JAX, PYTORCH]
IDS = [f"{v.framework}-w{v.num_workers}" for v in VARIANTS]


def libero(**kwargs):
    import openpi.training.config as _config

    return _config.LeRobotLiberoDataConfig(base_config=_config.DataConfig(prompt_from_task=True), **kwargs)


class Runs:
    """The runs of each variant, made once per module: the uninterrupted run, the resumed one (with fastmix's
    loader state) and, on demand, the resumed one without it."""

    def __init__(self, folder: Path, configs: Path, stats: Path) -> None:
        self.folder, self.configs, self.stats = folder, configs, stats
        self.home = folder / "home"
        self.tree = tree_dir(TREE)
        self._done: dict[tuple, object] = {}

    def _python_path(self, variant: Variant) -> str:
        if variant.framework != "pytorch":
            return ""
        return str(transformers_overlay(self.tree, self.folder / "overlay"))

    def _run(self, key: tuple, variant: Variant, exp: str, *, resume: bool):
        if key not in self._done:
            self._done[key] = run_script(self.tree, variant, self.configs, self.folder, exp, resume=resume,
                                         python_path=self._python_path(variant), home=self.home)
            print(f"\n[{TREE}] {variant.name} {exp}: {self._done[key].seconds:.0f} s")
        return self._done[key]

    def full(self, variant: Variant):
        return self._run((variant, "full"), variant, f"full_w{variant.num_workers}", resume=False)

    def resumed(self, variant: Variant, *, loader_state: bool = True):
        exp = f"resumed_w{variant.num_workers}" + ("" if loader_state else "_nostate")
        key = (variant, exp)
        if key not in self._done:
            full = self.full(variant)
            resumable_copy(full.checkpoint_dir, full.checkpoint_dir.parent / exp, variant.resume_from,
                           drop_loader_state=not loader_state)
        return self._run(key, variant, exp, resume=True)


@pytest.fixture(scope="module")
def shared_assets(datasets, tree_norm_stats):
    import openpi.training.config as _config

    stats_dir = tree_norm_stats("seed_multi_stats", libero(repo_id=FORK_REPO))
    return _config.AssetsConfig(assets_dir=str(stats_dir), asset_id=FORK_REPO)


@pytest.fixture(scope="module")
def runs(shared_assets, assets_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"train_scripts_{TREE}")
    configs = folder / "seed_train_configs.py"
    configs.write_text(configs_source(ALL_VARIANTS, repos=REPOS, weights=WEIGHTS,
                                      assets_dir=shared_assets.assets_dir, asset_id=shared_assets.asset_id,
                                      assets_base=assets_dir, checkpoint_base=folder / "checkpoints"))
    yield Runs(folder, configs, Path(shared_assets.assets_dir) / shared_assets.asset_id)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # GBs of model and optimizer state


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_train_script_runs_unchanged_on_fastmix(runs, variant):
    """Every step 0..N-1 trained once, on a batch of openpi's shape (batch 2, action horizon 4, openpi's 32
    action dims, three 224x224 cameras), with a finite loss; JAX batches carry the script's own data sharding."""
    full = runs.full(variant)
    assert sorted(full.steps) == list(range(variant.steps)), full.output[-3000:]
    for step, entry in full.steps.items():
        assert math.isfinite(entry["loss"]), f"step {step}: loss {entry['loss']}"
        assert entry["shapes"]["actions"] == [2, 4, 32] and entry["shapes"]["state"] == [2, 32], entry["shapes"]
        images = {k: v for k, v in entry["shapes"].items() if k.startswith("image/")}
        assert len(images) == 3 and all(v[0] == 2 and 224 in v for v in images.values()), images
        if variant.framework == "jax":
            assert entry["all_data_sharding"], f"step {step}: a batch leaf is not on the script's data sharding"
            assert entry["sharding"] == entry["data_sharding"] == "PartitionSpec(('batch', 'fsdp'),)", entry
    digests = [full.steps[s]["digest"] for s in range(variant.steps)]
    assert len(set(digests)) == len(digests), "a batch repeated within the first steps of a shuffled stream"


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_checkpoint_assets_hold_norm_stats_and_loader_state(runs, variant):
    """The checkpoints the script's own rules give (`Variant.checkpoints`); each one's assets hold the config's norm stats
    (openpi's `normalize.load` reads them back equal) and fastmix's loader state after the batches trained."""
    import openpi.shared.normalize as _normalize

    from fastmix.openpi.resume import checkpoint_steps, read_state

    full = runs.full(variant)
    steps = checkpoint_steps(full.checkpoint_dir)
    assert steps == variant.checkpoints, steps
    expected = _normalize.load(runs.stats)
    for step in steps:
        saved = _normalize.load(full.checkpoint_dir / str(step) / "assets" / FORK_REPO)
        assert sorted(saved) == sorted(expected)
        for key in expected:
            for field in ("mean", "std", "q01", "q99"):
                np.testing.assert_array_equal(getattr(saved[key], field), getattr(expected[key], field))
        state = read_state(full.checkpoint_dir / str(step))
        assert state is not None and state["step"] == step
        assert state["batches"] == variant.batches_trained(step), state["batches"]


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_resumed_run_continues_the_data_stream(runs, variant):
    """Resumed from checkpoint k (later checkpoints removed), the run trains steps first..N-1 on exactly the
    batches the uninterrupted run trained those steps on; JAX: with the same losses (model state restored)."""
    full, resumed = runs.full(variant), runs.resumed(variant)
    first = variant.batches_trained(variant.resume_from)
    assert sorted(resumed.steps) == list(range(first, variant.steps)), resumed.output[-3000:]
    for step in resumed.steps:
        assert resumed.steps[step]["digest"] == full.steps[step]["digest"], \
            f"step {step}: the resumed run trained on another batch than the uninterrupted run"
        if variant.framework == "jax":  # train.py folds the step into its rng; train_pytorch.py's torch rng
            # (noise, time) is not in its checkpoint, so its losses differ after a resume
            np.testing.assert_allclose(resumed.steps[step]["loss"], full.steps[step]["loss"], rtol=1e-5)
        assert math.isfinite(resumed.steps[step]["loss"])
    assert f"data stream resumed from checkpoint {resumed.checkpoint_dir / str(variant.resume_from)}" \
        in resumed.output, resumed.output[-3000:]


def check_resume_without_loader_state(runs, variant):
    """A checkpoint without fastmix's loader state (as openpi alone writes it): the resume warns and the stream
    starts again, so the resumed steps train on batches 0, 1, ... of the run (already trained on)."""
    full = runs.full(variant)
    restarted = runs.resumed(variant, loader_state=False)
    first = variant.batches_trained(variant.resume_from)
    assert "holds no fastmix loader state" in restarted.output
    assert sorted(restarted.steps) == list(range(first, variant.steps))
    for i, step in enumerate(sorted(restarted.steps)):
        assert restarted.steps[step]["digest"] == full.steps[i]["digest"], \
            f"resumed step {step} did not retrain batch {i}"
    from fastmix.openpi.resume import read_state

    last = variant.checkpoints[-1]  # saved by the resumed run: its loader state counts from the restored step
    assert read_state(restarted.checkpoint_dir / str(last))["batches"] == variant.batches_trained(last)


if SLOW:  # one more resumed run per variant; CI measures openpi's own loader instead (the test below)
    @pytest.mark.timeout(3600)
    @pytest.mark.parametrize("variant", [JAX, PYTORCH], ids=["jax", "pytorch"])
    def test_without_loader_state_a_resume_replays_the_stream(runs, variant):
        check_resume_without_loader_state(runs, variant)


def test_openpis_own_loader_restarts_its_stream(datasets, shared_assets, assets_dir):
    """openpi's own loader (un-patched, one LeRobot dataset) built again as a resumed run builds it: its batches
    are batches 0, 1, ... of the first run again (restore_state never sees it): a resume replays them."""
    from tests.seed.pipelines import openpi_batches
    from tests.seed.seed_data import openpi_train_config

    config = openpi_train_config("seed_train_openpi_replay", libero(repo_id=FORK_REPO, assets=shared_assets),
                                 assets_dir, batch_size=2, num_workers=0)
    first = openpi_batches(config, framework="pytorch", num_batches=6, shuffle=True)
    again = openpi_batches(config, framework="pytorch", num_batches=6, shuffle=True)
    for i, (a, b) in enumerate(zip(first, again, strict=True)):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"batch {i} {key}")
    assert not all(np.array_equal(first[0]["actions"], f["actions"]) for f in first[1:])


def test_the_trees_train_the_same_way():
    """The fork's and upstream's train scripts and checkpoint module are the same code but for one wandb line
    (so the hooks meet the same code on both trees)."""
    import difflib

    fork, upstream = tree_dir("fork"), tree_dir("upstream")
    for path in ("scripts/train.py", "scripts/train_pytorch.py", "src/openpi/training/checkpoints.py"):
        a = (fork / path).read_text().splitlines()
        b = (upstream / path).read_text().splitlines()
        changed = [line for line in difflib.unified_diff(a, b, n=0, lineterm="")
                   if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        allowed = ["-            entity=config.wandb_entity,"] if path == "scripts/train.py" else []
        assert changed == allowed, f"{path} differs between the trees: {changed}"
