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
