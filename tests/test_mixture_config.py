"""`MixtureDataConfig`: three robots of different schemas (LIBERO-like: 2 cameras 256², 8-dim state, 7-dim
actions, 10 fps, video; DROID-like: 3 cameras 180×320 as images in parquet, joint 7 + gripper 1, 8-dim actions,
15 fps; ALOHA-like: 4 cameras 480×640, 14-dim state and actions, 50 fps, video), written with lerobot 0.4.4's
writer, mixed in one stream.

References, never fastmix's mixture itself: each entry's own pipeline for the same frame — lerobot's
`LeRobotDataset(...)[i]` (video_backend="pyav") with the entry's transforms applied per sample, and the entry's
own config through fastmix's single-dataset loader; shares against probabilities computed here with exact
fractions (chi-square); resume against an uninterrupted run.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from fastmix import FrameFilter, MixtureDataConfig
from fastmix.errors import ConfigError
from fastmix.openpi.data_loader import create_data_loader
from tests.mixture_robots import (
    EPISODES,
    HORIZON,
    REPOS,
    assert_same_sample,
    entries,
    reference_sample,
    train_config,
    write_norm_stats,
    write_robots,
)

ROBOTS = ("libero", "droid", "aloha")
FPS = {"libero": 10, "droid": 15, "aloha": 50}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = write_robots(tmp_path_factory.mktemp("robots"))
    write_norm_stats(home / "assets" / "cotrain")
    return home


def mixture(home, weights=(1.0, 2.0, 1.0), weighting="per_sample", **kw) -> MixtureDataConfig:
    e = entries(home)
    return MixtureDataConfig(datasets=[e[r] for r in ROBOTS], dataset_weights=list(weights), weighting=weighting,
                             **kw)


def rows_of(batch: dict, n: int) -> list[dict]:
    """The per-sample dicts of a transformed batch (leaves indexed by row)."""
    def take(tree, i):
        if isinstance(tree, dict):
            return {k: take(v, i) for k, v in tree.items()}
        return tree[i] if isinstance(tree, list) else np.asarray(tree)[i]
    return [take(batch, i) for i in range(n)]


def mixture_rows(home, num_batches=5, num_workers=0, **kw) -> list[tuple[int, int, int, dict]]:
    """(dataset, episode, frame, sample) of every row of `num_batches` shuffled mixture batches."""
    cfg = train_config(home, mixture(home, **kw), num_workers=num_workers)
    out = []
    with create_data_loader(cfg, shuffle=True, num_batches=num_batches, framework="pytorch") as dl:
        for batch, meta in dl.batches(with_meta=True):
            batch = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in batch.items()}
            batch["image"] = {k: v.numpy() for k, v in batch["image"].items()}
            batch["image_mask"] = {k: v.numpy() for k, v in batch["image_mask"].items()}
            for i, s in enumerate(rows_of(batch, len(meta["task"]))):
                out.append((int(meta["dataset_index"][i]), int(meta["episode_index"][i]),
                            int(meta["frame_index"][i]), s))
    return out


def test_every_sample_equals_its_entrys_own_pipeline_on_lerobot(home) -> None:
    """Each row equals LeRobotDataset's item of that frame through the entry's own transforms (per sample):
    its own repack, data transforms, norm stats, action chunk at its own fps, prompt, model transforms."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    got = mixture_rows(home, num_batches=4)
    assert {d for d, *_ in got} == {0, 1, 2}
    cfg = train_config(home, None)
    e = entries(home)
    created = {r: e[r].create(cfg.assets_dirs, cfg.model) for r in ROBOTS}
    datasets = {}
    for d, ep, frame, sample in got:
        robot = ROBOTS[d]
        dc = created[robot]
        if robot not in datasets:
            keys = dc.action_sequence_keys
            datasets[robot] = LeRobotDataset(REPOS[robot], root=home / REPOS[robot], video_backend="pyav",
                                             delta_timestamps={k: [t / FPS[robot] for t in range(HORIZON)]
                                                               for k in keys})
        ds = datasets[robot]
        index = next(i for i in range(len(ds)) if int(ds.hf_dataset[i]["episode_index"]) == ep
                     and int(ds.hf_dataset[i]["frame_index"]) == frame)
        want = reference_sample(dc, ds[index])
        assert_same_sample(sample, want, f"{robot} episode {ep} frame {frame}")


def test_every_sample_equals_its_entrys_own_fastmix_loader(home) -> None:
    """Each row equals the row of the same frame from the entry's own config alone through fastmix's
    single-dataset loader (sequential order over the whole dataset)."""
    got = mixture_rows(home, num_batches=3)
    e = entries(home)
    own = {}
    for d, robot in enumerate(ROBOTS):
        n, lengths = EPISODES[robot]
        total = n * lengths if isinstance(lengths, int) else sum(lengths)
        cfg = train_config(home, e[robot], batch_size=2)
        rows = {}
        with create_data_loader(cfg, shuffle=False, num_batches=total // 2, framework="pytorch") as dl:
            for batch, meta in dl.batches(with_meta=True):
                batch = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in batch.items()}
                for k in ("image", "image_mask"):
                    batch[k] = {c: v.numpy() for c, v in batch[k].items()}
                for i, s in enumerate(rows_of(batch, 2)):
                    rows[(int(meta["episode_index"][i]), int(meta["frame_index"][i]))] = s
        own[d] = rows
    for d, ep, frame, sample in got:
        assert_same_sample(sample, own[d][(ep, frame)], f"{ROBOTS[d]} episode {ep} frame {frame}")


def test_zero_and_two_workers_give_the_same_batches(home) -> None:
    a = mixture_rows(home, num_batches=2, num_workers=0)
    b = mixture_rows(home, num_batches=2, num_workers=2)
    assert [x[:3] for x in a] == [x[:3] for x in b]
    for x, y in zip(a, b, strict=True):
        assert_same_sample(y[3], x[3], f"dataset {x[0]} episode {x[1]} frame {x[2]}")


def test_mixture_config_checks_its_fields(home) -> None:
    e = entries(home)
    with pytest.raises(ConfigError, match="needs datasets"):
        MixtureDataConfig(datasets=[])
    with pytest.raises(ConfigError, match=r"datasets\[1\] is not a data config factory"):
        MixtureDataConfig(datasets=[e["libero"], "robots/droid_like"])
    with pytest.raises(ConfigError, match="length"):
        MixtureDataConfig(datasets=[e["libero"], e["droid"]], dataset_weights=[1.0])
    with pytest.raises(ConfigError, match="weighting must be one of"):
        MixtureDataConfig(datasets=[e["libero"]], weighting="per_robot")
    with pytest.raises(ConfigError, match="frame_filters"):
        MixtureDataConfig(datasets=[e["libero"], e["droid"]], frame_filters=[None])
    inner = MixtureDataConfig(datasets=[e["libero"]])
    with pytest.raises(ConfigError, match="itself a MixtureDataConfig"):
        MixtureDataConfig(datasets=[inner, e["droid"]])
    twice = MixtureDataConfig(datasets=[e["libero"], e["libero"]])
    cfg = train_config(home, twice)
    with pytest.raises(ConfigError, match=r"robots/libero_like.*datasets\[0\] and datasets\[1\]"):
        twice.create(cfg.assets_dirs, cfg.model)


def test_missing_norm_stats_name_the_entry(home) -> None:
    from fastmix.openpi.config import AssetsConfig

    e = entries(home)
    import dataclasses

    droid = dataclasses.replace(e["droid"], assets=AssetsConfig(asset_id="nowhere"))
    cfg = train_config(home, MixtureDataConfig(datasets=[e["libero"], droid]))
    with pytest.raises(ConfigError, match=r"entry 1 \(DroidLikeDataConfig: robots/droid_like\).*[Nn]orm"):
        create_data_loader(cfg, num_batches=1)
