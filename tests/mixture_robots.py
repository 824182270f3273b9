"""Three robots for the cross-embodiment tests: datasets of `fastmix.testing.robots`' schemas (LIBERO-like,
DROID-like, ALOHA-like) and a data config per robot, written here as a user would write their own:

- LIBERO: fastmix's `LeRobotLiberoDataConfig` (batched transforms, decode-time resize);
- DROID / ALOHA: user `DataConfigFactory`s whose policy transforms are plain per-sample callables written for
  LeRobotDataset items (float (C, H, W) images), as openpi's `DroidInputs` / `AlohaInputs` are.

The reference of every test is each entry's own pipeline for one frame: lerobot's `LeRobotDataset(...)[i]`
(video_backend="pyav") with the entry's transforms applied per sample (`reference_sample`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from fastmix.openpi import norm_stats as _ns
from fastmix.openpi import transforms as T
from fastmix.openpi.config import (
    AssetsConfig,
    DataConfig,
    DataConfigFactory,
    LeRobotLiberoDataConfig,
    ModelTransformFactory,
    Pi0Config,
    TrainConfig,
)

REPOS = {"libero": "robots/libero_like", "droid": "robots/droid_like", "aloha": "robots/aloha_like",
         "libero2": "robots/libero_like_2"}
EPISODES = {"libero": (3, 12), "droid": (3, [10, 14, 8]), "aloha": (2, 15), "libero2": (2, 8)}
ALOHA_CAMS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
ACTION_DIM, HORIZON = 32, 4


def write_robots(home: Path) -> Path:
    """The three datasets under `home/<repo_id>` (lerobot 0.4.4's writer) and their norm stats under
    `home/assets/<config name>/<robot>`; returns `home`."""
    from fastmix.testing.robots import ALOHA_LIKE, DROID_LIKE, LIBERO_LIKE, make_robot_dataset

    schemas = {"libero": LIBERO_LIKE, "droid": DROID_LIKE, "aloha": ALOHA_LIKE, "libero2": LIBERO_LIKE}
    for seed, (robot, repo) in enumerate(REPOS.items()):
        n, length = EPISODES[robot]
        make_robot_dataset(home / repo, repo, schemas[robot], num_episodes=n, episode_length=length, seed=seed)
    return home


def write_norm_stats(assets: Path, seed: int = 0) -> None:
    """Norm stats of each robot's asset id (its state / actions dims after its data transforms)."""
    rng = np.random.default_rng(seed)
    for robot, (sd, ad) in {"libero": (8, 7), "droid": (8, 8), "aloha": (14, 14)}.items():
        def stats(d: int) -> _ns.NormStats:
            return _ns.NormStats(mean=rng.normal(size=d).astype(np.float32),
                                 std=(rng.random(d) + 0.5).astype(np.float32),
                                 q01=-np.ones(d, np.float32), q99=np.ones(d, np.float32))
        _ns.save(assets / robot, {"state": stats(sd), "actions": stats(ad)})


def parse_image(img: Any) -> np.ndarray:
    """A LeRobotDataset image (float (C, H, W) in [0, 1]) as uint8 (H, W, C), as openpi's policies parse it."""
    img = np.asarray(img)
    if np.issubdtype(img.dtype, np.floating):
        img = (255 * img).astype(np.uint8)
    if img.shape[0] == 3:
        img = np.moveaxis(img, 0, -1)
    return img


def with_actions_and_prompt(d: dict, out: dict) -> dict:
    """`out` plus the sample's `actions` (as an array) and `prompt`, where `d` has them (openpi's policies)."""
    if "actions" in d:
        out["actions"] = np.asarray(d["actions"])
    if "prompt" in d:
        out["prompt"] = d["prompt"]
    return out


@dataclasses.dataclass(frozen=True)
class DroidLikeInputs:
    """Per sample: two of the three cameras, state = joint (7) + gripper (1); the right wrist slot masked."""

    def __call__(self, d: dict) -> dict:
        base, wrist = parse_image(d["observation/exterior_image_1_left"]), parse_image(d["observation/wrist_image_left"])
        grip = np.atleast_1d(np.asarray(d["observation/gripper_position"]))
        out = {"state": np.concatenate([np.asarray(d["observation/joint_position"]), grip]),
               "image": {"base_0_rgb": base, "left_wrist_0_rgb": wrist, "right_wrist_0_rgb": np.zeros_like(base)},
               "image_mask": {"base_0_rgb": np.True_, "left_wrist_0_rgb": np.True_, "right_wrist_0_rgb": np.False_}}
        return with_actions_and_prompt(d, out)


@dataclasses.dataclass(frozen=True)
class AlohaLikeInputs:
    """Per sample: three of the four cameras, 14-dim state and actions."""

    def __call__(self, d: dict) -> dict:
        im = {k: parse_image(v) for k, v in d["images"].items()}
        out = {"state": np.asarray(d["state"]),
               "image": {"base_0_rgb": im["cam_high"], "left_wrist_0_rgb": im["cam_left_wrist"],
                         "right_wrist_0_rgb": im["cam_right_wrist"]},
               "image_mask": {"base_0_rgb": np.True_, "left_wrist_0_rgb": np.True_, "right_wrist_0_rgb": np.True_}}
        return with_actions_and_prompt(d, out)


@dataclasses.dataclass(frozen=True)
class DroidLikeDataConfig(DataConfigFactory):
    def create(self, assets_dirs: Path, model_config: Any) -> DataConfig:
        repack = T.RepackTransform({"observation/exterior_image_1_left": "exterior_image_1_left",
                                    "observation/wrist_image_left": "wrist_image_left",
                                    "observation/joint_position": "joint_position",
                                    "observation/gripper_position": "gripper_position",
                                    "actions": "actions", "prompt": "prompt"})
        return dataclasses.replace(self.create_base_config(assets_dirs, model_config),
                                   repack_transforms=T.Group(inputs=[repack]),
                                   data_transforms=T.Group(inputs=[DroidLikeInputs()]),
                                   model_transforms=ModelTransformFactory()(model_config))


@dataclasses.dataclass(frozen=True)
class AlohaLikeDataConfig(DataConfigFactory):
    default_prompt: str | None = None

    def create(self, assets_dirs: Path, model_config: Any) -> DataConfig:
        repack = T.RepackTransform({"images": {c: f"observation.images.{c}" for c in ALOHA_CAMS},
                                    "state": "observation.state", "actions": "action"})
        return dataclasses.replace(self.create_base_config(assets_dirs, model_config),
                                   repack_transforms=T.Group(inputs=[repack]),
                                   data_transforms=T.Group(inputs=[AlohaLikeInputs()]),
                                   action_sequence_keys=("action",),
                                   model_transforms=ModelTransformFactory(default_prompt=self.default_prompt)(
                                       model_config))


def entries(home: Path) -> dict[str, DataConfigFactory]:
    """The three entries (each its own asset id), keyed by robot."""
    task = DataConfig(prompt_from_task=True)
    h = str(home)
    return {
        "libero": LeRobotLiberoDataConfig(repo_id=REPOS["libero"], assets=AssetsConfig(asset_id="libero"),
                                          lerobot_home=h, base_config=task),
        "droid": DroidLikeDataConfig(repo_id=REPOS["droid"], assets=AssetsConfig(asset_id="droid"),
                                     lerobot_home=h, base_config=task),
        "aloha": AlohaLikeDataConfig(repo_id=REPOS["aloha"], assets=AssetsConfig(asset_id="aloha"),
                                     lerobot_home=h, default_prompt="fold the towel"),
    }


def nested_libero(home: Path, weights: tuple[float, float] = (1.0, 3.0)) -> Any:
    """A multi-dataset entry: fastmix's `MultiDatasetLiberoDataConfig` over the two LIBERO-like datasets."""
    from fastmix.openpi.config import MultiDatasetLiberoDataConfig

    return MultiDatasetLiberoDataConfig(repo_ids=[REPOS["libero"], REPOS["libero2"]], dataset_weights=list(weights),
                                        assets=AssetsConfig(asset_id="libero"), lerobot_home=str(home),
                                        base_config=DataConfig(prompt_from_task=True))


def frame_counts(robot: str) -> list[int]:
    n, lengths = EPISODES[robot]
    return [lengths] * n if isinstance(lengths, int) else list(lengths)


def train_config(home: Path, data: Any, *, name: str = "cotrain", batch_size: int = 8, num_workers: int = 0,
                 seed: int = 7) -> TrainConfig:
    return TrainConfig(name=name, model=Pi0Config(action_dim=ACTION_DIM, action_horizon=HORIZON), data=data,
                       assets_base_dir=str(home / "assets"), batch_size=batch_size, num_workers=num_workers,
                       seed=seed)


def reference_sample(data_config: Any, item: dict) -> dict:
    """The entry's own pipeline on one LeRobotDataset item: repack, data, Normalize, model transforms, each
    called per sample (openpi's semantics)."""
    import torch

    s = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
    if data_config.prompt_from_task:
        s["prompt"] = s["task"]
    chain = [*data_config.repack_transforms.inputs, *data_config.data_transforms.inputs,
             T.Normalize(data_config.norm_stats, use_quantiles=data_config.use_quantile_norm),
             *data_config.model_transforms.inputs]
    for t in chain:
        s = t(s)
    return s


def assert_same_sample(got: dict, want: dict, where: str) -> None:
    """Equal keys and values (arrays bit for bit, strings equal)."""
    g, w = T.flatten_dict(got), T.flatten_dict(want)
    assert sorted(g) == sorted(w), f"{where}: keys {sorted(g)} != {sorted(w)}"
    for k in w:
        if isinstance(w[k], str):
            assert g[k] == w[k], f"{where}: {k}: {g[k]!r} != {w[k]!r}"
            continue
        a, b = np.asarray(g[k]), np.asarray(w[k])
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {k}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=f"{where}: {k}")
