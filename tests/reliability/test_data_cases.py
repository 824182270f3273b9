"""Reliability catalogue, data cases: damaged copies of tiny generated datasets (lerobot's writer, v3.0).
Each case asserts the exception type and that the message names the dataset and the file / key / episode /
timestamp at fault; metadata and low-dim problems surface when the source is opened, frame problems when a
frame is read (FrameReader, as a decode worker does)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from fastmix.errors import (
    ConfigError,
    DatasetFormatError,
    DecodeError,
    FastmixError,
    IncompatibleDatasetsError,
    MissingFileError,
)
from fastmix.loader.mixture_loader import MixtureLoader
from fastmix.sources.frames import FrameReader, FrameRequest
from fastmix.sources.lerobot_source import LeRobotSource
from fastmix.testing.fakes import FakeReader, FakeSource

pytestmark = pytest.mark.timeout(60)
DATA = "data/chunk-000/file-000.parquet"
VIDEO = "videos/image/chunk-000/file-000.mp4"


def read_frames(src, rows, tolerance_s=1e-4):
    reqs = src.frame_requests(np.asarray(rows, dtype=np.int64))
    out = {k: np.zeros((len(rows), *src.camera_shape(k)), np.uint8) for k in src.camera_keys}
    with FrameReader(tolerance_s=tolerance_s) as reader:
        reader.read(reqs, out)
    return out


def edit_info(root, fn):
    p = root / "meta" / "info.json"
    info = json.loads(p.read_text())
    fn(info)
    p.write_text(json.dumps(info))


# ------------------------------------------------------------------------------------------- metadata
def test_info_json_missing(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    (root / "meta" / "info.json").unlink()
    with pytest.raises(MissingFileError) as e:
        LeRobotSource("rel/broken", root=root)
    assert "'rel/broken'" in str(e.value) and str(root / "meta" / "info.json") in str(e.value)


def test_info_json_malformed(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    (root / "meta" / "info.json").write_text('{"codebase_version": "v3.0", "fps": ')
    with pytest.raises(DatasetFormatError, match="not valid JSON") as e:
        LeRobotSource("rel/broken", root=root)
    assert "'rel/broken'" in str(e.value) and "info.json" in str(e.value)


def test_info_json_unsupported_version(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    edit_info(root, lambda i: i.update(codebase_version="v1.6"))
    with pytest.raises(DatasetFormatError, match="'v1.6'.*not supported") as e:
        LeRobotSource("rel/broken", root=root)
    assert "'rel/broken'" in str(e.value) and "v3.0" in str(e.value)


# ------------------------------------------------------------------------------------------- low-dim data
def test_missing_parquet(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    (root / DATA).unlink()
    with pytest.raises(MissingFileError) as e:
        LeRobotSource("rel/broken", root=root)
    assert "'rel/broken'" in str(e.value) and str(root / DATA) in str(e.value)


def test_parquet_missing_column(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    t = pq.read_table(root / DATA)
    pq.write_table(t.drop_columns(["state"]), root / DATA)
    with pytest.raises(DatasetFormatError, match="lacks column") as e:
        LeRobotSource("rel/broken", root=root)
    assert "'rel/broken'" in str(e.value) and "state" in str(e.value) and str(root / DATA) in str(e.value)


def test_parquet_wrong_shape(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    edit_info(root, lambda i: i["features"]["state"].update(shape=[9]))  # the file holds 8 per row
    with pytest.raises(DatasetFormatError, match="not the shape") as e:
        LeRobotSource("rel/broken", root=root)
    assert "'rel/broken'" in str(e.value) and "'state'" in str(e.value) and "(9,)" in str(e.value)


# ------------------------------------------------------------------------------------------- video
def test_missing_video_file(tiny_video, copy_ds, no_leaks):
    root = copy_ds(tiny_video)
    (root / VIDEO).unlink()  # partial download
    src = LeRobotSource("rel/broken", root=root)
    with pytest.raises(MissingFileError) as e:
        read_frames(src, [0, 7])
    msg = str(e.value)
    assert "'rel/broken'" in msg and str(root / VIDEO) in msg and "'image'" in msg and "episode" in msg


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_truncated_or_corrupt_mp4(tiny_video, copy_ds, damage, no_leaks):
    root = copy_ds(tiny_video)
    p = root / VIDEO
    data = bytearray(p.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        for i in range(len(data) // 3, len(data)):
            data[i] = (data[i] * 7 + 13) % 256
    p.write_bytes(bytes(data))
    src = LeRobotSource("rel/broken", root=root)
    with pytest.raises(DecodeError) as e:
        read_frames(src, list(range(len(src))))
    msg = str(e.value)
    assert "'rel/broken'" in msg and str(p) in msg and "'image'" in msg and "episode" in msg and "timestamp" in msg


def _request(src, key, timestamp, episode=1):
    return FrameRequest(slot=0, key=key, path=str(src.root / VIDEO), timestamp=timestamp, row=-1,
                        episode=episode, dataset=src.name)


def test_video_shorter_than_episode(tiny_video, no_leaks):
    """A frame requested past the end of the video (as when the mp4 is shorter than its episode)."""
    src = LeRobotSource("rel/tiny_video", root=tiny_video)
    out = {"image": np.zeros((1, *src.camera_shape("image")), np.uint8)}
    with FrameReader() as reader, pytest.raises(DecodeError) as e:
        reader.read([_request(src, "image", 5.0)], out)  # 12 frames at 10 fps: the video ends at 1.1 s
    msg = str(e.value)
    assert "'rel/tiny_video'" in msg and "episode 1" in msg and "5.000000" in msg and VIDEO in msg


def test_timestamp_outside_tolerance(tiny_video, no_leaks):
    src = LeRobotSource("rel/tiny_video", root=tiny_video)
    out = {"image": np.zeros((1, *src.camera_shape("image")), np.uint8)}
    with FrameReader(tolerance_s=1e-4) as reader, pytest.raises(DecodeError, match="tolerance_s") as e:
        reader.read([_request(src, "image", 0.3 + 0.03)], out)  # between frames 3 and 4
    assert "'rel/tiny_video'" in str(e.value) and "0.330000" in str(e.value)
    with FrameReader(tolerance_s=0.04) as reader:  # within a looser tolerance it is the nearest frame
        reader.read([_request(src, "image", 0.3 + 0.03)], out)


# ------------------------------------------------------------------------------------------- mixtures
def test_different_keys_and_shapes_table(no_leaks):
    a = FakeSource("ds_a", state_dim=8)
    b = FakeSource("ds_b", state_dim=9, cameras=("image",))
    with pytest.raises(IncompatibleDatasetsError) as e:
        MixtureLoader([a, b], batch_size=4, num_workers=0, reader_factory=FakeReader)
    lines = str(e.value).splitlines()
    row = {ln.split()[0]: ln for ln in lines[1:]}
    assert "state" in row and "(8,)" in row["state"] and "(9,)" in row["state"]
    assert "wrist_image" in row and "ds_a" in row["wrist_image"] and "ds_b" in row["wrist_image"]


def test_different_dtypes_and_fps_table(tiny_video, tiny_image, copy_ds, no_leaks):
    from fastmix.sources.compat import check_compatible

    root = copy_ds(tiny_video)
    edit_info(root, lambda i: i.update(fps=20))
    a = LeRobotSource("rel/tiny_video", root=tiny_video)
    b = LeRobotSource("rel/fps20", root=root)
    with pytest.raises(IncompatibleDatasetsError) as e:
        check_compatible([a, b])
    msg = str(e.value)
    assert "fps" in msg and "10" in msg and "20" in msg and "rel/fps20" in msg and "rel/tiny_video" in msg
    c = LeRobotSource("rel/tiny_image", root=tiny_image)  # same keys, cameras stored as images not video
    root2 = copy_ds(tiny_image)
    edit_info(root2, lambda i: i["features"]["state"].update(dtype="float64"))
    d = LeRobotSource("rel/state64", root=root2)
    with pytest.raises(IncompatibleDatasetsError) as e:
        check_compatible([c, d])
    assert "state" in str(e.value) and "float64" in str(e.value) and "rel/state64" in str(e.value)


def test_empty_dataset_source(tiny_video, no_leaks):
    with pytest.raises(FastmixError) as e:
        LeRobotSource("rel/empty", root=tiny_video, episodes=[])
    assert "rel/empty" in str(e.value)


def test_empty_dataset_in_mixture(no_leaks):
    with pytest.raises(ConfigError) as e:
        MixtureLoader([FakeSource("ds_a"), FakeSource("empty_ds", num_episodes=0)], batch_size=4, num_workers=0,
                      reader_factory=FakeReader)
    assert "empty_ds" in str(e.value)


def test_one_frame_episodes_and_non_ascii_tasks(tiny_image, no_leaks):
    """tiny_image: 2 episodes of ONE frame each, tasks with accents, an emoji and CJK; image-in-parquet."""
    src = LeRobotSource("rel/tiny_image", root=tiny_image)
    assert len(src) == 2 and src.num_episodes == 2
    want = {"ramasser la tasse à café ☕", "把碗放进抽屉"}
    assert set(src.tasks.values()) == want
    with MixtureLoader([src], batch_size=2, action_horizon=4, num_workers=1, shuffle=False, num_batches=2) as ld:
        seen = []
        for b in ld:
            assert b["actions"].shape == (2, 4, 7)
            pad = b["actions_is_pad"].numpy()
            assert not pad[:, 0].any() and pad[:, 1:].all()  # one real step, the rest padding
            assert set(b["task"]) == want and b["prompt"] == b["task"]
            assert b["image"].shape == (2, 16, 16, 3)
            seen += b["index"].tolist()
    assert sorted(seen) == [0, 0, 1, 1]  # sequential order, each frame once per epoch (2 epochs' worth)
