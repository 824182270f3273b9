"""Every LeRobot data config of the tree's registry, after `fastmix.openpi.install()`, gives the same batches as
the tree's own loader, on datasets of that config's schema written by the pinned lerobot's own writer:

- `LeRobotAlohaDataConfig` (both trees): four cameras as AV1 video, 14-dim state and action, openpi's
  `AlohaInputs` (adapt_to_pi) with delta joint actions, a default prompt; all four cameras repacked;
- `LeRobotDROIDDataConfig` (both): three cameras stored as images in the parquet files, joint and gripper
  positions, 8-dim actions, openpi's `DroidInputs`, prompts from the tasks;
- `MultiDatasetDROIDDataConfig` (the fork): two DROID datasets, sequential order over their concatenation;
- `LeRobotLiberoDataConfigWithReasoning` (the fork): as evaluated (eval=True) and as trained (eval=False, its
  `ReplacePromptWithReasoning` drawing prompts with Python's `random`, seeded alike for both loaders);
- fastmix's `MultiDatasetLeRobotConfig` around `LeRobotDROIDDataConfig` (both): the two DROID datasets in
  sequential order are the tree's own batches of each dataset's single config in turn.

openpi's per-sample policy transforms (AlohaInputs, DroidInputs, ReplacePromptWithReasoning) run unchanged on
fastmix's rows, which then carry LeRobotDataset's own image format. Norm stats come from the tree's own
`scripts/compute_norm_stats.py`. `test_every_lerobot_config_of_the_registry_is_covered` fails when a tree's
registry uses a LeRobot data config type this file does not test.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.seed.conftest import ALOHA_REPO, DROID_REPO, DROID_REPO_2, FORK_REPO, SCHEMA_EPISODES, TREE
from tests.seed.pipelines import assert_same_batches, fastmix_installed, openpi_batches

BATCH = 6
ALOHA_CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
UPSTREAM_TYPES = {"LeRobotAlohaDataConfig", "LeRobotDROIDDataConfig", "LeRobotLiberoDataConfig"}
FORK_TYPES = {"MultiDatasetLiberoDataConfig", "MultiDatasetDROIDDataConfig", "LeRobotLiberoDataConfigWithReasoning"}


def frames(*repos: str) -> int:
    return sum(SCHEMA_EPISODES[r][0] * SCHEMA_EPISODES[r][1] for r in repos)


def aloha_data(assets=None):
    import openpi.training.config as _config
    import openpi.transforms as _transforms

    repack = _transforms.RepackTransform({
        "images": {cam: f"observation.images.{cam}" for cam in ALOHA_CAMERAS},
        "state": "observation.state",
        "actions": "action",
    })
    return _config.LeRobotAlohaDataConfig(repo_id=ALOHA_REPO, assets=assets or _config.AssetsConfig(),
                                          default_prompt="fold the towel",
                                          repack_transforms=_transforms.Group(inputs=[repack]))


def droid_data(assets=None):
    import openpi.training.config as _config

    return _config.LeRobotDROIDDataConfig(repo_id=DROID_REPO, assets=assets or _config.AssetsConfig(),
                                          base_config=_config.DataConfig(prompt_from_task=True))


def stats_assets(tree_norm_stats, name: str, data, repo_id: str):
    import openpi.training.config as _config

    return _config.AssetsConfig(assets_dir=str(tree_norm_stats(name, data)), asset_id=repo_id)


def compare(config, framework: str, num_batches: int, *, before=None) -> list[dict]:
    """openpi's own batches and the installed fastmix's for `config` (`before()` runs before each pass)."""
    if before:
        before()
    ref = openpi_batches(config, framework=framework, num_batches=num_batches)
    with fastmix_installed():
        if before:
            before()
        got = openpi_batches(config, framework=framework, num_batches=num_batches)
    assert_same_batches(ref, got, f"{TREE} {config.name} {framework}", num_batches)
    return ref


def test_every_lerobot_config_of_the_registry_is_covered():
    """The data config types of the tree's registry that read LeRobot datasets (a repo id other than "fake", or
    repo ids; RLDS configs aside) are exactly the ones tested here: upstream's three, and the fork's three
    more."""
    import openpi.training.config as _config
    import tyro

    found = set()
    for config in _config._CONFIGS_DICT.values():  # noqa: SLF001 - openpi's registry
        data = config.data
        if hasattr(data, "rlds_data_dir"):
            continue  # RLDS (DROID's TFDS format): openpi's own loader, which fastmix leaves alone
        repo_id, repo_ids = getattr(data, "repo_id", None), getattr(data, "repo_ids", None)
        if repo_id not in (None, tyro.MISSING, "fake") or repo_ids not in (None, tyro.MISSING):
            found.add(type(data).__name__)
    assert found == (UPSTREAM_TYPES | FORK_TYPES if TREE == "fork" else UPSTREAM_TYPES)


@pytest.mark.parametrize(("framework", "num_workers"), [("pytorch", 0), ("jax", 2)])
def test_aloha(schema_datasets, tree_norm_stats, assets_dir, framework, num_workers):
    from tests.seed.seed_data import openpi_train_config

    assets = stats_assets(tree_norm_stats, "seed_aloha_stats", aloha_data(), ALOHA_REPO)
    config = openpi_train_config(f"seed_aloha_w{num_workers}", aloha_data(assets), assets_dir, batch_size=BATCH,
                                 num_workers=num_workers)
    ref = compare(config, framework, frames(ALOHA_REPO) // BATCH)
    assert {"image/base_0_rgb", "image/left_wrist_0_rgb", "image/right_wrist_0_rgb"} <= set(ref[0])
    assert ref[0]["image_mask/right_wrist_0_rgb"].all()  # a real right wrist camera, not the zero fill
    assert ref[0]["state"].shape == (BATCH, 32) and ref[0]["actions"].shape == (BATCH, 4, 32)


@pytest.mark.parametrize(("framework", "num_workers"), [("pytorch", 0), ("jax", 2)])
def test_droid(schema_datasets, tree_norm_stats, assets_dir, framework, num_workers):
    from tests.seed.seed_data import openpi_train_config

    assets = stats_assets(tree_norm_stats, "seed_droid_stats", droid_data(), DROID_REPO)
    config = openpi_train_config(f"seed_droid_w{num_workers}", droid_data(assets), assets_dir, batch_size=BATCH,
                                 num_workers=num_workers)
    ref = compare(config, framework, frames(DROID_REPO) // BATCH)
    assert ref[0]["image/base_0_rgb"].std() > 0.1 and not ref[0]["image_mask/right_wrist_0_rgb"].any()
    assert ref[0]["state"][:, 8:].max() == 0 and ref[0]["actions"].shape == (BATCH, 4, 32)


def test_multi_dataset_droid(schema_datasets, tree_norm_stats, assets_dir):
    """The tree's two-DROID-dataset mixture in sequential order (nothing drawn: both walk the concatenation).
    fork: its own MultiDatasetDROIDDataConfig through its own loader (which ignores the weights), before and
    after install(). upstream (no such config): fastmix's MultiDatasetLeRobotConfig around upstream's
    LeRobotDROIDDataConfig against upstream's own DROID dataset and transforms per repo in a torch ConcatDataset
    through upstream's own TorchDataLoader (what an upstream user would build; `tests/seed/references.py`)."""
    import dataclasses

    import openpi.training.config as _config

    from tests.seed.seed_data import openpi_train_config

    n = frames(DROID_REPO, DROID_REPO_2) // BATCH
    assets = stats_assets(tree_norm_stats, "seed_droid_stats", droid_data(), DROID_REPO)
    base = _config.DataConfig(prompt_from_task=True)
    if TREE == "fork":
        data = _config.MultiDatasetDROIDDataConfig(repo_ids=[DROID_REPO, DROID_REPO_2], dataset_weights=[1.0, 2.0],
                                                   assets=assets, base_config=base)
        compare(openpi_train_config("seed_multi_droid", data, assets_dir, batch_size=BATCH, num_workers=0),
                "pytorch", n)
        return
    from fastmix.openpi import MultiDatasetLeRobotConfig
    from tests.seed.references import concat_batches

    data = MultiDatasetLeRobotConfig(repo_ids=[DROID_REPO, DROID_REPO_2], dataset_weights=[1.0, 2.0], assets=assets,
                                     dataset_config=_config.LeRobotDROIDDataConfig(base_config=base))
    config = openpi_train_config("seed_multi_droid", data, assets_dir, batch_size=BATCH, num_workers=0)
    singles = [dataclasses.replace(config, data=_config.LeRobotDROIDDataConfig(repo_id=r, assets=assets,
                                                                               base_config=base))
               for r in (DROID_REPO, DROID_REPO_2)]
    ref = concat_batches(singles, framework="pytorch", num_batches=n)
    with fastmix_installed():
        got = openpi_batches(config, framework="pytorch", num_batches=n)
    assert_same_batches(ref, got, f"{TREE} droid mixture vs ConcatDataset", n)


@pytest.mark.parametrize("evaluating", [True, False])
def test_libero_with_reasoning(datasets, tree_norm_stats, assets_dir, tmp_path, evaluating):
    """Per-sample prompts from the dataset's episode and frame indices, drawn with Python's `random`.
    fork: its own LeRobotLiberoDataConfigWithReasoning; eval=True: LIBERO plus episode/frame indices in the
    repack; eval=False: the reasoning prompts are drawn per sample (its ReplacePromptWithReasoning). upstream
    (no such config): the same as an upstream user writes it, a LeRobotLiberoDataConfig subclass
    (`UpstreamReasoningConfig`) with the indices in its repack and, for eval=False, a per-sample transform
    drawing the prompt (`DrawReasoningPrompt`). Python's `random` seeded alike before each loader: the same
    draws in the same order."""
    import openpi.training.config as _config

    from tests.seed.conftest import EPISODES
    from tests.seed.seed_data import openpi_train_config

    libero = _config.LeRobotLiberoDataConfig(repo_id=FORK_REPO, base_config=_config.DataConfig(prompt_from_task=True))
    assets = stats_assets(tree_norm_stats, "seed_reasoning_stats", libero, FORK_REPO)
    mapping, reasoning = tmp_path / "mapping.json", tmp_path / "reasoning.json"
    mapping.write_text(json.dumps({"mapping": {"0": {"reasonings_task_key": "t", "reasonings_episode_id": 0}}}))
    steps = {str(f): {"subtask": "reach the bowl", "movement": "move left"} for f in range(EPISODES[FORK_REPO][1])}
    reasoning.write_text(json.dumps({"t": {"0": steps}}))  # every frame of episode 0
    kind = _config.LeRobotLiberoDataConfigWithReasoning if TREE == "fork" else upstream_reasoning_config()
    data = kind(repo_id=FORK_REPO, assets=assets, base_config=_config.DataConfig(prompt_from_task=True),
                eval=evaluating, mapping_file_path=str(mapping), reasoning_file_path=str(reasoning))
    config = openpi_train_config(f"seed_reasoning_{'eval' if evaluating else 'train'}", data, assets_dir,
                                 batch_size=BATCH, num_workers=0)
    n = EPISODES[FORK_REPO][0] * EPISODES[FORK_REPO][1] // BATCH
    ref = compare(config, "pytorch", n, before=lambda: random.seed(1234))
    prompts = {tuple(t) for b in ref for t in b["tokenized_prompt"]}
    assert len(prompts) == (2 if evaluating else 4)  # the two tasks; or with the subtask and movement prompts


def upstream_reasoning_config():
    """An upstream user's LIBERO config with reasoning prompts (a `LeRobotLiberoDataConfig` subclass; upstream has
    no `LeRobotLiberoDataConfigWithReasoning`): the repack keeps `episode_index` and `frame_index`; with
    eval=False a per-sample transform (before LiberoInputs, which drops the indices) draws the prompt with Python's
    `random` among the task and, where the reasoning file has that episode's frame, its subtask and movement."""
    import dataclasses
    from typing import Any

    import openpi.training.config as _config
    import openpi.transforms as _transforms

    @dataclasses.dataclass(frozen=True)
    class DrawReasoningPrompt(_transforms.DataTransformFn):
        mapping_file_path: str
        reasoning_file_path: str

        def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
            mapping = json.loads(Path(self.mapping_file_path).read_text())["mapping"]
            texts = json.loads(Path(self.reasoning_file_path).read_text())
            entry = mapping.get(str(int(data["episode_index"])))
            frame = None if entry is None else texts.get(entry["reasonings_task_key"], {}).get(
                str(entry["reasonings_episode_id"]), {}).get(str(int(data["frame_index"])))
            choices = [str(data["prompt"])] + ([frame["subtask"], frame["movement"]] if frame else [])
            return {**data, "prompt": np.asarray(random.choice(choices))}

    @dataclasses.dataclass(frozen=True)
    class UpstreamReasoningConfig(_config.LeRobotLiberoDataConfig):
        mapping_file_path: str | None = None
        reasoning_file_path: str | None = None
        eval: bool = True

        def create(self, assets_dirs, model_config):
            created = super().create(assets_dirs, model_config)
            (repack,) = created.repack_transforms.inputs
            keys = {**repack.structure, "episode_index": "episode_index", "frame_index": "frame_index"}
            inputs = list(created.data_transforms.inputs)
            if not self.eval:
                inputs.insert(0, DrawReasoningPrompt(self.mapping_file_path, self.reasoning_file_path))
            return dataclasses.replace(
                created, repack_transforms=_transforms.Group(inputs=[_transforms.RepackTransform(keys)]),
                data_transforms=_transforms.Group(inputs=inputs, outputs=created.data_transforms.outputs))

    return UpstreamReasoningConfig


def test_droid_mixture_in_openpis_types(schema_datasets, tree_norm_stats, assets_dir):
    """fastmix's `MultiDatasetLeRobotConfig` around openpi's `LeRobotDROIDDataConfig` (the DROID path for a tree
    without a multi-dataset config): in sequential order, the tree's own batches of each DROID dataset's
    single config in turn (18 and 12 frames: batch boundaries on the dataset boundary)."""
    import openpi.training.config as _config

    from fastmix.openpi import MultiDatasetLeRobotConfig
    from tests.seed.seed_data import openpi_train_config

    assets = stats_assets(tree_norm_stats, "seed_droid_stats", droid_data(), DROID_REPO)
    ref = []
    for repo in (DROID_REPO, DROID_REPO_2):
        single = _config.LeRobotDROIDDataConfig(repo_id=repo, assets=assets,
                                                base_config=_config.DataConfig(prompt_from_task=True))
        config = openpi_train_config(f"seed_droid_single_{repo.rsplit('/', 1)[-1]}", single, assets_dir,
                                     batch_size=BATCH, num_workers=0)
        ref += openpi_batches(config, framework="pytorch", num_batches=frames(repo) // BATCH)
    data = MultiDatasetLeRobotConfig(repo_ids=[DROID_REPO, DROID_REPO_2], dataset_weights=[1.0, 2.0],
                                     assets=assets, dataset_config=_config.LeRobotDROIDDataConfig(
                                         base_config=_config.DataConfig(prompt_from_task=True)))
    config = openpi_train_config("seed_droid_mixture", data, assets_dir, batch_size=BATCH, num_workers=2)
    with fastmix_installed():
        got = openpi_batches(config, framework="pytorch", num_batches=frames(DROID_REPO, DROID_REPO_2) // BATCH)
    assert_same_batches(ref, got, f"{TREE} droid mixture", frames(DROID_REPO, DROID_REPO_2) // BATCH)
