"""Test material for the seed tests: a stand-in PaliGemma tokenizer, LIBERO-like v2.1 datasets (one written by
the fork's own lerobot, one by `fastmix.testing.v21`), and the fork's own config classes around them.

Runs inside the seed environment (tests/seed/make-env). The v3.0 source of the fastmix-written dataset comes
from lerobot 0.4.4's writer, which lives in the main environment: `FASTMIX_MAIN_PYTHON` (tests/seed/run sets
it) runs `fastmix.testing.synth.make_dataset` there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np

FPS = 10
CAMERA_SHAPE = (64, 64, 3)
STATE_DIM, ACTION_DIM = 8, 7
# LIBERO's feature names, as the fork's MultiDatasetLiberoDataConfig repacks them.
CAMERAS = ("image", "wrist_image")
FORK_TASKS = ("put the bowl on the plate", "close the top drawer")
FASTMIX_TASKS = ("interpolate between the two poses",)
ASSET_ID = "shared_norm_stats"


def train_tokenizer(path: Path) -> Path:
    """A small SentencePiece model at `path` standing in for PaliGemma's (same interface, other token ids):
    trained on the tasks and on openpi's prompt formats, byte fallback for anything else."""
    import sentencepiece as spm

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [*FORK_TASKS, *FASTMIX_TASKS, "Task: , State: ;", "Action: ", *(" ".join(map(str, range(i, 256, 7)))
                                                                             for i in range(7))]
    corpus = path.with_suffix(".txt")
    corpus.write_text("\n".join(lines * 20) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(path.with_suffix("")), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, bos_id=2, eos_id=1, pad_id=0, unk_id=3,
        hard_vocab_limit=False, minloglevel=2,
    )
    corpus.unlink()
    return path


def offline_environment(work: Path) -> None:
    """Point lerobot's and openpi's homes and fastmix's cache (the low-dim store) into `work` and switch the hub
    off (before lerobot or openpi is imported: lerobot reads HF_LEROBOT_HOME at import)."""
    os.environ.update(
        HF_LEROBOT_HOME=str(work / "lerobot"),
        OPENPI_DATA_HOME=str(work / "openpi"),
        FASTMIX_CACHE=str(work / "fastmix-cache"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )


@dataclasses.dataclass(frozen=True)
class Schema:
    """A robot's LeRobot dataset schema: camera keys (video or image-in-parquet) and float32 vector features."""

    cameras: tuple[str, ...]
    camera_shape: tuple[int, int, int]
    vectors: dict[str, int]
    use_videos: bool
    tasks: tuple[str, ...]

    def features(self) -> dict[str, dict]:
        kind = "video" if self.use_videos else "image"
        feats = {cam: {"dtype": kind, "shape": self.camera_shape, "names": ["height", "width", "channel"]}
                 for cam in self.cameras}
        for key, dim in self.vectors.items():
            feats[key] = {"dtype": "float32", "shape": (dim,), "names": [f"{key}_{i}" for i in range(dim)]}
        return feats


# ALOHA as openpi's LeRobotAlohaDataConfig reads it: four cameras (video), 14-dim state / effort and action.
ALOHA = Schema(
    tuple(f"observation.images.{c}" for c in ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")),
    (64, 96, 3), {"observation.state": 14, "observation.effort": 14, "action": 14}, True,
    ("fold the towel", "uncap the pen"),
)
# DROID as openpi's LeRobotDROIDDataConfig reads it (examples/droid/convert_droid_data_to_lerobot.py): three
# cameras stored as images in the parquet files, joint and gripper positions, 8-dim joint-velocity actions.
DROID = Schema(
    ("exterior_image_1_left", "exterior_image_2_left", "wrist_image_left"),
    (20, 28, 3), {"joint_position": 7, "gripper_position": 1, "actions": 8}, False,
    ("put the marker in the cup", "close the drawer"),
)


def write_schema_dataset(root: Path, repo_id: str, schema: Schema, *, num_episodes: int, episode_length: int,
                         seed: int) -> Path:
    """A v2.1 dataset of `schema` written by the pinned lerobot's own writer (`lerobot.common.datasets`) into
    `<root>.partial`, renamed to `root` once complete (a failed write leaves no `root` behind); episode e does
    `schema.tasks[e % len(schema.tasks)]`. Videos are AV1 (the pinned lerobot's libsvtav1: at least 64x64
    pixels with the seed env's PyAV)."""
    import shutil

    from lerobot.common.datasets.lerobot_dataset import LeRobotDataset

    from fastmix.testing.synth import lowdim_values, synth_frame

    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    ds = LeRobotDataset.create(repo_id=repo_id, fps=FPS, root=partial, robot_type="synthetic",
                               use_videos=schema.use_videos, features=schema.features())
    rng = np.random.default_rng(seed)
    for ep in range(num_episodes):
        vectors = {key: lowdim_values(rng, episode_length, dim) for key, dim in schema.vectors.items()}
        for f in range(episode_length):
            frame = {cam: synth_frame(schema.camera_shape, ep, f, ci) for ci, cam in enumerate(schema.cameras)}
            frame.update({key: values[f] for key, values in vectors.items()})
            frame["task"] = schema.tasks[ep % len(schema.tasks)]
            ds.add_frame(frame)
        ds.save_episode()
    partial.rename(root)
    return root


def write_fork_dataset(root: Path, repo_id: str, *, num_episodes: int, episode_length: int, seed: int,
                       tasks: tuple[str, ...] = FORK_TASKS,
                       camera_shape: tuple[int, int, int] = CAMERA_SHAPE) -> Path:
    """A LIBERO-like v2.1 dataset written by the fork's pinned lerobot (`lerobot.common.datasets`, AV1 video)
    into `<root>.partial`, renamed to `root` once complete; episode e does `tasks[e % len(tasks)]`."""
    import shutil

    from lerobot.common.datasets.lerobot_dataset import LeRobotDataset

    from fastmix.testing.synth import lerobot_features, lowdim_values, synth_frame

    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    ds = LeRobotDataset.create(
        repo_id=repo_id, fps=FPS, root=partial, robot_type="synthetic", use_videos=True,
        features=lerobot_features(CAMERAS, camera_shape, True, STATE_DIM, ACTION_DIM),
    )
    rng = np.random.default_rng(seed)
    for ep in range(num_episodes):
        state = lowdim_values(rng, episode_length, STATE_DIM)
        actions = lowdim_values(rng, episode_length, ACTION_DIM)
        for f in range(episode_length):
            frame = {cam: synth_frame(camera_shape, ep, f, ci) for ci, cam in enumerate(CAMERAS)}
            frame.update(state=state[f], actions=actions[f], task=tasks[ep % len(tasks)])
            ds.add_frame(frame)
        ds.save_episode()
    partial.rename(root)
    return root


def write_fastmix_dataset(root: Path, repo_id: str, work: Path, *, num_episodes: int, episode_length: int,
                          seed: int) -> Path:
    """A LIBERO-like v2.1 dataset written by `fastmix.testing.v21.write_v21` from a v3.0 dataset that lerobot
    0.4.4's writer made (in the main environment, `FASTMIX_MAIN_PYTHON`)."""
    from fastmix.testing.v21 import write_v21

    main_python = os.environ.get("FASTMIX_MAIN_PYTHON")
    if not main_python:
        raise RuntimeError("FASTMIX_MAIN_PYTHON is not set: tests/seed/run sets it to the main environment's "
                           "python (with fastmix[test], whose lerobot writes the v3.0 source)")
    v30 = work / f"{repo_id.replace('/', '_')}_v30"
    args = dict(root=str(v30), repo_id=repo_id, num_episodes=num_episodes, episode_length=episode_length, fps=FPS,
                cameras=list(CAMERAS), camera_shape=list(CAMERA_SHAPE), state_dim=STATE_DIM,
                action_dim=ACTION_DIM, tasks=list(FASTMIX_TASKS), seed=seed)
    code = ("import json, sys; from fastmix.testing.synth import make_dataset; "
            "a = json.loads(sys.argv[1]); a['camera_shape'] = tuple(a['camera_shape']); make_dataset(**a)")
    subprocess.run([main_python, "-c", code, json.dumps(args)], check=True, env={**os.environ, "PYTHONPATH": ""})
    return write_v21(v30, root)


def fork_train_config(name: str, repo_ids: list[str], weights: list[float] | None, assets_base: Path, *,
                      batch_size: int, num_workers: int, pi05: bool = False, action_horizon: int = 4,
                      assets_dir: Path | None = None):
    """The fork's own `TrainConfig` with its `MultiDatasetLiberoDataConfig`, as its COTRAINING_GUIDE writes it.

    Norm stats are read from `assets_dir / "shared_norm_stats"`; `assets_dir` defaults to
    `assets_base / name`, where the fork's `compute_norm_stats.py --repo-id shared_norm_stats` writes them."""
    import openpi.models.pi0_config as pi0_config
    import openpi.training.config as _config

    return _config.TrainConfig(
        name=name,
        model=pi0_config.Pi0Config(pi05=pi05, action_horizon=action_horizon),
        data=_config.MultiDatasetLiberoDataConfig(
            repo_ids=repo_ids,
            dataset_weights=weights,
            base_config=_config.DataConfig(prompt_from_task=True),
            extra_delta_transform=False,
            assets=_config.AssetsConfig(assets_dir=str(assets_dir or assets_base / name), asset_id=ASSET_ID),
        ),
        assets_base_dir=str(assets_base),
        batch_size=batch_size,
        num_workers=num_workers,
        seed=7,
    )


def seed_dir() -> Path:
    """../shared/seed (or $FASTMIX_SEED_DIR): the openpi trees and the lerobot they pin."""
    return Path(os.environ.get("FASTMIX_SEED_DIR", Path(__file__).resolve().parents[3] / "shared" / "seed"))


def tree_dir(tree: str) -> Path:
    """The openpi tree `tree` ("fork" or "upstream") under `seed_dir()`."""
    return seed_dir() / {"fork": "openpi", "upstream": "openpi-upstream"}[tree]


def openpi_train_config(name: str, data, assets_base: Path, *, batch_size: int, num_workers: int,
                        action_horizon: int = 4, pi05: bool = False):
    """The running openpi's own `TrainConfig` (fork or upstream) around the data config factory `data`."""
    import openpi.models.pi0_config as pi0_config
    import openpi.training.config as _config

    return _config.TrainConfig(name=name, model=pi0_config.Pi0Config(pi05=pi05, action_horizon=action_horizon),
                               data=data, assets_base_dir=str(assets_base), batch_size=batch_size,
                               num_workers=num_workers, seed=7)


def register_fork_config(config) -> None:
    """Make `config` known to the running openpi's registry (`openpi.training.config.get_config`); the fork's
    and upstream's registry is the same module dict."""
    import openpi.training.config as _config

    _config._CONFIGS_DICT[config.name] = config  # noqa: SLF001 - openpi's registry is a module dict


def tree_compute_norm_stats(config, tree: str, **kwargs) -> Path:
    """Run the tree's own `scripts/compute_norm_stats.py` (`main(config.name, **kwargs)`) on `config`, which
    it finds in openpi's registry; returns the norm_stats.json it wrote, under `config.assets_dirs / repo_id`
    (the data config's repo id, or `kwargs["repo_id"]`: the fork's script has that override, upstream's not)."""
    import importlib.util

    register_fork_config(config)
    spec = importlib.util.spec_from_file_location(f"{tree}_compute_norm_stats",
                                                  tree_dir(tree) / "scripts" / "compute_norm_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(config.name, **kwargs)
    repo_id = kwargs.get("repo_id") or config.data.create(config.assets_dirs, config.model).repo_id
    return Path(config.assets_dirs) / repo_id / "norm_stats.json"


def fork_compute_norm_stats(config) -> Path:
    """Run the fork's own `scripts/compute_norm_stats.py` on `config` (registered in the fork's registry).

    The script asks for `data_config.repo_id`, which a multi-dataset config does not have: it is given the
    asset id through the script's own `repo_id` override, so it writes `config.assets_dirs / ASSET_ID`."""
    return tree_compute_norm_stats(config, "fork", repo_id=ASSET_ID)
