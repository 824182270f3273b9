"""FrameReader: nearest-frame decoding in one forward pass per file, bounded LRU of open files, pickling,
and errors that name dataset, episode, file, key and timestamp."""

from __future__ import annotations

import dataclasses
import pickle
import re
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
    with pytest.raises(MissingFileError, match=r"episode\(s\) \[2\].*episodes=\[0, 1, \*range\(3, 8\)\]"):
        LeRobotSource("org/partial", root=root)  # at open, with the episodes= hint
    src = LeRobotSource("org/partial", root=root, require_videos=False)  # at read time
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


@pytest.mark.parametrize("cache_bytes", [0, 300_000, 256 << 20])
def test_image_row_group_cache_is_bounded_and_exact(image_ds, tmp_path, cache_bytes):
    """The image file rewritten with 8-row row groups; rows in random order with repeats decode to exactly
    what PIL makes of the same row's PNG bytes, and the row-group cache never exceeds its byte bound
    (beyond the one entry being read)."""
    import dataclasses
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    src = LeRobotSource(root=image_ds)
    rows = np.random.default_rng(3).integers(0, len(src), 60)
    reqs = src.frame_requests(rows, ["image"])
    table = pq.read_table(reqs[0].path)
    small = tmp_path / "small_row_groups.parquet"
    pq.write_table(table, small, row_group_size=8)
    reqs = [dataclasses.replace(r, path=str(small)) for r in reqs]
    column = table.column("image").combine_chunks().field("bytes")
    expected = np.stack([np.asarray(Image.open(io.BytesIO(column[r.row].as_py())).convert("RGB")) for r in reqs])
    reader = FrameReader(cache_bytes=cache_bytes)
    got = read(reader, reqs, src.camera_shape("image"))
    assert np.array_equal(got, expected)
    cache = reader._row_groups
    largest = max(e.nbytes for e in cache._entries.values())
    assert cache.nbytes <= max(cache_bytes, largest)
    if cache_bytes == 0:
        assert len(cache._entries) == 1
    if cache_bytes == 256 << 20:
        assert len(cache._entries) == len({(r.row // 8) for r in reqs})  # every row group read exactly once
    assert pickle.loads(pickle.dumps(reader)).cache_bytes == cache_bytes
    reader.close()
    assert cache.nbytes == 0 and reader.num_open == 0
    with pytest.raises(ValueError, match="cache_bytes"):
        FrameReader(cache_bytes=-1)


def test_no_frame_decoded_past_the_requested_one(video_ds):
    """LeRobot's float32 timestamps sit a few ns off the frame's pts; a request for such a timestamp stops at
    the frame it asked for instead of decoding the next one (and still returns the right pixels)."""
    src = LeRobotSource(root=video_ds)
    rows = np.random.default_rng(5).integers(0, len(src), 20)
    frames_all = None
    for row in rows:
        reqs = src.frame_requests(np.array([row]), ["image"])
        reader = FrameReader()
        got = read(reader, reqs, src.camera_shape("image"))
        video = reader._open[reqs[0].path]
        assert abs(video.cur[0] - reqs[0].timestamp) < reader.tolerance_s  # the last frame decoded is the target
        frames_all = all_frames(reqs[0].path) if frames_all is None else frames_all
        assert np.array_equal(got[0], frames_all[row])
        reader.close()


def _hevc_video(path, n: int = 200, fps: int = 30) -> None:
    """An HEVC mp4 with open GOPs (CRA keyframes every 30 frames, 4 B-frames): after a seek to a keyframe the
    frames shown just before it are not decodable, so the first decoded frame can lie past the request."""
    from fractions import Fraction

    from fastmix.testing.synth import synth_frame

    with av.open(str(path), "w") as out:
        st = out.add_stream("libx265", rate=fps)
        st.width, st.height, st.pix_fmt = 128, 96, "yuv420p"
        st.options = {"x265-params": "keyint=30:min-keyint=30:open-gop=1:bframes=4:log-level=error"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(synth_frame((96, 128, 3), 0, i, 0), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)


@pytest.mark.skipif("libx265" not in av.codecs_available, reason="this PyAV build has no HEVC encoder (libx265)")
def test_hevc_open_gop_random_reads_equal_sequential_decode(tmp_path):
    """150 random timestamps, each read by a fresh reader (so each one seeks) and 100 more in one pass: every
    frame equals the sequential decode; lerobot's pyav backend reads the same frames."""
    from lerobot.datasets.video_utils import decode_video_frames

    path = tmp_path / "hevc.mp4"
    _hevc_video(path)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "hevc"
        pts = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    frames = all_frames(path)
    assert len(frames) == len(pts) == 200
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(pts), 150)
    for i in picks.tolist():
        with FrameReader() as reader:
            got = read(reader, [FrameRequest(0, "cam", str(path), pts[i], -1, 0, "hevc")], frames.shape[1:])
        np.testing.assert_array_equal(got[0], frames[i], err_msg=f"frame {i} at {pts[i]:.6f} s")
    batch = rng.integers(0, len(pts), 100)
    reqs = [FrameRequest(s, "cam", str(path), pts[i], -1, 0, "hevc") for s, i in enumerate(batch.tolist())]
    with FrameReader() as reader:
        np.testing.assert_array_equal(read(reader, reqs, frames.shape[1:]), frames[batch])
    ref = decode_video_frames(path, [pts[i] for i in picks[:20].tolist()], 1e-4, backend="pyav")
    assert ref.shape[0] == 20  # lerobot's pyav backend reads them all too


class _NoHook:
    """A reader without the store hook (as a custom reader_factory may build): read(requests, out) only."""

    def __init__(self, inner: FrameReader) -> None:
        self.inner = inner

    def read(self, requests, out) -> None:
        self.inner.read(requests, out)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("kind", ["video", "image"])
def test_store_hook_and_the_float32_reader_stack(video_ds, image_ds, kind):
    """FrameReader hands each decoded uint8 frame to a store hook (it knows nothing of floats); the reader
    stack's float32 readers (`fastmix.loader.readers`) equal the uint8 frames looked up in the unit table —
    straight into the float32 rows through the hook, through a reader without the hook (uint8 scratch rows),
    and resized — with duplicate rows and slots out of order. Factories pickle (they travel to the workers)."""
    from fastmix.kernels.pixels import to_float, unit_table
    from fastmix.kernels.resize import resize_with_pad
    from fastmix.loader.readers import (
        FloatingReader,
        ResizingReader,
        default_reader_factory,
        floating_reader_factory,
        resizing_reader_factory,
    )

    src = LeRobotSource(root=video_ds if kind == "video" else image_ds)
    rows = np.random.default_rng(5).integers(0, len(src), 10)
    rows[3] = rows[7]
    reqs = src.frame_requests(rows, ["image"])
    order = np.random.default_rng(6).permutation(len(reqs))
    reqs = [dataclasses.replace(r, slot=int(s)) for r, s in zip(reqs, order, strict=True)]
    h, w, c = src.camera_shape("image")
    u8 = np.zeros((len(reqs), h, w, c), np.uint8)
    FrameReader().read(reqs, {"image": u8})

    seen = []
    FrameReader().read(reqs, {"image": u8}, store=lambda dest, slot, frame: seen.append((dest is u8, slot, frame)))
    assert sorted(s for _, s, _ in seen) == list(range(len(reqs))) and all(d for d, _, _ in seen)
    assert all(f.dtype == np.uint8 and np.array_equal(f, u8[s]) for _, s, f in seen)

    def floats(reader) -> np.ndarray:
        out = np.full((len(reqs), c, *reader_size(reader)), np.nan, np.float32)
        reader.read(reqs, {"image": out})
        return out

    def reader_size(reader):
        inner = reader.inner if isinstance(reader, FloatingReader) else reader
        return (inner.height, inner.width) if isinstance(inner, ResizingReader) else (h, w)

    want = to_float(u8, unit_table(), chw=True)
    direct = FloatingReader(FrameReader(), unit_table())
    scratch = FloatingReader(_NoHook(FrameReader()), unit_table())
    assert direct._direct and not scratch._direct
    np.testing.assert_array_equal(floats(direct).view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(floats(scratch).view(np.uint32), want.view(np.uint32))

    native = {(src.name, "image"): (h, w, c)}
    want_small = to_float(resize_with_pad(u8, 48, 40), unit_table(), chw=True)
    for inner in (FrameReader(), _NoHook(FrameReader())):
        for size, expected in (((48, 40), want_small), ((h, w), want)):  # resized; already the size
            got = floats(FloatingReader(ResizingReader(inner, *size, native), unit_table()))
            np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    small_u8 = np.zeros((len(reqs), 48, 40, c), np.uint8)
    ResizingReader(FrameReader(), 48, 40, native).read(reqs, {"image": small_u8})  # uint8, slots out of order
    np.testing.assert_array_equal(small_u8, resize_with_pad(u8, 48, 40))

    factory = floating_reader_factory(resizing_reader_factory(default_reader_factory(4, 1e-4), (48, 40), native),
                                      unit_table())
    built = pickle.loads(pickle.dumps(factory))()
    assert isinstance(built, FloatingReader) and built._direct and built.inner.inner.max_open_files == 4
    np.testing.assert_array_equal(floats(built).view(np.uint32), want_small.view(np.uint32))

    with pytest.raises(DecodeError, match=r"float32 output expects \(C, H, W\).*" + re.escape(reqs[0].path)):
        direct.read(reqs[:1], {"image": np.zeros((1, c, w + 1, h), np.float32)})
