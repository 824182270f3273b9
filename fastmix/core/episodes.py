"""`EpisodeRuns`: where the episodes of one dataset lie among its local rows 0..N-1 — what per-episode
weighting and frame filters need to know about a dataset (`fastmix.core.mixture`).

A run is a block of consecutive local rows of one episode whose frame indices are consecutive; a dataset stored
episode after episode in frame order (every LeRobot dataset fastmix opens) has one run per episode, and any
other order is described exactly by more runs. The runs of an episode tile its frames 0..L-1 (checked).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastmix._args import check_int_list
from fastmix.errors import ConfigError


def _int_array(values: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    """`values` as int64 (n,), or ConfigError naming `what` (a 1-D array of integers)."""
    a = np.asarray(values)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise ConfigError(f"{what} must be a 1-D array of integers, got dtype {a.dtype} and shape {a.shape}")
    return a.astype(np.int64, copy=False)


class EpisodeRuns:
    """The episodes of one dataset among its local rows.

    Build with `EpisodeRuns.from_lengths(lengths, episode_ids=None)` (rows hold episode after episode, each
    in frame order) or `EpisodeRuns.from_rows(episode_index, frame_index)` (the episode and frame index of every
    local row, any order).

    Attributes (int64 arrays):
        episode_ids (E,): the episode indices, ascending. lengths (E,): frames of each episode.
        run_episode (R,): position in `episode_ids` of each run. run_frame (R,): frame index of its first row.
        run_start (R,): its first local row. run_length (R,): its rows (>= 1). Runs are in local-row order.
        num_frames: N = Σ lengths. name: the dataset's name (errors name it).
    """

    def __init__(self, episode_ids: np.ndarray, run_episode: np.ndarray, run_frame: np.ndarray,
                 run_start: np.ndarray, run_length: np.ndarray, name: str) -> None:
        self.name = name
        self.episode_ids = episode_ids
        self.run_episode, self.run_frame, self.run_start, self.run_length = run_episode, run_frame, run_start, run_length
        self.lengths = np.bincount(run_episode, weights=run_length, minlength=episode_ids.size).astype(np.int64)
        self.num_frames = int(run_length.sum())
        self._check_tiling()

    @classmethod
    def from_lengths(cls, lengths: Sequence[int] | np.ndarray, episode_ids: Sequence[int] | np.ndarray | None = None,
                     *, name: str = "dataset") -> EpisodeRuns:
        """Episodes stored one after another, each in frame order: episode i has `lengths[i]` >= 1 frames and
        index `episode_ids[i]` (default i; distinct integers >= 0, in any order)."""
        lens = np.array(check_int_list(lengths, f"episode lengths of dataset {name!r}", minimum=1), dtype=np.int64)
        if lens.size == 0:
            raise ConfigError(f"episode lengths of dataset {name!r} must not be empty")
        ids = np.arange(lens.size, dtype=np.int64) if episode_ids is None else np.array(
            check_int_list(episode_ids, f"episode_ids of dataset {name!r}", minimum=0), dtype=np.int64)
        if ids.size != lens.size:
            raise ConfigError(f"episode_ids of dataset {name!r} has {ids.size} entries but there are {lens.size} "
                              "episode lengths")
        uniq, pos = np.unique(ids, return_inverse=True)
        if uniq.size != ids.size:
            dup = sorted(set(ids[np.flatnonzero(np.bincount(pos) > 1)].tolist()))
            raise ConfigError(f"episode_ids of dataset {name!r} repeat episode(s) {dup[:10]}")
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        return cls(uniq, pos.astype(np.int64), np.zeros(lens.size, dtype=np.int64), starts, lens, name)

    @classmethod
    def from_rows(cls, episode_index: Sequence[int] | np.ndarray, frame_index: Sequence[int] | np.ndarray, *,
                  name: str = "dataset") -> EpisodeRuns:
        """From the episode index and frame index (within its episode) of every local row: int arrays (N,)."""
        ep = _int_array(episode_index, f"episode_index of dataset {name!r}")
        fr = _int_array(frame_index, f"frame_index of dataset {name!r}")
        if ep.size != fr.size or ep.size == 0:
            raise ConfigError(f"dataset {name!r}: episode_index ({ep.size} rows) and frame_index ({fr.size} rows) "
                              "must be non-empty and of one length")
        if int(ep.min()) < 0 or int(fr.min()) < 0:
            raise ConfigError(f"dataset {name!r}: episode_index and frame_index must be >= 0")
        breaks = np.flatnonzero((ep[1:] != ep[:-1]) | (fr[1:] != fr[:-1] + 1)) + 1
        starts = np.concatenate([[0], breaks]).astype(np.int64)
        length = np.diff(np.concatenate([starts, [ep.size]])).astype(np.int64)
        ids, run_ep = np.unique(ep[starts], return_inverse=True)
        return cls(ids.astype(np.int64), run_ep.astype(np.int64), fr[starts].copy(), starts, length, name)

    def _check_tiling(self) -> None:
        """Each episode's runs, in frame order, must cover frames 0..L-1 once each."""
        order = np.lexsort((self.run_frame, self.run_episode))
        ep, f0, n = self.run_episode[order], self.run_frame[order], self.run_length[order]
        first = np.r_[True, ep[1:] != ep[:-1]]
        expected = np.where(first, 0, np.r_[0, f0[:-1] + n[:-1]])
        bad = np.flatnonzero(f0 != expected)
        if bad.size:
            i = int(bad[0])
            e = int(self.episode_ids[ep[i]])
            raise ConfigError(f"dataset {self.name!r}, episode {e}: its rows' frame indices are not 0..L-1 once each "
                              f"(a run of rows starts at frame {int(f0[i])} where frame {int(expected[i])} was due)")

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ids.size)

    def row_episode(self) -> np.ndarray:
        """int64 (N,): position in `episode_ids` of every local row (materializes N integers)."""
        out = np.empty(self.num_frames, dtype=np.int64)
        for_rows = np.repeat(self.run_episode, self.run_length)
        out[run_rows(self.run_start, self.run_length)] = for_rows
        return out

    def __repr__(self) -> str:
        return (f"EpisodeRuns(name={self.name!r}, episodes={self.num_episodes}, frames={self.num_frames}, "
                f"runs={self.run_start.size})")


def run_rows(start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """int64 (Σ length,): the rows start[j] .. start[j] + length[j] - 1 of every run j, run after run."""
    total = int(length.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    first = np.repeat(start - np.concatenate([[0], np.cumsum(length)[:-1]]), length)
    return first + np.arange(total, dtype=np.int64)


__all__ = ["EpisodeRuns", "run_rows"]
