"""Test fakes (loader tests, the reliability catalogue, benchmarks): a source implementing the LeRobotSource batch
contract with synthetic frames (no files), and a picklable reader with fault injection (raise, SIGKILL,
SIGSTOP, hang; optionally once) for a chosen episode or frame. Light imports (numpy only) so workers start fast.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time
import zlib

import numpy as np

from fastmix.errors import DecodeError
from fastmix.sources.frames import FrameRequest

FakeRequest = FrameRequest  # fake sources emit the real request type


def fake_frame(dataset: str, key: str, row: int, shape: tuple[int, int, int]) -> np.ndarray:
    """The deterministic uint8 HWC frame of (dataset, key, row)."""
    seed = zlib.crc32(f"{dataset}/{key}".encode()) % 251
    h, w, c = shape
    base = (np.arange(h * w * c, dtype=np.int64) + seed * 7 + row * 13) % 256
    return base.astype(np.uint8).reshape(h, w, c)


class FakeSource:
    """An in-memory LIBERO-like source: `num_episodes` x `episode_length` frames, cameras with synthetic
    frames, "state" (state_dim) and "actions" (action_dim) whose values encode (dataset, row).

    Implements the batch path of the LeRobotSource contract (gather_lowdim, tasks_of, frame_requests, ...).
    """

    def __init__(self, name: str, *, num_episodes: int = 4, episode_length: int = 20, fps: int = 10,
                 cameras: tuple[str, ...] = ("image", "wrist_image"), camera_shape: tuple[int, int, int] = (8, 8, 3),
                 state_dim: int = 8, action_dim: int = 7, tasks: tuple[str, ...] = ("pick", "place"),
                 delta_timestamps: dict[str, list[float]] | None = None) -> None:
        self.name = name
        self.root = pathlib.Path("/nonexistent") / name
        self.num_episodes = num_episodes
        self.episode_length = episode_length
        self.num_frames = num_episodes * episode_length
        self.fps = fps
        self.camera_keys = list(cameras)
        self.video_keys = list(cameras)
        self.image_keys: list[str] = []
        self._shape = tuple(camera_shape)
        self.lowdim_keys = ["state", "actions"]
        self._dims = {"state": state_dim, "actions": action_dim}
        self.tasks = dict(enumerate(tasks))
        self.delta_timestamps = delta_timestamps
        self.codebase_version = "v3.0"
        self.features = {k: {"dtype": "video", "shape": list(camera_shape)} for k in cameras}
        self.features.update({k: {"dtype": "float32", "shape": [d]} for k, d in self._dims.items()})
        self.stats: dict[str, dict[str, np.ndarray]] = {}
        self._offset = zlib.crc32(name.encode()) % 1000

    def __len__(self) -> int:
        return self.num_frames

    def camera_shape(self, key: str) -> tuple[int, int, int]:
        return self._shape  # type: ignore[return-value]

    def frame_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(episode_index, frame_index) int64 (num_frames,) of every local row (`LeRobotSource.frame_positions`)."""
        rows = np.arange(self.num_frames, dtype=np.int64)
        return rows // self.episode_length, rows % self.episode_length

    def value(self, key: str, rows: np.ndarray) -> np.ndarray:
        """float32 (n, dim): row r of `key` is offset + r + j/100 in column j."""
        dim = self._dims[key]
        scale = 1.0 if key == "state" else -1.0
        return (scale * (self._offset + rows[:, None] + np.arange(dim)[None, :] / 100.0)).astype(np.float32)

    def gather_lowdim(self, local: np.ndarray, delta_timestamps: dict[str, list[float]] | None = None):
        local = np.asarray(local, dtype=np.int64)
        dts = self.delta_timestamps if delta_timestamps is None else delta_timestamps
        ep = local // self.episode_length
        frame = local % self.episode_length
        out: dict[str, np.ndarray] = {}
        for key in self.lowdim_keys:
            if dts and key in dts:
                steps = np.rint(np.asarray(dts[key], dtype=np.float64) * self.fps).astype(np.int64)
                want = frame[:, None] + steps[None, :]
                clamped = np.clip(want, 0, self.episode_length - 1)
                rows = ep[:, None] * self.episode_length + clamped
                out[key] = self.value(key, rows.ravel()).reshape(*rows.shape, -1)
                out[f"{key}_is_pad"] = (want != clamped)
            else:
                out[key] = self.value(key, local)
        out["timestamp"] = (frame / self.fps).astype(np.float32)
        out["frame_index"] = frame
        out["episode_index"] = ep
        out["index"] = local.copy()
        out["task_index"] = ep % len(self.tasks)
        return out

    def tasks_of(self, local: np.ndarray) -> list[str]:
        return [self.tasks[int(e) % len(self.tasks)] for e in np.asarray(local) // self.episode_length]

    def frame_requests(self, local: np.ndarray, keys: list[str] | None = None) -> list[FakeRequest]:
        keys = self.camera_keys if keys is None else keys
        reqs = []
        for slot, row in enumerate(np.asarray(local, dtype=np.int64).tolist()):
            ep, frame = divmod(row, self.episode_length)
            for key in keys:
                reqs.append(FakeRequest(slot, key, f"fake://{self.name}/{key}/episode_{ep:06d}.mp4",
                                        frame / self.fps, row, ep, self.name))
        return reqs


class FakeReader:
    """Picklable reader for `FakeRequest`s: writes `fake_frame` into `out[key][slot]`.

    Fault injection for (dataset, episode) == `fault_at` (or, with `fault_frame`, for the frame (dataset, row)
    == `fault_frame`): fault="raise" raises DecodeError, "kill" SIGKILLs its
    own process, "stop" SIGSTOPs it (a stopped worker), "hang" sleeps `hang_s`. With `once_marker` (a file path)
    the fault fires only while that file does not exist, and creates it: the first worker to reach the fault
    takes it, later ones (e.g. restarted workers) read normally. `delay_s` sleeps per request (slow decode).
    """

    def __init__(self, max_open_files: int = 16, tolerance_s: float = 1e-4, *, fault: str | None = None,
                 fault_at: tuple[str, int] | None = None, delay_s: float = 0.0, hang_s: float = 3600.0,
                 once_marker: str | None = None, fault_frame: tuple[str, int] | None = None) -> None:
        self.fault, self.fault_at, self.delay_s, self.hang_s = fault, fault_at, delay_s, hang_s
        self.fault_frame = fault_frame
        self.once_marker = once_marker
        self.max_open_files = max_open_files
        self.reads = 0

    def _take_fault(self) -> bool:
        if self.once_marker is None:
            return True
        try:
            os.close(os.open(self.once_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def read(self, requests, out: dict[str, np.ndarray]) -> None:
        for r in requests:
            hit = self.fault_at == (r.dataset, r.episode) or self.fault_frame == (r.dataset, r.row)
            if self.fault and hit and self._take_fault():
                if self.fault == "raise":
                    raise DecodeError(f"injected decode failure: dataset {r.dataset!r}, episode {r.episode}, "
                                      f"file {r.path}, key {r.key!r}, timestamp {r.timestamp:.4f}s")
                if self.fault == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if self.fault == "stop":
                    os.kill(os.getpid(), signal.SIGSTOP)
                if self.fault == "hang":
                    time.sleep(self.hang_s)
            if self.delay_s:
                time.sleep(self.delay_s)
            dst = out[r.key]
            dst[r.slot] = fake_frame(r.dataset, r.key, r.row, dst.shape[1:])
            self.reads += 1

    def close(self) -> None:
        pass


def live_pids(pids: list[int]) -> list[int]:
    """The pids that still name a running process (zombies and vanished ones excluded). Needs psutil."""
    import psutil

    live = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                live.append(pid)
        except psutil.NoSuchProcess:
            pass
    return live


def wait_gone(pids: list[int], within_s: float = 5.0) -> bool:
    """Whether every process of `pids` has ended within `within_s` seconds (polled every 50 ms)."""
    deadline = time.monotonic() + within_s
    while live_pids(pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


__all__ = ["FakeReader", "FakeRequest", "FakeSource", "fake_frame", "live_pids", "wait_gone"]
