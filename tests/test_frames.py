"""FrameReader: nearest-frame decoding in one forward pass per file, bounded LRU of open files, pickling,
and errors that name dataset, episode, file, key and timestamp."""

from __future__ import annotations

import pickle
import shutil

import av
import numpy as np
import pytest

from fastmix.errors import DecodeError, MissingFileError
from fastmix.sources import frames as frames_mod
from fastmix.sources.frames import FrameReader, FrameRequest
from fastmix.sources.lerobot_source import LeRobotSource


def all_frames(path) -> np.ndarray:
    """Every frame of an mp4, decoded sequentially from the start (uint8 (N, H, W, C))."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def requests_for(src: LeRobotSource, rows: np.ndarray, key: str) -> list[FrameRequest]:
    return src.frame_requests(rows, [key])


def read(reader: FrameReader, reqs: list[FrameRequest], shape) -> np.ndarray:
    out = {reqs[0].key: np.zeros((len(reqs), *shape), np.uint8)}
    reader.read(reqs, out)
    return out[reqs[0].key]


def test_random_order_requests_equal_sequential_decode(video_ds):
    """Rows of a v3.0 file (8 episodes concatenated) in random order, with duplicates: each frame equals the
    frame at the same position of a plain sequential decode (from_timestamp + timestamp locates it)."""
    src = LeRobotSource(root=video_ds)
    rows = np.random.default_rng(0).integers(0, len(src), 64)
    rows[:3] = [0, len(src) - 1, 0]
    for key in src.video_keys:
        reqs = requests_for(src, rows, key)
        assert len({r.path for r in reqs}) == 1  # one concatenated file
        got = read(FrameReader(max_open_files=1), reqs, src.camera_shape(key))
        expected = all_frames(reqs[0].path)[rows]  # row r is the r-th frame of the file
        assert np.array_equal(got, expected)


def test_one_forward_pass_for_nearby_timestamps(video_ds, monkeypatch):
    """Frames of one episode requested backwards: sorted, then decoded with a single seek."""
    seeks = []
    real_seek = frames_mod._OpenVideo.seek
    monkeypatch.setattr(frames_mod._OpenVideo, "seek", lambda self, t: (seeks.append(t), real_seek(self, t)))
    src = LeRobotSource(root=video_ds)
    rows = np.arange(30, 36)[::-1].copy()
    got = read(FrameReader(), requests_for(src, rows, "image"), src.camera_shape("image"))
    assert len(seeks) == 1 and seeks[0] == pytest.approx(3.0)
    assert np.array_equal(got, all_frames(src.frame_requests(rows[:1], ["image"])[0].path)[rows])


def test_lru_bound_and_pickling(v21_ds):
    src = LeRobotSource(root=v21_ds)
    rows = np.arange(0, len(src), 7)  # spans all 8 per-episode files of each camera
    reader = FrameReader(max_open_files=3)
    out = {k: np.zeros((len(rows), *src.camera_shape(k)), np.uint8) for k in src.camera_keys}
    reader.read(src.frame_requests(rows), out)
    assert reader.num_open == 3
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.num_open == 0 and clone.max_open_files == 3
    again = {k: np.zeros_like(v) for k, v in out.items()}
    clone.read(src.frame_requests(rows), again)
    assert all(np.array_equal(out[k], again[k]) for k in out)
    reader.close()
    clone.close()
    assert reader.num_open == clone.num_open == 0
    with pytest.raises(ValueError):
        FrameReader(max_open_files=0)


def test_missing_video_names_everything(v21_ds, tmp_path):
    root = tmp_path / "partial"
    shutil.copytree(v21_ds, root)
    gone = root / "videos" / "chunk-000" / "wrist_image" / "episode_000002.mp4"
    gone.unlink()
    src = LeRobotSource("org/partial", root=root)
    row = np.array([2 * 30 + 4])
    with pytest.raises(MissingFileError) as e:
        read(FrameReader(), src.frame_requests(row, ["wrist_image"]), (64, 64, 3))
    msg = str(e.value)
    for part in ("'org/partial'", "episode 2", "'wrist_image'", str(gone), "0.400000 s"):
        assert part in msg
    assert read(FrameReader(), src.frame_requests(row, ["image"]), (64, 64, 3)).shape == (1, 64, 64, 3)


def test_timestamp_outside_the_video_raises(video_ds):
    src = LeRobotSource(root=video_ds)
    good = src.frame_requests(np.array([5]), ["image"])[0]
    reader = FrameReader()
    for t in (good.timestamp + 0.05, 1e4):  # between two frames; past the end
        bad = FrameRequest(0, "image", good.path, t, -1, good.episode, "ds")
        with pytest.raises(DecodeError, match=rf"tolerance_s.*'ds'.*{t:.6f} s"):
            read(reader, [bad], (64, 64, 3))
    assert read(reader, [good], (64, 64, 3)).any()  # the reader still works afterwards
    loose = FrameReader(tolerance_s=0.06)  # a looser tolerance accepts the nearest frame
    assert np.array_equal(read(loose, [FrameRequest(0, "image", good.path, good.timestamp + 0.04, -1, 0, "ds")],
                               (64, 64, 3)), read(reader, [good], (64, 64, 3)))


def test_corrupt_video_raises_decode_error(video_ds, tmp_path):
    src = LeRobotSource(root=video_ds)
    req = src.frame_requests(np.array([3]), ["image"])[0]
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00" * 64 + bytes(range(256)) * 8)
    with pytest.raises(DecodeError, match="corrupt.mp4"):
        read(FrameReader(), [FrameRequest(0, "image", str(bad), req.timestamp, -1, 3, "ds")], (64, 64, 3))


def test_images_in_parquet_and_row_errors(image_ds):
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    src = LeRobotSource(root=image_ds)
    rows = np.array([0, 31, 239, 31])
    reqs = src.frame_requests(rows, ["wrist_image"])
    got = read(FrameReader(max_open_files=1), reqs, (64, 64, 3))
    column = pq.read_table(reqs[0].path, columns=["wrist_image"]).column("wrist_image").to_pylist()
    for b, r in enumerate(rows.tolist()):
        assert np.array_equal(got[b], np.asarray(Image.open(io.BytesIO(column[r]["bytes"])).convert("RGB")))
    with pytest.raises(DecodeError, match="row 100000"):
        read(FrameReader(), [FrameRequest(0, "wrist_image", reqs[0].path, 0.0, 100000, 0, "ds")], (64, 64, 3))
