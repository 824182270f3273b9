"""Material for the seed-environment benchmarks (`bench_*_seed.py`): run with the seed
env's python (tests/seed/make-env: the openpi fork, the lerobot 0cf8648 it pins, format v2.1).

Importing this module points lerobot's and openpi's homes at the benchmark cache (before either is imported):
`$FASTMIX_BENCH_DATA/seed` (default ~/.cache/fastmix/bench/seed), holding

* the end-to-end mixture, written by the fork's own lerobot (v2.1, AV1): "bench_seed/libero_a" (16 episodes x
  60 frames, 2 tasks) and "bench_seed/libero_b" (8 x 60, 1 task), cameras "image" and "wrist_image" 256x256,
  state 8, actions 7, 10 fps: 1,440 frames, 45 batches of 32 per epoch;
* the stand-in PaliGemma tokenizer (tests/seed/seed_data.py: a small SentencePiece model, same interface);
* the mixture's norm stats, written by the fork's own scripts/compute_norm_stats.py.

`e2e_config()` is the fork's own TrainConfig (`MultiDatasetLiberoDataConfig`, pi0, weights [1, 3], batch 32,
2 workers, action horizon 10) over that mixture. Nothing is fetched: the hub is switched off.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tests.seed.seed_data import offline_environment, write_fork_dataset

SEED_DATA = Path(os.environ.get("FASTMIX_BENCH_DATA", Path.home() / ".cache" / "fastmix" / "bench")).expanduser() / "seed"
offline_environment(SEED_DATA)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FASTMIX_SHARED", REPO.parent / "shared"))
G1_ROOT = SHARED / "data" / "g1_v21_partial"
G1_EPISODES = [4, 5, 7, 8, *range(10, 22)]  # the episodes whose videos are present (shared/README.md)

FPS = 10
CAMERA_SHAPE = (256, 256, 3)
CAMERAS = ("image", "wrist_image")
STATE_DIM, ACTION_DIM = 8, 7
# (repo_id, episodes, frames per episode, tasks, seed)
MIXTURE = (
    ("bench_seed/libero_a", 16, 60, ("pick up the black bowl and place it on the plate",
                                     "put the ketchup in the basket"), 0),
    ("bench_seed/libero_b", 8, 60, ("open the top drawer of the cabinet",), 1),
)
WEIGHTS = [1.0, 3.0]
BATCH = 32
WORKERS = 2
HORIZON = 10
MARKER = "fastmix_bench_seed.json"


def seed_versions() -> str:
    """The seed environment's relevant versions, for the report."""
    from importlib.metadata import version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except Exception:  # noqa: BLE001 - reported as missing
            return "missing"

    import platform

    return (f"seed env (python {platform.python_version()}; openpi fork; lerobot {v('lerobot')} = pinned 0cf8648, "
            f"format v2.1; torch {v('torch')}; torchcodec {v('torchcodec')}; av {v('av')}; jax {v('jax')})")


def ensure_mixture() -> dict[str, Path]:
    """{repo_id: root} of the end-to-end mixture under lerobot's home, written when missing or stale."""
    home = SEED_DATA / "lerobot"
    roots = {}
    for repo_id, episodes, length, tasks, seed in MIXTURE:
        root = home / repo_id
        spec = {"repo_id": repo_id, "episodes": episodes, "length": length, "tasks": list(tasks), "seed": seed,
                "fps": FPS, "camera_shape": list(CAMERA_SHAPE), "writer": "fork's lerobot (v2.1)"}
        try:
            fresh = json.loads((root / MARKER).read_text(encoding="utf-8")) == spec
        except (OSError, ValueError):
            fresh = False
        if not fresh:
            tmp = root.with_name(root.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            write_fork_dataset(tmp, repo_id, num_episodes=episodes, episode_length=length, seed=seed, tasks=tasks,
                               camera_shape=CAMERA_SHAPE)
            (tmp / MARKER).write_text(json.dumps(spec, indent=1), encoding="utf-8")
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)  # complete datasets only ever appear under `root`
        roots[repo_id] = root
    return roots


def ensure_tokenizer() -> Path:
    """openpi's PaliGemma tokenizer path, holding the stand-in SentencePiece model (tests/seed/seed_data.py)."""
    from tests.seed.seed_data import train_tokenizer

    path = SEED_DATA / "openpi" / "big_vision" / "paligemma_tokenizer.model"
    return path if path.is_file() else train_tokenizer(path)


def e2e_config(name: str = "bench_seed_e2e") -> Any:
    """The fork's own TrainConfig over the end-to-end mixture, with norm stats (the fork's script) in place."""
    from tests.seed.seed_data import ASSET_ID, fork_compute_norm_stats, fork_train_config

    ensure_tokenizer()
    repo_ids = [m[0] for m in MIXTURE]
    ensure_mixture()
    assets = SEED_DATA / "assets"
    shared = assets / "shared"
    if not (shared / ASSET_ID / "norm_stats.json").is_file():
        source = fork_train_config(f"{name}_norm", repo_ids, WEIGHTS, assets, batch_size=8, num_workers=0,
                                   action_horizon=HORIZON)
        written = fork_compute_norm_stats(source)
        (shared / ASSET_ID).mkdir(parents=True, exist_ok=True)
        shutil.copy(written, shared / ASSET_ID / "norm_stats.json")
    return fork_train_config(name, repo_ids, WEIGHTS, assets, batch_size=BATCH, num_workers=WORKERS,
                             action_horizon=HORIZON, assets_dir=shared)


def time_batches(benchmark: Any, it: Any, *, warmup: int, batches: int, rounds: int, items: int,
                 info: Any) -> None:
    """Time `batches` (Observation, actions) batches of iterator `it` per round, `rounds` rounds, after `warmup`
    batches; `info(fmt)` gives the row's extra_info (fmt: `describe_batch` of the last warm-up batch), `items`
    the samples per round the rows count."""
    for _ in range(warmup):
        obs, actions = next(it)
    fmt = describe_batch(obs, actions)

    def run() -> int:
        n = 0
        for _ in range(batches):
            _obs, actions = next(it)
            n += int(actions.shape[0])
        return n

    benchmark.extra_info.update(info(fmt))
    assert benchmark.pedantic(run, rounds=rounds, iterations=1) == items


def describe_batch(obs: Any, actions: Any) -> str:
    """"images float32 (32, 3, 224, 224) ...": dtype and shape of an (Observation, actions) batch's arrays."""
    def d(x: Any) -> str:
        return f"{str(x.dtype).removeprefix('torch.')} {tuple(x.shape)}"

    cams = ", ".join(f"{k} {d(v)}" for k, v in obs.images.items())
    return (f"Observation images {cams}; state {d(obs.state)}; tokenized_prompt {d(obs.tokenized_prompt)}; "
            f"actions {d(actions)}")


def shutdown_fork_loader(loader: Any) -> str | None:
    """Stop the persistent torch workers of the fork's loader now (not at interpreter exit); returns the error
    text when a worker died at shutdown (decoder workers sometimes abort at exit), else None."""
    torch_loader = getattr(getattr(loader, "_data_loader", None), "torch_loader", None)
    it = getattr(torch_loader, "_iterator", None)
    try:
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()  # noqa: SLF001 - torch keeps the persistent workers' iterator there
    except RuntimeError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------ three robots (bench_mixture_seed.py)
# Written by the fork's own lerobot (v2.1; tests/seed/seed_data.py's writers, 10 fps each): LIBERO-like (cameras
# "image", "wrist_image" 256x256 AV1, state 8, actions 7), DROID-like (three cameras 180x320 stored as PNG in the
# parquet files, joint 7 + gripper 1, actions 8), ALOHA-like (four cameras 480x640 AV1, state / effort / action
# 14). (repo_id, episodes, frames per episode, seed); the schemas are `robot_schemas()`.
ROBOTS = (
    ("bench_seed/robot_libero", 8, 40, 10),
    ("bench_seed/robot_droid", 8, 40, 11),
    ("bench_seed/robot_aloha", 4, 60, 12),
)
ROBOT_WEIGHTS = [1.0, 1.0, 1.0]
ALOHA_CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
ALOHA_PROMPT = "fold the towel"


def robot_schemas() -> dict[str, Any]:
    """{repo_id: tests.seed.seed_data.Schema} of `ROBOTS` (the seed tests' ALOHA / DROID schemas at the issue's
    camera sizes; LIBERO-like as `write_fork_dataset` writes it)."""
    import dataclasses

    from tests.seed.seed_data import ALOHA, DROID, FORK_TASKS, Schema

    libero = Schema(CAMERAS, CAMERA_SHAPE, {"state": STATE_DIM, "actions": ACTION_DIM}, True, FORK_TASKS)
    return {ROBOTS[0][0]: libero, ROBOTS[1][0]: dataclasses.replace(DROID, camera_shape=(180, 320, 3)),
            ROBOTS[2][0]: dataclasses.replace(ALOHA, camera_shape=(480, 640, 3))}


def ensure_robots() -> dict[str, Path]:
    """{repo_id: root} of the three robot datasets under lerobot's home, written when missing or stale."""
    from tests.seed.seed_data import write_schema_dataset

    home = SEED_DATA / "lerobot"
    schemas = robot_schemas()
    roots = {}
    for repo_id, episodes, length, seed in ROBOTS:
        root = home / repo_id
        schema = schemas[repo_id]
        spec = {"repo_id": repo_id, "episodes": episodes, "length": length, "seed": seed, "schema": repr(schema),
                "writer": "fork's lerobot (v2.1)"}
        try:
            fresh = json.loads((root / MARKER).read_text(encoding="utf-8")) == spec
        except (OSError, ValueError):
            fresh = False
        if not fresh:
            shutil.rmtree(root, ignore_errors=True)
            tmp = root.with_name(root.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            write_schema_dataset(tmp, repo_id, schema, num_episodes=episodes, episode_length=length, seed=seed)
            (tmp / MARKER).write_text(json.dumps(spec, indent=1), encoding="utf-8")
            tmp.rename(root)  # complete datasets only ever appear under `root`
        roots[repo_id] = root
    return roots


def robot_entry(repo_id: str, assets: Any = None) -> Any:
    """The fork's own data config factory of a `ROBOTS` dataset: `LeRobotLiberoDataConfig`,
    `LeRobotDROIDDataConfig` (prompts from the tasks) or `LeRobotAlohaDataConfig` (all four cameras repacked,
    a default prompt), with `assets` (an openpi AssetsConfig; None: the default)."""
    import openpi.training.config as _config
    import openpi.transforms as _transforms

    assets = assets or _config.AssetsConfig()
    task = _config.DataConfig(prompt_from_task=True)
    if repo_id == ROBOTS[0][0]:
        return _config.LeRobotLiberoDataConfig(repo_id=repo_id, assets=assets, base_config=task)
    if repo_id == ROBOTS[1][0]:
        return _config.LeRobotDROIDDataConfig(repo_id=repo_id, assets=assets, base_config=task)
    repack = _transforms.RepackTransform({"images": {c: f"observation.images.{c}" for c in ALOHA_CAMERAS},
                                          "state": "observation.state", "actions": "action"})
    return _config.LeRobotAlohaDataConfig(repo_id=repo_id, assets=assets, default_prompt=ALOHA_PROMPT,
                                          repack_transforms=_transforms.Group(inputs=[repack]))


def robot_entries() -> list[Any]:
    """The three entries, each with its own norm stats: the fork's `scripts/compute_norm_stats.py` run on that
    entry alone (once; kept under `$FASTMIX_BENCH_DATA/seed/assets/robots/<repo_id>`)."""
    import openpi.training.config as _config

    from tests.seed.seed_data import openpi_train_config, tree_compute_norm_stats

    ensure_tokenizer()
    ensure_robots()
    base = SEED_DATA / "assets"
    out = []
    for repo_id, *_ in ROBOTS:
        name = "bench_seed_stats_" + repo_id.rsplit("/", 1)[-1]
        config = openpi_train_config(name, robot_entry(repo_id), base, batch_size=8, num_workers=0,
                                     action_horizon=HORIZON)
        if not (Path(config.assets_dirs) / repo_id / "norm_stats.json").is_file():
            tree_compute_norm_stats(config, "fork")
        out.append(robot_entry(repo_id, _config.AssetsConfig(assets_dir=str(config.assets_dirs), asset_id=repo_id)))
    return out


def robot_train_config(name: str, data: Any, batch_size: int) -> Any:
    """The fork's own TrainConfig (pi0, action horizon `HORIZON`, `WORKERS` workers) around `data`."""
    from tests.seed.seed_data import openpi_train_config

    return openpi_train_config(name, data, SEED_DATA / "assets", batch_size=batch_size, num_workers=WORKERS,
                               action_horizon=HORIZON)


def split_batch(batch: int, weights: list[float]) -> list[int]:
    """Rows per entry of a `batch`-row step split by `weights` (largest remainders; sums to `batch`):
    32 by [1, 1, 1] -> [11, 11, 10]."""
    share = [batch * w / sum(weights) for w in weights]
    rows = [int(s) for s in share]
    for i in sorted(range(len(share)), key=lambda i: (rows[i] - share[i], i))[:batch - sum(rows)]:
        rows[i] += 1
    return rows
