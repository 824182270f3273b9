"""A mixture of data configs (three robots of different schemas) against a one-schema mixture of the same
decode cost, and against one lerobot loader per robot run side by side. Group "mixture of configs B=32".

Data (written once by lerobot's writer, cached under $FASTMIX_BENCH_DATA/robots): three robots, each 3 x 60
frames, two 256x256 AV1 cameras (the same decode cost per row), but different keys, vector sizes and fps:

    arm      image, wrist_image; state (8), actions (7); 10 fps
    biarm    observation.images.top, observation.images.wrist; observation.state (14), action (14); 50 fps
    droid    exterior_image_1_left, wrist_image_left; joint_position (7), gripper_position (1), actions (8); 15 fps

and two copies of `arm` (arm_2, arm_3) for the one-schema mixture. Every entry maps its keys to LIBERO's with a
batched `RepackTransform` (droid: a batched concat of joint + gripper) and runs fastmix's `LiberoInputs`, its own
norm stats, the model transforms (resize to 224x224 — done at decode time —, pad to action_dim 32); pi0,
action_horizon 10 at each robot's fps; equal shares (per_dataset). Rows (samples/s; the batches handed out,
transformed, as `DataLoader.batches()` yields them, uint8 BHWC images):

* heterogeneous (primary) — `create_data_loader` of a `MixtureDataConfig(datasets=[arm, biarm, droid])`, 2 workers;
* homogeneous — `create_data_loader` of a `MultiDatasetLiberoDataConfig(repo_ids=[arm, arm_2, arm_3])`, 2 workers
  (the same decode work per row, one schema, the existing single-group path); the goal is heterogeneous >= 0.9x;
* side by side — one torch `DataLoader` per robot over lerobot's `LeRobotDataset` (video_backend="pyav") with
  that robot's transforms applied per sample (as openpi's `TransformedDataset` does), batch 11/11/10, 2 workers
  each (openpi's default), iterated in turn: 32 samples per step.

Run: python -m pytest benchmarks/bench_mixture_config.py --benchmark-enable -o python_files='bench_*.py' -q
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.conftest import bench_data_dir
from fastmix.openpi import transforms as T

QUICK = os.environ.get("FASTMIX_BENCH_QUICK", "") not in ("", "0")
BATCH, HORIZON, WORKERS, ACTION_DIM = 32, 10, 2, 32
ROUNDS = 2 if QUICK else 3
BATCHES = 6 if QUICK else 20  # per round
EPISODES, LENGTH = 3, 60
GROUP = f"mixture of configs B={BATCH}"
ROBOT_REPACK = {
    "arm": {"observation/image": "image", "observation/wrist_image": "wrist_image", "observation/state": "state",
            "actions": "actions", "prompt": "prompt"},
    "biarm": {"observation/image": "observation.images.top", "observation/wrist_image": "observation.images.wrist",
              "observation/state": "observation.state", "actions": "action", "prompt": "prompt"},
    "droid": {"observation/image": "exterior_image_1_left", "observation/wrist_image": "wrist_image_left",
              "observation/joint": "joint_position", "observation/gripper": "gripper_position",
              "actions": "actions", "prompt": "prompt"},
}


def schemas() -> dict[str, Any]:
    from fastmix.testing.robots import RobotSchema

    cam = (256, 256, 3)
    return {"arm": RobotSchema({"image": cam, "wrist_image": cam}, {"state": 8, "actions": 7}, fps=10),
            "biarm": RobotSchema({"observation.images.top": cam, "observation.images.wrist": cam},
                                 {"observation.state": 14, "action": 14}, fps=50),
            "droid": RobotSchema({"exterior_image_1_left": cam, "wrist_image_left": cam},
                                 {"joint_position": 7, "gripper_position": 1, "actions": 8}, fps=15)}


def ensure_robots() -> Path:
    """The cached home holding `bench/<robot>` for arm, biarm, droid, arm_2, arm_3, and `assets/<robot>`."""
    from fastmix.openpi import norm_stats as ns
    from fastmix.testing.robots import make_robot_dataset

    home = bench_data_dir() / "robots"
    spec = {"episodes": EPISODES, "length": LENGTH, "schemas": {k: repr(v) for k, v in schemas().items()}}
    marker = home / "fastmix_bench.json"
    try:
        if json.loads(marker.read_text(encoding="utf-8")) == spec:
            return home
    except (OSError, ValueError):
        pass
    shutil.rmtree(home, ignore_errors=True)
    home.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".robots-", dir=home.parent))
    try:
        for seed, (robot, schema) in enumerate(schemas().items()):
            make_robot_dataset(tmp / "bench" / robot, f"bench/{robot}", schema, num_episodes=EPISODES,
                               episode_length=LENGTH, seed=seed)
        for copy in ("arm_2", "arm_3"):
            shutil.copytree(tmp / "bench" / "arm", tmp / "bench" / copy)
        rng = np.random.default_rng(0)
        for robot, (sd, ad) in {"arm": (8, 7), "biarm": (14, 14), "droid": (8, 8)}.items():
            def stats(d: int) -> Any:
                return ns.NormStats(mean=rng.normal(size=d).astype(np.float32),
                                    std=(rng.random(d) + 0.5).astype(np.float32),
                                    q01=-np.ones(d, np.float32), q99=np.ones(d, np.float32))
            ns.save(tmp / "assets" / robot, {"state": stats(sd), "actions": stats(ad)})
        (tmp / "fastmix_bench.json").write_text(json.dumps(spec), encoding="utf-8")
        tmp.rename(home)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return home


@dataclasses.dataclass(frozen=True)
class JointGripper(T.Transform):
    """observation/state = concat(joint, gripper), per sample or on a batch (the default `batch`)."""

    def __call__(self, d: dict) -> dict:
        out = {k: v for k, v in d.items() if k not in ("observation/joint", "observation/gripper")}
        grip, joint = np.asarray(d["observation/gripper"]), np.asarray(d["observation/joint"])
        grip = grip[..., None] if grip.ndim < joint.ndim else grip
        out["observation/state"] = np.concatenate([joint, grip], axis=-1)
        return out

    def pixel_effect(self) -> T.PixelEffect:
        return T.PixelEffect.KEEP


def robot_config(home: Path, robot: str, repo: str | None = None) -> Any:
    """A data config factory for `robot`: batched repack to LIBERO's keys, then fastmix's LIBERO transforms."""
    from fastmix.openpi.config import AssetsConfig, DataConfig, LeRobotLiberoDataConfig

    @dataclasses.dataclass(frozen=True)
    class RobotConfig(LeRobotLiberoDataConfig):
        def create(self, assets_dirs, model_config):
            dc = super().create(assets_dirs, model_config)
            extra = [JointGripper()] if robot == "droid" else []
            keys = ("action",) if robot == "biarm" else dc.action_sequence_keys
            return dataclasses.replace(dc, action_sequence_keys=keys, repack_transforms=T.Group(
                inputs=[T.RepackTransform(ROBOT_REPACK[robot]), *extra]))

    return RobotConfig(repo_id=repo or f"bench/{robot}", assets=AssetsConfig(str(home / "assets"), robot),
                       lerobot_home=str(home), base_config=DataConfig(prompt_from_task=True))


def train_config(home: Path, data: Any) -> Any:
    from fastmix.openpi.config import Pi0Config, TrainConfig

    return TrainConfig(name="bench_mixture", model=Pi0Config(action_dim=ACTION_DIM, action_horizon=HORIZON), data=data,
                       batch_size=BATCH, num_workers=WORKERS, seed=0, assets_base_dir=str(home / "assets"))


def heterogeneous(home: Path) -> Any:
    from fastmix import MixtureDataConfig

    return MixtureDataConfig(datasets=[robot_config(home, r) for r in ("arm", "biarm", "droid")],
                             weighting="per_dataset")


def homogeneous(home: Path) -> Any:
    from fastmix.openpi.config import AssetsConfig, DataConfig, MultiDatasetLiberoDataConfig

    return MultiDatasetLiberoDataConfig(repo_ids=["bench/arm", "bench/arm_2", "bench/arm_3"], weighting="per_dataset",
                                        assets=AssetsConfig(str(home / "assets"), "arm"), lerobot_home=str(home),
                                        base_config=DataConfig(prompt_from_task=True))


def run_fastmix(benchmark, home: Path, data: Any, role: str, desc: str, primary: bool = False) -> float:
    from fastmix.loader.slots import leftover_segments
    from fastmix.openpi.data_loader import create_data_loader

    with create_data_loader(train_config(home, data), shuffle=True) as dl:
        it = iter(dl.batches())
        for _ in range(3):  # workers started, containers opened
            batch = next(it)
        assert batch["state"].shape == (BATCH, ACTION_DIM) and batch["image"]["base_0_rgb"].shape[1:] == (224, 224, 3)

        def run() -> int:
            return sum(len(next(it)["state"]) for _ in range(BATCHES))

        benchmark.group = GROUP
        benchmark.extra_info.update(role=role, items=BATCHES * BATCH, unit="samples", format="uint8 BHWC", desc=desc)
        if primary:
            benchmark.extra_info["primary"] = True
        assert benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1) == BATCHES * BATCH
        it.close()
    assert leftover_segments(pid=os.getpid()) == []
    stats = getattr(benchmark, "stats", None)
    return BATCHES * BATCH / stats.stats.mean if stats is not None else float("nan")


_RATES: dict[str, float] = {}


@pytest.fixture(scope="module")
def robots_home() -> Path:
    return ensure_robots()


def test_homogeneous(benchmark, robots_home) -> None:
    _RATES["homogeneous"] = run_fastmix(benchmark, robots_home, homogeneous(robots_home), "fastmix",
                                        "MultiDatasetLiberoDataConfig of 3 one-schema datasets (arm x3), 2 workers")


def test_heterogeneous(benchmark, robots_home) -> None:
    rate = run_fastmix(benchmark, robots_home, heterogeneous(robots_home), "fastmix",
                       "MixtureDataConfig of 3 robots (arm, biarm, droid: other keys, dims, fps), 2 workers",
                       primary=True)
    if "homogeneous" in _RATES:
        benchmark.extra_info["x_homogeneous"] = round(rate / _RATES["homogeneous"], 3)


class PerSample:
    """A robot's dataset with its transforms applied per sample (openpi's `TransformedDataset`)."""

    def __init__(self, dataset: Any, chain: list) -> None:
        self.dataset, self.chain = dataset, chain

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        s = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in self.dataset[i].items()}
        s["prompt"] = s["task"]
        for t in self.chain:
            s = t(s)
        return s


def side_by_side_loaders(home: Path) -> list[Any]:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from torch.utils.data import DataLoader, RandomSampler

    cfg = train_config(home, None)
    loaders = []
    for robot, size in zip(("arm", "biarm", "droid"), (11, 11, 10), strict=True):
        dc = robot_config(home, robot).create(cfg.assets_dirs, cfg.model)
        fps = schemas()[robot].fps
        keys = ["action"] if robot == "biarm" else ["actions"]
        ds = LeRobotDataset(f"bench/{robot}", root=home / "bench" / robot, video_backend="pyav",
                            delta_timestamps={k: [t / fps for t in range(HORIZON)] for k in keys})
        chain = [*dc.repack_transforms.inputs, *dc.data_transforms.inputs,
                 T.Normalize(dc.norm_stats, use_quantiles=dc.use_quantile_norm), *dc.model_transforms.inputs]
        sampler = RandomSampler(range(len(ds)), replacement=True, num_samples=10**7,
                                generator=torch.Generator().manual_seed(0))
        loaders.append(DataLoader(PerSample(ds, chain), batch_size=size, sampler=sampler, num_workers=WORKERS,
                                  multiprocessing_context="spawn", persistent_workers=True, drop_last=True))
    return loaders


def test_side_by_side_lerobot_loaders(benchmark, robots_home) -> None:
    loaders = side_by_side_loaders(robots_home)
    its = [iter(ld) for ld in loaders]
    for it in its:
        next(it)

    def run() -> int:
        n = 0
        for _ in range(BATCHES // 2):
            for it in its:
                n += len(next(it)["state"])
        return n

    benchmark.group = GROUP
    items = (BATCHES // 2) * BATCH
    benchmark.extra_info.update(role="reference", items=items, unit="samples", format="uint8 BHWC",
                                desc="3 lerobot DataLoaders (one per robot, pyav, per-sample transforms, 2 workers "
                                     "each), 11+11+10 samples per step")
    assert benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1) == items


PAIRS = 3 if QUICK else 6


def test_heterogeneous_vs_homogeneous_paired(benchmark, robots_home) -> None:
    """Both loaders open, timed alternately (BATCHES batches each, `PAIRS` pairs): the ratio of each pair's rates,
    whose median is robust to the load of a shared machine drifting between two separate rows."""
    import time

    from fastmix.openpi.data_loader import create_data_loader

    het = create_data_loader(train_config(robots_home, heterogeneous(robots_home)), shuffle=True)
    hom = create_data_loader(train_config(robots_home, homogeneous(robots_home)), shuffle=True)
    try:
        its = {"het": iter(het.batches()), "hom": iter(hom.batches())}
        for it in its.values():
            for _ in range(3):
                next(it)

        def rate(name: str) -> float:
            start = time.perf_counter()
            n = sum(len(next(its[name])["state"]) for _ in range(BATCHES))
            return n / (time.perf_counter() - start)

        def run() -> list[float]:
            ratios = []
            for p in range(PAIRS):
                order = ("het", "hom") if p % 2 == 0 else ("hom", "het")
                rates = {name: rate(name) for name in order}
                ratios.append(rates["het"] / rates["hom"])
            return ratios

        benchmark.group = GROUP
        benchmark.extra_info.update(role="fastmix", items=2 * PAIRS * BATCHES * BATCH, unit="samples",
                                    format="uint8 BHWC", desc=f"heterogeneous and homogeneous alternately, {PAIRS} "
                                    f"pairs of {BATCHES} batches each; extra_info: median and each pair's ratio")
        ratios = benchmark.pedantic(run, rounds=1, iterations=1)
        benchmark.extra_info["pair_ratios"] = [round(r, 3) for r in ratios]
        benchmark.extra_info["median_ratio"] = round(float(np.median(ratios)), 3)
        print(f"\nheterogeneous / homogeneous per pair: {[round(r, 3) for r in ratios]}, median "
              f"{np.median(ratios):.3f}")
    finally:
        het.close()
        hom.close()
