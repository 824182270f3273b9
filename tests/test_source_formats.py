"""Format handling of LeRobotSource: v2.1 and its v3.0 original give the same samples, metadata (tasks, stats,
episodes), templates from info.json, repo_id resolution, and the errors for bad datasets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fastmix.errors import ConfigError, DatasetFormatError, MissingFileError
from fastmix.sources.lerobot_source import LeRobotSource
from tests.conftest import EPISODE_LENGTH, FPS, NUM_EPISODES, VIDEO_TASKS

ACTION_DTS = {"actions": [t / FPS for t in range(10)]}


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_info(root, **changes):
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


def test_v21_and_its_v30_original_give_the_same_samples(video_ds, v21_ds):
    v30 = LeRobotSource(root=video_ds, delta_timestamps=ACTION_DTS)
    v21 = LeRobotSource(root=v21_ds, delta_timestamps=ACTION_DTS)
    assert (v30.codebase_version, v21.codebase_version) == ("v3.0", "v2.1")
    assert len(v21) == len(v30) == NUM_EPISODES * EPISODE_LENGTH
    assert v21.tasks == v30.tasks and v21.camera_keys == v30.camera_keys and v21.lowdim_keys == v30.lowdim_keys
    for i in range(len(v30)):  # every sample, frames bit-identical (v2.1 videos are remuxed, not re-encoded)
        a, b = v30[i], v21[i]
        assert list(a) == list(b)
        for k in a:
            assert a[k] == b[k] if isinstance(a[k], str) else torch.equal(a[k], b[k]), (i, k)
    local = np.arange(len(v30), dtype=np.int64)
    la, lb = v30.gather_lowdim(local), v21.gather_lowdim(local)
    assert la.keys() == lb.keys() and all(np.array_equal(la[k], lb[k]) for k in la)


def test_v21_stats_aggregate_episode_stats_like_lerobot(video_ds, v21_ds):
    """v2.1 stats are aggregated from episodes_stats.jsonl; they agree with the v3.0 stats.json (which lerobot
    aggregated from the same per-episode stats) and with lerobot's own aggregate_stats."""
    from lerobot.datasets.compute_stats import aggregate_stats

    from fastmix.sources.meta import read_jsonl, stats_to_numpy

    v30, v21 = LeRobotSource(root=video_ds), LeRobotSource(root=v21_ds)
    per_episode = [stats_to_numpy(r["stats"]) for r in read_jsonl(v21_ds / "meta" / "episodes_stats.jsonl", "v21")]
    theirs = aggregate_stats(per_episode)
    for key in ("state", "actions", "image"):
        for stat in ("min", "max", "mean", "std", "count", "q01", "q99"):
            np.testing.assert_allclose(v21.stats[key][stat], theirs[key][stat], rtol=1e-12, err_msg=f"{key}/{stat}")
            np.testing.assert_allclose(v21.stats[key][stat], v30.stats[key][stat], rtol=1e-6, err_msg=f"{key}/{stat}")


def test_metadata(video_ds, image_ds):
    src = LeRobotSource(root=video_ds)
    assert src.name == "video_ds" and src.fps == FPS and src.num_episodes == NUM_EPISODES
    assert src.video_keys == ["image", "wrist_image"] and src.image_keys == []
    assert src.camera_keys == ["image", "wrist_image"] and src.lowdim_keys == ["state", "actions"]
    assert src.camera_shape("wrist_image") == (64, 64, 3)
    assert sorted(src.tasks.values()) == sorted(VIDEO_TASKS)
    assert src.tasks_of(np.array([0, EPISODE_LENGTH, 2 * EPISODE_LENGTH])) == list(VIDEO_TASKS)
    img = LeRobotSource(root=image_ds)
    assert img.image_keys == ["image", "wrist_image"] and img.video_keys == []
    with pytest.raises(KeyError, match="state"):
        src.camera_shape("state")


def test_repo_id_resolves_under_hf_lerobot_home(video_ds, tmp_path, monkeypatch):
    home = tmp_path / "home"
    copy_dataset(video_ds, home / "org" / "libero")
    monkeypatch.setenv("HF_LEROBOT_HOME", str(home))
    src = LeRobotSource("org/libero")
    assert src.name == "org/libero" and src.root == home / "org" / "libero" and len(src) == len(LeRobotSource(root=video_ds))
    with pytest.raises(MissingFileError, match="org/absent"):
        LeRobotSource("org/absent")
    with pytest.raises(ConfigError):
        LeRobotSource()


def test_path_templates_come_from_info_json(v21_ds, tmp_path):
    """Move the v2.1 files to a layout of our own and point data_path/video_path at it."""
    root = tmp_path / "relayout"
    shutil.copytree(v21_ds / "meta", root / "meta")
    for p in (v21_ds / "data").glob("*/*.parquet"):
        dst = root / "frames" / p.name.replace("episode_", "ep-")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
    for p in (v21_ds / "videos").glob("*/*/*.mp4"):
        dst = root / "cams" / p.parent.name / p.name.replace("episode_", "ep-")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
    edit_info(root, data_path="frames/ep-{episode_index:06d}.parquet",
              video_path="cams/{video_key}/ep-{episode_index:06d}.mp4")
    moved, orig = LeRobotSource(root=root), LeRobotSource(root=v21_ds)
    for i in (0, 45, len(orig) - 1):
        assert all(torch.equal(orig[i][k], moved[i][k]) for k in orig[i] if k != "task")


def test_unsupported_version_names_found_and_supported(video_ds, tmp_path):
    root = tmp_path / "old"
    shutil.copytree(video_ds / "meta", root / "meta")
    edit_info(root, codebase_version="v1.6")
    with pytest.raises(DatasetFormatError, match=r"'v1\.6'.*v2\.0, v2\.1, v3\.0"):
        LeRobotSource(root=root)


def test_missing_and_broken_metadata(video_ds, tmp_path):
    root = copy_dataset(video_ds, tmp_path / "broken")
    (root / "meta" / "tasks.parquet").unlink()
    with pytest.raises(MissingFileError, match="tasks.parquet"):
        LeRobotSource(root=root)
    shutil.rmtree(root / "meta" / "episodes")
    (root / "meta" / "info.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="info.json"):
        LeRobotSource(root=root)


def test_missing_data_file_is_named(v21_ds, tmp_path):
    root = copy_dataset(v21_ds, tmp_path / "partial")
    gone = root / "data" / "chunk-000" / "episode_000003.parquet"
    gone.unlink()
    with pytest.raises(MissingFileError, match="episode_000003.parquet"):
        LeRobotSource(root=root)
    assert len(LeRobotSource(root=root, episodes=[0, 1, 2])) == 3 * EPISODE_LENGTH


def test_episode_selection_errors(video_ds):
    with pytest.raises(ConfigError, match=r"\[99\]"):
        LeRobotSource(root=video_ds, episodes=[0, 99])
    src = LeRobotSource(root=video_ds, episodes=[2])
    assert src[0]["episode_index"].item() == 2 and len(src) == EPISODE_LENGTH
    with pytest.raises(IndexError):
        src[EPISODE_LENGTH]
    assert src[-1]["frame_index"].item() == EPISODE_LENGTH - 1


def test_delta_timestamps_errors(video_ds):
    with pytest.raises(ValueError, match="0.15"):  # ConfigError is a ValueError, like lerobot's
        LeRobotSource(root=video_ds, delta_timestamps={"actions": [0.0, 0.15]})
    with pytest.raises(ConfigError, match="nope"):
        LeRobotSource(root=video_ds, delta_timestamps={"nope": [0.0]})
    src = LeRobotSource(root=video_ds)
    with pytest.raises(ConfigError, match="0.05"):
        src.gather_lowdim(np.arange(2), {"actions": [0.05]})


_HOME_PROBE = ("import json, os, sys; sys.path.insert(0, os.getcwd()); "
               "from lerobot.utils.constants import HF_LEROBOT_HOME; "
               "from fastmix.sources.meta import lerobot_home; "
               "print(json.dumps([str(HF_LEROBOT_HOME), str(lerobot_home())]))")


@pytest.mark.parametrize("env", [
    {},
    {"HF_LEROBOT_HOME": "/data/lr"},
    {"HF_LEROBOT_HOME": "~/lr"},
    {"HF_LEROBOT_HOME": ""},
    {"HF_HOME": "/hf"},
    {"HF_HOME": "$FASTMIX_T/hf"},
    {"XDG_CACHE_HOME": "/xdg"},
    {"XDG_CACHE_HOME": "/xdg", "HF_HOME": "/hf2"},
    {"XDG_CACHE_HOME": "/xdg", "HF_HOME": "/hf2", "HF_LEROBOT_HOME": "/lr3"},
], ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()) or "unset")
def test_lerobot_home_matches_lerobot(env):
    """lerobot_home() against lerobot 0.4.4's HF_LEROBOT_HOME (computed at its import) in a fresh process
    with the variables set (the others removed)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    clean = {k: v for k, v in os.environ.items() if k not in ("HF_LEROBOT_HOME", "HF_HOME", "XDG_CACHE_HOME")}
    clean.update(env, FASTMIX_T="/expanded")
    out = subprocess.run([sys.executable, "-c", _HOME_PROBE], env=clean, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    theirs, ours = json.loads(out.stdout.strip().splitlines()[-1])
    assert ours == theirs


def test_every_dtype_lerobot_writes_opens_like_lerobot(tmp_path):
    """Features of each numeric dtype lerobot 0.4.4 writes (float32/64, int32/64, uint8, bool, a scalar and a
    2-D Array2D column, stored as an extension type while `datasets` is imported) pass the dtype check at open,
    and items equal LeRobotDataset's (values, dtypes, shapes)."""
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    feats = {"f32": ("float32", (3,)), "f64": ("float64", (2,)), "i64": ("int64", (2,)), "i32": ("int32", (1,)),
             "b": ("bool", (1,)), "s1": ("float32", (1,)), "u8": ("uint8", (4,)), "m": ("float32", (2, 3))}
    root = tmp_path / "dtypes"
    ds = LeRobotDataset.create(repo_id="t/dtypes", fps=10, root=root, use_videos=False,
                               features={k: {"dtype": d, "shape": s, "names": None} for k, (d, s) in feats.items()})
    rng = np.random.default_rng(0)
    for _ in range(2):
        for _ in range(3):
            frame = {k: (rng.random(s) * 100).astype(d) for k, (d, s) in feats.items()}
            ds.add_frame({**frame, "task": "x"})
        ds.save_episode()
    ds.finalize()
    src = LeRobotSource("t/dtypes", root=root)
    ref = LeRobotDataset("t/dtypes", root=root)
    assert len(src) == len(ref) == 6
    for i in range(6):
        a, b = src[i], ref[i]
        for k in feats:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and bool((a[k] == b[k]).all()), (i, k)
