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


def aloha_data(assets=None, cameras=ALOHA_CAMERAS, **fields):
    """The tree's `LeRobotAlohaDataConfig` repacking `cameras` (openpi's AlohaInputs zero-fills absent wrists);
    `fields` (adapt_to_pi, use_delta_joint_actions, ...) as given, else the tree's defaults."""
    import openpi.training.config as _config
    import openpi.transforms as _transforms

    repack = _transforms.RepackTransform({
        "images": {cam: f"observation.images.{cam}" for cam in cameras},
        "state": "observation.state",
        "actions": "action",
    })
    return _config.LeRobotAlohaDataConfig(repo_id=ALOHA_REPO, assets=assets or _config.AssetsConfig(),
                                          default_prompt="fold the towel",
                                          repack_transforms=_transforms.Group(inputs=[repack]), **fields)


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
    assert_runs_batched(config)


def test_aloha_with_a_zero_filled_wrist(schema_datasets, tree_norm_stats, assets_dir):
    """openpi's AlohaInputs zero-fills (mask False) the right wrist camera the repack does not map, and drops
    cam_low; without delta joint actions. fastmix's batched AlohaInputs gives the same bytes with every camera
    decoded straight to 224x224 (the zero fill made at that size)."""
    from tests.seed.seed_data import openpi_train_config

    assets = stats_assets(tree_norm_stats, "seed_aloha_stats", aloha_data(), ALOHA_REPO)
    data = aloha_data(assets, cameras=("cam_high", "cam_low", "cam_left_wrist"), use_delta_joint_actions=False)
    config = openpi_train_config("seed_aloha_zero_wrist", data, assets_dir, batch_size=BATCH, num_workers=2)
    ref = compare(config, "pytorch", frames(ALOHA_REPO) // BATCH)
    assert not ref[0]["image_mask/right_wrist_0_rgb"].any() and ref[0]["image_mask/left_wrist_0_rgb"].all()
    assert ref[0]["image/right_wrist_0_rgb"].max() <= -1 + 1e-6  # openpi's zeros, as [-1, 1] floats
    assert_runs_batched(config)


@pytest.mark.parametrize(("framework", "num_workers"), [("pytorch", 0), ("jax", 2)])
def test_droid(schema_datasets, tree_norm_stats, assets_dir, framework, num_workers):
    from tests.seed.seed_data import openpi_train_config

    assets = stats_assets(tree_norm_stats, "seed_droid_stats", droid_data(), DROID_REPO)
    config = openpi_train_config(f"seed_droid_w{num_workers}", droid_data(assets), assets_dir, batch_size=BATCH,
                                 num_workers=num_workers)
    ref = compare(config, framework, frames(DROID_REPO) // BATCH)
    assert ref[0]["image/base_0_rgb"].std() > 0.1 and not ref[0]["image_mask/right_wrist_0_rgb"].any()
    assert ref[0]["state"][:, 8:].max() == 0 and ref[0]["actions"].shape == (BATCH, 4, 32)
    assert_runs_batched(config)


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


# ------------------------------------------------------------- openpi's DROID / ALOHA transforms, batched


def entry_decodes(loader) -> list[tuple[list, object, bool]]:
    """(stages, decode size, float images) of each entry of a fastmix `DataLoader` (one for a single config)."""
    inner = loader._loader  # noqa: SLF001 - the MixtureLoader behind openpi's protocol
    if inner.groups is None:
        return [(loader.stages, inner.resize_images, inner.image_dtype == "float32")]
    ((_, (mixture,)),) = loader.stages
    return list(zip(mixture.stages, inner._group_sizes, inner._group_floats, strict=True))  # noqa: SLF001


def assert_batched_stages(stages, where: str, size=(224, 224)) -> None:
    """Every transform of `stages` is a fastmix one (none of openpi's left to run per sample), the raw batch's
    cameras are uint8 and the decode size is the model stage's resize."""
    from fastmix.openpi.data_loader import raw_image_dtype
    from fastmix.openpi.transforms import Transform, decode_size

    left = [f"{stage}: {type(t).__module__}.{type(t).__name__}" for stage, ts in stages for t in ts
            if not isinstance(t, Transform) or not type(t).__module__.startswith("fastmix.")]
    assert not left, f"{where}: transforms left per sample: {left}"
    assert raw_image_dtype(stages) == "uint8", where
    assert decode_size(stages) == size, f"{where}: decode size {decode_size(stages)}, want {size}"


def assert_runs_batched(config) -> None:
    """After install(), `config`'s loader runs each entry batched on uint8 frames decoded at 224x224."""
    with fastmix_installed():
        import openpi.training.data_loader as dl

        loader = dl.create_data_loader(config, shuffle=False, num_batches=1, framework="pytorch")
        try:
            for g, (stages, size, floats) in enumerate(entry_decodes(loader)):
                assert_batched_stages(stages, f"{TREE} {config.name} entry {g}")
                assert tuple(size) == (224, 224) and not floats, f"{config.name} entry {g}: {size}, {floats}"
        finally:
            loader.close()


def lerobot_rows(rng, n: int, cameras, hw, vectors: dict, prompts):
    """`n` items as LeRobotDataset gives them (cameras float32 (C, H, W) = uint8 / 255, as lerobot's decoders
    make them) and the same rows as fastmix's loader gives them (uint8 (B, H, W, C), vectors stacked, prompts a
    list). Vector values span [-0.2, 1.2): ALOHA's gripper maps clip on both sides."""
    frames = {c: rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8) for c in cameras}
    vecs = {k: rng.uniform(-0.2, 1.2, (n, *shape)).astype(np.float32) for k, shape in vectors.items()}
    items = [{**{c: np.moveaxis(f[i], -1, 0).astype(np.float32) / np.float32(255) for c, f in frames.items()},
              **{k: v[i].copy() for k, v in vecs.items()}} for i in range(n)]
    rows = {**frames, **vecs}
    if prompts is not None:
        for item, p in zip(items, prompts, strict=True):
            item["prompt"] = p
        rows["prompt"] = list(prompts)
    return items, rows


def _policy_case(case: str, tmp_path):
    """(the tree's data config created for the case, raw items, raw rows) of one transform case."""
    import dataclasses

    import openpi.models.model as _model
    import openpi.models.pi0_config as pi0_config
    import openpi.policies.droid_policy as droid_policy
    import openpi.transforms as _transforms

    rng = np.random.default_rng(sum(map(ord, case)))
    kind, _, variant = case.partition("-")
    if kind == "aloha":
        cameras, fields = {"all": (ALOHA_CAMERAS, {}),
                           "high_only": (("cam_high",), {}),  # openpi's default repack: both wrists zero-filled
                           "no_left": (("cam_high", "cam_low", "cam_right_wrist"), {"adapt_to_pi": False}),
                           "no_delta": (("cam_high", "cam_left_wrist"),
                                        {"adapt_to_pi": False, "use_delta_joint_actions": False})}[variant]
        data = aloha_data(cameras=cameras, **fields).create(tmp_path, pi0_config.Pi0Config())
        items, rows = lerobot_rows(rng, 5, [f"observation.images.{c}" for c in cameras], (48, 64),
                                   {"observation.state": (14,), "observation.effort": (14,), "action": (4, 14)},
                                   None)
        return data, items, rows
    model_type, gripper = variant.split("_gripper_") if "_gripper_" in variant else (variant, "vector")
    data = droid_data().create(tmp_path, pi0_config.Pi0Config(pi05=model_type == "pi05"))
    if model_type == "pi0_fast":  # the FAST tokenizer is not offline: the tree's DroidInputs for FAST alone
        inputs = [droid_policy.DroidInputs(model_type=_model.ModelType.PI0_FAST)]
        data = dataclasses.replace(data, data_transforms=_transforms.Group(inputs=inputs))
    shape = {"vector": (1,), "scalar": ()}[gripper]
    prompts = ["put the marker in the cup", "close the drawer", b"close the drawer", "put the marker in the cup"]
    items, rows = lerobot_rows(rng, 4, ["exterior_image_1_left", "exterior_image_2_left", "wrist_image_left"],
                               (20, 28), {"joint_position": (7,), "gripper_position": shape, "actions": (4, 8)},
                               prompts)
    return data, items, rows


POLICY_CASES = ["aloha-all", "aloha-high_only", "aloha-no_left", "aloha-no_delta", "droid-pi0", "droid-pi05",
                "droid-pi0_fast", "droid-pi05_gripper_scalar"]


@pytest.mark.parametrize("case", POLICY_CASES)
def test_policy_transforms_run_batched_with_the_trees_bytes(tokenizer, case, tmp_path):
    """The tree's own repack and data transforms of `LeRobotAlohaDataConfig` (adapt_to_pi, delta joint actions,
    absent wrist cameras) and `LeRobotDROIDDataConfig` (pi0, pi05, pi0-FAST camera layouts; a scalar gripper)
    applied per sample to LeRobotDataset-format items, against fastmix's batched equivalents on the loader's
    uint8 rows of the same frames: the same keys, dtypes and bytes (images, masks, prompts, and state/actions
    bit for bit, float64 where openpi's AlohaInputs makes them so); and no per-sample transform left."""
    from fastmix.openpi import transforms as T
    from fastmix.openpi.data_loader import transform_stages
    from tests.seed.pipelines import flat_numpy

    data, items, rows = _policy_case(case, tmp_path)
    for t in [*data.repack_transforms.inputs, *data.data_transforms.inputs]:  # openpi's own, per sample
        items = [t(dict(item)) for item in items]
    flat = [flat_numpy(item) for item in items]
    want = {k: [f[k] for f in flat] for k in flat[0]}
    stages = transform_stages(data, skip_norm_stats=True)
    assert_batched_stages(stages, f"{TREE} {case}")
    got = flat_numpy(T.apply_batch([t for name, ts in stages if name in ("repack", "data") for t in ts], rows))
    assert sorted(got) == sorted(want), f"{case}: keys {sorted(got)} vs openpi's {sorted(want)}"
    for key, values in want.items():
        if key == "prompt":
            assert [str(p) for p in got[key]] == [str(p) for p in values], case
            continue
        ref = np.stack(values)
        assert (got[key].dtype, got[key].shape) == (ref.dtype, ref.shape), \
            f"{case} {key}: {got[key].dtype}{got[key].shape} vs openpi's {ref.dtype}{ref.shape}"
        assert np.array_equal(got[key], ref), f"{case} {key}: values differ from openpi's"
