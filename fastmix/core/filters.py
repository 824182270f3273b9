"""Frame filters: which frames of a dataset the mixture may draw (`FrameFilter`), and what a filter keeps of one
dataset (`KeptFrames`, from `kept_frames(filter, runs)`).

A filter keeps, in every episode, the union of its keep-ranges (all frames when it has none) minus the first
`trim_start` and the last `trim_end` frames. The keep-ranges file is openpi's `filter_dict_path` format (its
DROID training filters idle frames with one): a JSON object mapping an episode key to a list of [start, end)
frame ranges, e.g. {"12": [[0, 100], [200, 300]]} keeps frames 0-99 and 200-299 of episode 12; an episode the
file does not list keeps nothing (openpi's lookup table defaults to False). Reading that file is the one I/O of
the sampling core.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fastmix._args import check_int
from fastmix.core.episodes import EpisodeRuns, run_rows
from fastmix.errors import ConfigError, MissingFileError

UNKNOWN_EPISODES = ("error", "ignore")


def read_keep_ranges(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object of a keep-ranges file (episode key -> [[start, end], ...]); MissingFileError or
    ConfigError naming the file."""
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"frame filter keep_ranges file {p} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"frame filter keep_ranges file {p} is not a readable JSON file: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"frame filter keep_ranges file {p} must hold a JSON object (episode key -> list of "
                          f"[start, end) ranges), got a JSON {type(data).__name__}")
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


class FrameFilter:
    """Which frames of one dataset may be drawn (`MixtureLoader(frame_filters=...)`, `MixtureSampler`).

    Args:
        keep_ranges: None (every frame), a mapping episode key -> list of [start, end) ranges of frame indices
            within that episode (0 = its first frame; end exclusive; 0 <= start <= end <= episode length), or
            the path of a JSON file holding such a mapping (openpi's `filter_dict_path` format). Ranges may
            overlap (their union is kept); an empty range keeps nothing; an episode not listed keeps nothing.
        trim_start, trim_end: frames dropped at the start / end of every episode (integers >= 0), applied after
            keep_ranges; an episode of at most trim_start + trim_end frames keeps none.
        episode_keys: None (keys are episode indices, as ints or decimal strings), or a mapping key -> episode
            index for files keyed otherwise (e.g. DROID's "<recording_folderpath>--<file_path>").
        unknown_episodes: "error" (a key naming no episode of the dataset raises ConfigError) or "ignore" (such
            keys are skipped and counted in `KeptFrames.ignored_keys`).

    Malformed arguments raise ConfigError here, naming the key and range (and the file); ranges past an episode's
    end and unknown episodes raise when the filter meets its dataset, naming dataset, episode and range.
    """

    def __init__(self, keep_ranges: Mapping[Any, Sequence[Sequence[int]]] | str | os.PathLike | None = None, *,
                 trim_start: int = 0, trim_end: int = 0, episode_keys: Mapping[Any, int] | None = None,
                 unknown_episodes: str = "error") -> None:
        self.trim_start = check_int(trim_start, "FrameFilter trim_start", minimum=0)
        self.trim_end = check_int(trim_end, "FrameFilter trim_end", minimum=0)
        if unknown_episodes not in UNKNOWN_EPISODES:
            raise ConfigError(f"FrameFilter unknown_episodes must be one of {UNKNOWN_EPISODES}, "
                              f"got unknown_episodes={unknown_episodes!r}")
        self.unknown_episodes = unknown_episodes
        self.source: str | None = None  # the keep-ranges file, when read from one
        if isinstance(keep_ranges, (str, os.PathLike)):
            self.source = os.fspath(keep_ranges)
            keep_ranges = read_keep_ranges(keep_ranges)
        if keep_ranges is not None and not isinstance(keep_ranges, Mapping):
            raise ConfigError(f"FrameFilter keep_ranges must be None, a mapping episode key -> [[start, end], ...] "
                              f"or a JSON file path, got {type(keep_ranges).__name__}")
        if episode_keys is not None and not isinstance(episode_keys, Mapping):
            raise ConfigError(f"FrameFilter episode_keys must be None or a mapping key -> episode index, got "
                              f"{type(episode_keys).__name__}")
        self.has_ranges = keep_ranges is not None
        self._parse(keep_ranges or {}, episode_keys)

    def _where(self, key: Any) -> str:
        return f"keep_ranges[{key!r}]" + (f" (file {self.source})" if self.source else "")

    def _episode_of(self, key: Any, episode_keys: Mapping[Any, int] | None) -> int:
        """Episode index a key names, or -1 when it names none (an unknown episode)."""
        if episode_keys is not None:
            e = episode_keys.get(key, episode_keys.get(str(key)) if not isinstance(key, str) else None)
            if e is None:
                return -1
            return check_int(e, f"FrameFilter episode_keys[{key!r}]", minimum=0)
        if _is_int(key) and key >= 0:
            return int(key)
        if isinstance(key, str) and key.strip().isdigit():
            return int(key)
        return -1

    def _parse(self, ranges: Mapping[Any, Any], episode_keys: Mapping[Any, int] | None) -> None:
        """Keys -> episode indices (-1: unknown) and the flattened ranges: (key position, start, end) int64.
        All ranges are converted at once; only a malformed mapping is walked key by key (`_ranges_of`) to name
        the first bad entry."""
        self.keys = list(ranges)
        self.key_episode = np.array([self._episode_of(k, episode_keys) for k in self.keys], dtype=np.int64)
        values = [ranges[k] for k in self.keys]
        flat = [r for v in values if isinstance(v, (list, tuple)) for r in v]
        counts = [len(v) if isinstance(v, (list, tuple)) else -1 for v in values]
        try:
            a = np.asarray(flat) if flat else np.empty((0, 2), dtype=np.int64)
        except ValueError:  # ragged
            a = None
        plain = -1 not in counts and a is not None and a.ndim == 2 and a.shape[1] == 2 and a.dtype.kind in "iu" \
            and not any(type(x) is bool for r in flat for x in r)  # numpy reads True as 1: not a frame index
        if not plain:  # name the first malformed entry (key by key), or accept numpy arrays
            parts = [self._ranges_of(k, v) for k, v in zip(self.keys, values, strict=True)]
            counts = [len(p) for p in parts]
            a = np.concatenate(parts) if parts else np.empty((0, 2), dtype=np.int64)
        a = a.astype(np.int64)
        self.range_key = np.repeat(np.arange(len(self.keys), dtype=np.int64), counts)
        bad = np.flatnonzero((a[:, 0] < 0) | (a[:, 1] < a[:, 0]))
        if bad.size:
            i = int(bad[0])
            r = int(self.range_key[i])
            j = i - int(np.searchsorted(self.range_key, r))
            raise ConfigError(f"FrameFilter {self._where(self.keys[r])}[{j}]={a[i].tolist()} must satisfy 0 <= start "
                              "<= end (frame indices within the episode, end exclusive)")
        self.range_start, self.range_end = a[:, 0].copy(), a[:, 1].copy()

    def _ranges_of(self, key: Any, value: Any) -> np.ndarray:
        """int64 (n, 2) integer pairs of one key; ConfigError naming the key and the first malformed range."""
        where = self._where(key)
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, np.ndarray)):
            raise ConfigError(f"FrameFilter {where} must be a list of [start, end) ranges, got {value!r}")
        try:
            a = np.asarray(value) if len(value) else np.empty((0, 2), dtype=np.int64)
        except ValueError:  # ragged
            a = np.empty(0)
        plain = a.ndim == 2 and a.shape[1] == 2 and a.dtype.kind in "iu"
        if plain and not isinstance(value, np.ndarray):  # numpy reads True as 1: a bool is not a frame index
            plain = not any(type(v) is bool or isinstance(v, np.bool_) for r in value for v in r)
        if not plain:
            for j, r in enumerate(value):  # name the first malformed range
                if isinstance(r, (str, bytes)) or not isinstance(r, (Sequence, np.ndarray)) or len(r) != 2 \
                        or not all(_is_int(v) for v in r):
                    raise ConfigError(f"FrameFilter {where}[{j}] must be a pair of integers [start, end), got {r!r}")
            raise ConfigError(f"FrameFilter {where} must be a list of [start, end) integer pairs, got {value!r}")
        return a.astype(np.int64)

    def __repr__(self) -> str:
        return f"FrameFilter({self.describe()})"

    def describe(self) -> str:
        """One line: where the ranges come from and the trims."""
        parts = []
        if self.has_ranges:
            origin = self.source or "mapping"
            parts.append(f"keep_ranges {origin} ({len(self.keys)} episodes, {self.range_start.size} ranges)")
        if self.trim_start or self.trim_end:
            parts.append(f"trim {self.trim_start} first / {self.trim_end} last")
        return ", ".join(parts) or "keeps every frame"


class KeptFrames:
    """What a filter keeps of one dataset: segments (runs of kept local rows of one episode), ascending.

    Attributes:
        runs: the dataset's `EpisodeRuns`. seg_start, seg_length, seg_episode: int64 (S,) first local row, rows
        (>= 1) and episode position (into runs.episode_ids) of each segment, by ascending seg_start.
        kept_per_episode: int64 (E,) kept frames of each episode. num_kept: kept frames. episodes_kept: episodes
        with a kept frame. episodes_removed: episodes with none. ignored_keys: keep_ranges keys skipped
        (unknown_episodes="ignore"). everything: every frame is kept.
    """

    def __init__(self, runs: EpisodeRuns, g_start: np.ndarray, g_end: np.ndarray, ignored_keys: int) -> None:
        self.runs = runs
        self.ignored_keys = ignored_keys
        self._digest: str | None = None
        self._base = np.concatenate([[0], np.cumsum(runs.lengths)[:-1]]).astype(np.int64)
        self._g_start, self._g_end = g_start, g_end
        order = np.argsort(self._base[runs.run_episode] + runs.run_frame, kind="stable")
        r_g = (self._base[runs.run_episode] + runs.run_frame)[order]  # runs tile [0, N) in G coordinates
        r0 = np.searchsorted(r_g, g_start, side="right") - 1
        r1 = np.searchsorted(r_g, g_end - 1, side="right") - 1
        count = r1 - r0 + 1
        owner = np.repeat(np.arange(g_start.size), count)
        run = order[np.repeat(r0, count) + (np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count))]
        run_g = self._base[runs.run_episode[run]] + runs.run_frame[run]
        lo = np.maximum(g_start[owner], run_g)
        hi = np.minimum(g_end[owner], run_g + runs.run_length[run])
        start = runs.run_start[run] + (lo - run_g)
        by_row = np.argsort(start, kind="stable")
        self.seg_start, self.seg_length = start[by_row], (hi - lo)[by_row]
        self.seg_episode = runs.run_episode[run][by_row]
        self.kept_per_episode = np.bincount(self.seg_episode, weights=self.seg_length,
                                            minlength=runs.num_episodes).astype(np.int64)
        self.num_kept = int(self.seg_length.sum())
        self.episodes_kept = int((self.kept_per_episode > 0).sum())
        self.episodes_removed = runs.num_episodes - self.episodes_kept
        self.everything = self.num_kept == runs.num_frames

    def local_indices(self) -> np.ndarray:
        """int64 (num_kept,): the kept local rows, ascending."""
        return run_rows(self.seg_start, self.seg_length)

    def mask(self) -> np.ndarray:
        """bool (N,): True for a kept local row."""
        m = np.zeros(self.runs.num_frames, dtype=bool)
        m[self.local_indices()] = True
        return m

    def contains(self, episode_index: Any, frame_index: Any) -> np.ndarray:
        """bool (n,): whether frame `frame_index` of episode `episode_index` (dataset indices, arrays (n,)) is
        kept; False for an episode or frame the dataset does not have."""
        ep = np.atleast_1d(np.asarray(episode_index, dtype=np.int64))
        fr = np.atleast_1d(np.asarray(frame_index, dtype=np.int64))
        ids = self.runs.episode_ids
        pos = np.minimum(np.searchsorted(ids, ep), ids.size - 1)
        valid = (ids[pos] == ep) & (fr >= 0) & (fr < self.runs.lengths[pos])
        g = self._base[pos] + fr
        j = np.searchsorted(self._g_start, g, side="right") - 1
        inside = (j >= 0) & (g < self._g_end[np.maximum(j, 0)]) if self._g_start.size else np.zeros(g.size, bool)
        return valid & inside

    def digest(self) -> str:
        """sha1 of the kept rows (segments): equal for filters keeping the same frames (computed once)."""
        if self._digest is None:
            h = hashlib.sha1(self.seg_start.astype("<i8").tobytes())
            h.update(self.seg_length.astype("<i8").tobytes())
            self._digest = h.hexdigest()
        return self._digest


def kept_frames(flt: FrameFilter | None, runs: EpisodeRuns, *, where: str) -> KeptFrames:
    """What `flt` (None: no filter) keeps of the dataset `runs` describes; ConfigError naming `where` (e.g.
    "frame_filters[1] (dataset 'droid')"), the episode and the range for ranges past an episode's end, unknown
    episodes (unknown_episodes="error") and a filter that keeps no frame."""
    lengths = runs.lengths
    ignored = 0
    if flt is None or not flt.has_ranges:
        pos, start, end = np.arange(runs.num_episodes, dtype=np.int64), np.zeros_like(lengths), lengths.copy()
    else:
        ids = runs.episode_ids
        key_pos = np.minimum(np.searchsorted(ids, flt.key_episode), ids.size - 1)
        known = (flt.key_episode >= 0) & (ids[key_pos] == flt.key_episode)
        if not known.all():
            i = int(np.flatnonzero(~known)[0])
            if flt.unknown_episodes == "error":
                raise ConfigError(
                    f"{where}: {flt._where(flt.keys[i])} names no episode of the dataset ({runs.num_episodes} "
                    f"episodes, indices {int(ids[0])}..{int(ids[-1])}); map file keys to episode indices with "
                    "episode_keys=, or skip such keys with unknown_episodes='ignore'")
            ignored = int((~known).sum())
        use = known[flt.range_key]
        pos = key_pos[flt.range_key][use]
        start, end = flt.range_start[use], flt.range_end[use]
        past = np.flatnonzero(end > lengths[pos])
        if past.size:
            j = int(past[0])
            r = int(np.flatnonzero(use)[j])
            key = flt.keys[int(flt.range_key[r])]
            nth = r - int(np.searchsorted(flt.range_key, flt.range_key[r]))
            raise ConfigError(f"{where}: {flt._where(key)}[{nth}]=[{int(start[j])}, {int(end[j])}) ends past episode "
                              f"{int(runs.episode_ids[pos[j]])}, which has {int(lengths[pos[j]])} frames (ranges are "
                              f"[start, end) frame indices within the episode, end <= its length)")
    if flt is not None and (flt.trim_start or flt.trim_end):
        start = np.maximum(start, flt.trim_start)
        end = np.minimum(end, lengths[pos] - flt.trim_end)
    g_start, g_end = _merge(pos, start, end, lengths)
    kept = KeptFrames(runs, g_start, g_end, ignored)
    if kept.num_kept == 0:
        what = flt.describe() if flt is not None else "no filter"
        raise ConfigError(f"{where}: the frame filter ({what}) keeps no frame of the dataset's {runs.num_frames} "
                          f"frames in {runs.num_episodes} episodes (episodes of at most trim_start + trim_end "
                          "frames and episodes the keep_ranges do not list keep nothing)")
    return kept


def _merge(pos: np.ndarray, start: np.ndarray, end: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranges [start, end) of episodes `pos`, as disjoint ascending intervals of the G coordinates (episode after
    episode, frame order): empty ranges dropped, overlapping or touching ones merged."""
    base = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    keep = end > start
    a, b = base[pos[keep]] + start[keep], base[pos[keep]] + end[keep]
    if a.size == 0:
        return a, b
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    reach = np.maximum.accumulate(b)
    new = np.r_[True, a[1:] > reach[:-1]]
    first = np.flatnonzero(new)
    last = np.r_[first[1:], a.size] - 1
    return a[first], reach[last]


__all__ = ["UNKNOWN_EPISODES", "FrameFilter", "KeptFrames", "kept_frames", "read_keep_ranges"]
