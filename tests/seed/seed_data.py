"""Test material for the seed tests: a stand-in PaliGemma tokenizer, LIBERO-like v2.1 datasets (one written by
the fork's own lerobot, one by `fastmix.testing.v21`), and the fork's own config classes around them.

Runs inside the seed environment (tests/seed/make-env). The v3.0 source of the fastmix-written dataset comes
from lerobot 0.4.4's writer, which lives in the main environment: `FASTMIX_MAIN_PYTHON` (tests/seed/run sets
it) runs `fastmix.testing.synth.make_dataset` there.
"""

from __future__ import annotations

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
    """Point lerobot's and openpi's homes into `work` and switch the hub off (before lerobot or openpi is
    imported: lerobot reads HF_LEROBOT_HOME at import)."""
    os.environ.update(
        HF_LEROBOT_HOME=str(work / "lerobot"),
        OPENPI_DATA_HOME=str(work / "openpi"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )


def write_fork_dataset(root: Path, repo_id: str, *, num_episodes: int, episode_length: int, seed: int,
                       tasks: tuple[str, ...] = FORK_TASKS,
                       camera_shape: tuple[int, int, int] = CAMERA_SHAPE) -> Path:
    """A LIBERO-like v2.1 dataset written by the fork's pinned lerobot (`lerobot.common.datasets`, AV1 video);
    episode e does `tasks[e % len(tasks)]`."""
    from lerobot.common.datasets.lerobot_dataset import LeRobotDataset

    from fastmix.testing.synth import lerobot_features, lowdim_values, synth_frame

    ds = LeRobotDataset.create(
        repo_id=repo_id, fps=FPS, root=root, robot_type="synthetic", use_videos=True,
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


def register_fork_config(config) -> None:
    """Make `config` known to the fork's registry (`openpi.training.config.get_config`)."""
    import openpi.training.config as _config

    _config._CONFIGS_DICT[config.name] = config  # noqa: SLF001 - the fork's registry is a module dict


def fork_compute_norm_stats(config) -> Path:
    """Run the fork's own `scripts/compute_norm_stats.py` on `config` (registered in the fork's registry).

    The script asks for `data_config.repo_id`, which a multi-dataset config does not have: it is given the
    asset id through the script's own `repo_id` override, so it writes `config.assets_dirs / ASSET_ID`."""
    import importlib.util

    register_fork_config(config)
    script = Path(os.environ.get("FASTMIX_SEED_DIR", Path(__file__).resolve().parents[3] / "shared" / "seed"))
    spec = importlib.util.spec_from_file_location("fork_compute_norm_stats",
                                                  script / "openpi" / "scripts" / "compute_norm_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(config.name, repo_id=ASSET_ID)
    return Path(config.assets_dirs) / ASSET_ID / "norm_stats.json"
