"""check_compatible: one table with every difference of every dataset, fps included."""

from __future__ import annotations

import json
import shutil

import pytest

from fastmix.errors import ConfigError, IncompatibleDatasetsError
from fastmix.sources.compat import check_compatible
from fastmix.sources.lerobot_source import LeRobotSource


def test_video_and_image_datasets_mix(video_ds, image_ds):
    table = check_compatible([LeRobotSource(root=video_ds), LeRobotSource(root=image_ds)])
    assert "camera 64x64x3" in table and "float32 (8,)" in table and "fps" in table


def test_every_difference_is_listed(video_ds, g1_root, tmp_path):
    # a copy of video_ds with other fps, a wider state, a float64 action and no wrist camera
    root = tmp_path / "other"
    shutil.copytree(video_ds / "meta", root / "meta")
    shutil.copytree(video_ds / "data", root / "data")
    info = json.loads((root / "meta" / "info.json").read_text())
    info["fps"] = 15
    info["features"]["actions"]["dtype"] = "float64"
    del info["features"]["wrist_image"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    other = LeRobotSource.__new__(LeRobotSource)  # metadata only: the data no longer matches info.json
    from fastmix.sources.meta import load_meta

    other.meta, other.name, other._lowdim_keys = load_meta(root, "other"), "other", None
    with pytest.raises(IncompatibleDatasetsError) as e:
        check_compatible([LeRobotSource(root=video_ds), other, LeRobotSource(root=g1_root, episodes=[4])])
    msg = str(e.value)
    lines = {line.split()[0]: line for line in msg.splitlines()[2:]}
    assert "'video_ds'" in msg and "'other'" in msg and "'g1_v21_partial'" in msg
    assert "missing" in lines["wrist_image"] and "float64 (7,)" in lines["actions"]
    assert lines["fps"].split()[1:] == ["10", "15", "30"]
    assert "camera 480x640x3" in lines["observation.images.cam_high"]
    assert "state" in lines and "action" in lines  # G1's keys and ours differ both ways: all rows present
    assert check_compatible([LeRobotSource(root=video_ds)], keys=["state"])  # a key subset
    with pytest.raises(IncompatibleDatasetsError, match="fps"):
        check_compatible([LeRobotSource(root=video_ds), other], keys=["state"])
    check_compatible([LeRobotSource(root=video_ds), other], keys=["state"], check_fps=False)
    with pytest.raises(ConfigError):
        check_compatible([])
