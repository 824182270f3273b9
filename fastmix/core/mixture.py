"""`Mixture`: the weighting semantics of a multi-dataset mixture, its effective per-dataset shares, the
alias tables the sampler draws from, and a printable table.

Weighting modes (w_i = dataset weight, N_i = frames, M_i = kept frames (N_i without a frame filter), E_i = kept
episodes (episodes with a kept frame), f_i = per-frame weights of dataset i):

* ``per_sample`` (default, the reference's semantics): a kept frame of dataset i is drawn with probability
  proportional to w_i (times f_i[frame]); dataset i's share is ∝ w_i·M_i (or w_i·Σ_kept f_i). This is exactly
  `WeightedRandomSampler` over the concatenated per-sample weights w_i·f_i (0 for filtered-out frames).
* ``per_dataset``: dataset i's share is w_i / Σw; inside the dataset kept frames are uniform (or ∝ f_i).
* ``per_episode`` (trajectory balancing): dataset i's share is w_i / Σw, as per_dataset; inside the dataset each
  kept episode is equally likely (1/E_i) and its kept frames are uniform (or ∝ f_i within the episode). A
  frame of episode e of dataset i: share_i / (E_i · M_{i,e}), M_{i,e} = kept frames of e. For shares ∝ w_i·E_i
  (every episode of the mixture equally likely) pass weights w_i·E_i.

Frame filters (`fastmix.core.filters.FrameFilter`, one per dataset or None) give filtered-out frames probability
0 in every mode; per_episode weighting and filters need each dataset's episodes (`EpisodeRuns`, or its episode
lengths). A dataset whose filter keeps every frame (and is not per_episode) draws exactly as without one.

A zero weight is allowed: that dataset is never drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from fastmix._args import check_weights
from fastmix.core.alias import AliasTable
from fastmix.core.episodes import EpisodeRuns, run_rows
from fastmix.core.filters import FrameFilter, KeptFrames, kept_frames
from fastmix.core.index_map import IndexMap
from fastmix.errors import ConfigError

WEIGHTINGS = ("per_sample", "per_dataset", "per_episode")
_RULES = {"per_sample": "share ∝ weight × frames", "per_dataset": "share ∝ weight",
          "per_episode": "share ∝ weight; each episode of a dataset equally likely, frames uniform within it"}
_TWO64 = 1 << 64


def _packed_probabilities(table: AliasTable) -> np.ndarray:
    """Exact float64 (K,) distribution of the packed one-word alias draw (csrc/alias.hpp alias_pick_packed):
    column j = high half of x*K (Lemire, rejecting low < 2^64 mod K), coin = the low half."""
    k = len(table)
    t = _TWO64 % k

    def count(l0: int, a: int, b: int) -> int:  # #{m >= 0 : a <= l0 + m*k < b}
        up = lambda v: max(0, -((l0 - v) // k))  # noqa: E731  (ceil((v - l0) / k), floored at 0)
        return max(0, up(b) - up(a))

    probs = [Fraction(0)] * k
    totals = []
    for j in range(k):
        l0 = (-j * _TWO64) % k  # low half of the first x whose column is j
        totals.append(count(l0, t, _TWO64))
    grand = sum(totals)
    for j in range(k):
        l0 = (-j * _TWO64) % k
        keep = count(l0, t, max(t, int(table.threshold[j])))
        probs[j] += Fraction(keep, grand)
        probs[int(table.alias[j])] += Fraction(totals[j] - keep, grand)
    return np.array([float(p) for p in probs], dtype=np.float64)


class Mixture:
    """Weighting semantics and sampling tables of K datasets.

    Args:
        dataset_sizes: frames per dataset (K,), each >= 1.
        dataset_weights: (K,) finite, >= 0, not all zero; default all ones.
        weighting: "per_sample" (share ∝ w_i·M_i), "per_dataset" (share ∝ w_i) or "per_episode" (share ∝ w_i,
            episodes of a dataset equally likely).
        frame_weights: None, or K entries each None (uniform) or a float array (N_i,) of per-frame weights.
        episodes: None, or K entries each None, an `EpisodeRuns` of N_i frames, or the episode lengths (rows
            hold episode after episode, in frame order; episode indices 0, 1, ...). Needed by per_episode
            weighting and by frame filters.
        frame_filters: None, or K entries each None or a `FrameFilter`.
        backend: kernels to build the tables and the index map with (None: `fastmix.backend()`).
        names: K dataset names (errors and `format_table` name them; default "dataset i").

    Attributes:
        index_map IndexMap (the mixture's one global ↔ (dataset, local) map), sizes int64 (K,), names list[str],
        weights float64 (K,), weighting str, masses float64 (K,) (unnormalized shares), shares float64 (K,)
        (sum 1), dataset_table AliasTable (K), frame_tables list of AliasTable | None (the table over a dataset's
        columns: frames, or segments of kept frames), segments list of (start, length) int64 arrays | None,
        episodes list of EpisodeRuns | None, frame_filters list of FrameFilter | None, kept list of
        KeptFrames | None (None: every frame kept), kept_sizes int64 (K,) (M_i), kept_total int.
    """

    def __init__(
        self,
        dataset_sizes: Sequence[int] | np.ndarray,
        dataset_weights: Sequence[float] | np.ndarray | None = None,
        *,
        weighting: str = "per_sample",
        frame_weights: Sequence[Sequence[float] | np.ndarray | None] | None = None,
        episodes: Sequence[EpisodeRuns | Sequence[int] | np.ndarray | None] | None = None,
        frame_filters: Sequence[FrameFilter | None] | None = None,
        backend: str | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.index_map = IndexMap(dataset_sizes, backend=backend)
        self.sizes = self.index_map.sizes
        k = self.sizes.size
        self.names = [f"dataset {i}" for i in range(k)] if names is None else [str(n) for n in names]
        if len(self.names) != k:
            raise ConfigError(f"names length ({len(self.names)}) must match dataset_sizes length ({k}): "
                              f"names={self.names}, dataset_sizes={self.sizes.tolist()}")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting={weighting!r} is not one of {WEIGHTINGS}")
        self.weighting = weighting
        weights = check_weights(dataset_weights, self.names, names_what="datasets")
        self.weights = np.ones(k) if weights is None else weights
        self.frame_weights = self._check_frame_weights(frame_weights)
        self.frame_filters = self._check_filters(frame_filters)
        self.episodes = self._check_episodes(episodes)
        self.kept = [self._kept(d) for d in range(k)]
        self.kept_sizes = np.array([self.sizes[d] if c is None else c.num_kept for d, c in enumerate(self.kept)],
                                   dtype=np.int64)
        self.kept_total = int(self.kept_sizes.sum())
        columns = [self._columns(d) for d in range(k)]
        self._column_weights = [c[0] for c in columns]
        self.segments = [c[1] for c in columns]
        frame_mass = np.array([c[2] for c in columns], dtype=np.float64)
        self.masses = self.weights * frame_mass if weighting == "per_sample" else self.weights.copy()
        if not np.isfinite(self.masses).all():
            i = int(np.argmax(~np.isfinite(self.masses)))
            raise ConfigError(f"dataset {i}: weight {float(self.weights[i])!r} x {float(frame_mass[i])!r} frames overflows float64")
        self.shares = self.masses / self.masses.sum()
        self.dataset_table = AliasTable(self.masses, name="dataset_weights", backend=backend)
        self.frame_tables = [None if w is None else AliasTable(w, name=f"frame_weights[{i}]", backend=backend)
                             for i, w in enumerate(self._column_weights)]
        self._build_frame_arrays()

    def _check_frame_weights(self, frame_weights) -> list[np.ndarray | None]:
        k = self.sizes.size
        if frame_weights is None:
            return [None] * k
        if len(frame_weights) != k:
            raise ConfigError(f"frame_weights length ({len(frame_weights)}) must match datasets length ({k}): "
                              f"datasets={self.names}")
        out: list[np.ndarray | None] = []
        for i, f in enumerate(frame_weights):
            if f is None:
                out.append(None)
                continue
            w = check_weights(f, what=f"frame_weights[{i}]")
            if w.size != self.sizes[i]:
                raise ConfigError(f"frame_weights[{i}] has {w.size} entries but dataset {i} has "
                                  f"{int(self.sizes[i])} frames")
            out.append(w)
        return out

    def _per_dataset(self, values: Any, what: str) -> list:
        """`values` as a list of K entries (None: K Nones); ConfigError naming `what` when its length differs."""
        k = self.sizes.size
        if values is None:
            return [None] * k
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
            raise ConfigError(f"{what} must be a list with one entry (or None) per dataset, got {what}={values!r}")
        if len(values) != k:
            raise ConfigError(f"{what} length ({len(values)}) must match datasets length ({k}): datasets={self.names}")
        return list(values)

    def _check_filters(self, frame_filters: Any) -> list[FrameFilter | None]:
        out = self._per_dataset(frame_filters, "frame_filters")
        for i, f in enumerate(out):
            if f is not None and not isinstance(f, FrameFilter):
                raise ConfigError(f"frame_filters[{i}] (dataset {self.names[i]!r}) must be a FrameFilter or None, "
                                  f"got {type(f).__name__}")
        return out

    def _check_episodes(self, episodes: Any) -> list[EpisodeRuns | None]:
        out = self._per_dataset(episodes, "episodes")
        for i, e in enumerate(out):
            if e is None:
                continue
            if not isinstance(e, EpisodeRuns):
                out[i] = e = EpisodeRuns.from_lengths(e, name=self.names[i])
            if e.num_frames != self.sizes[i]:
                raise ConfigError(f"episodes[{i}] of dataset {self.names[i]!r} cover {e.num_frames} frames but the "
                                  f"dataset has {int(self.sizes[i])}")
        return out

    def _kept(self, d: int) -> KeptFrames | None:
        """What dataset d's filter keeps (every frame without one); None when neither a filter nor per_episode
        weighting asks for its episodes."""
        flt = self.frame_filters[d]
        if flt is None and self.weighting != "per_episode":
            return None
        runs = self.episodes[d]
        if runs is None:
            need = "weighting='per_episode'" if flt is None else "a frame filter"
            raise ConfigError(f"dataset {self.names[d]!r}: {need} needs the dataset's episodes; pass episodes= "
                              "(episode lengths or an EpisodeRuns per dataset)")
        return kept_frames(flt, runs, where=f"frame_filters[{d}] (dataset {self.names[d]!r})")

    def _columns(self, d: int) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None, float]:
        """Dataset d's table: (column weights or None for uniform frames, segments (start, length) or None for
        one column per frame, frame mass Σ of per-frame weights over kept frames)."""
        f, kept, n = self.frame_weights[d], self.kept[d], int(self.sizes[d])
        per_episode = self.weighting == "per_episode"
        if kept is None or (kept.everything and not per_episode):
            return f, None, float(n if f is None else f.sum())
        if f is None:
            w = kept.seg_length.astype(np.float64)
            if per_episode:
                w = w / kept.kept_per_episode[kept.seg_episode]
            return w, (kept.seg_start, kept.seg_length), float(kept.num_kept)
        eff = np.where(kept.mask(), f, 0.0)
        mass = float(eff.sum())
        if per_episode:
            row_ep = kept.runs.row_episode()
            per_ep = np.bincount(row_ep, weights=eff, minlength=kept.runs.num_episodes)
            eff = np.divide(eff, per_ep[row_ep], out=np.zeros_like(eff), where=per_ep[row_ep] > 0)
        check_weights(eff, what=f"frame_weights[{d}] over the frames kept by frame_filters[{d}]")
        return eff, None, mass

    def _build_frame_arrays(self) -> None:
        """Concatenated per-dataset tables for the kernels; empty arrays select the uniform layout (no table)
        and one column per frame (no segments)."""
        self.has_frame_weights = any(t is not None for t in self.frame_tables)  # the frame layout is in use
        empty_i = np.empty(0, dtype=np.int64)
        self.segment_start, self.segment_length = empty_i, empty_i
        if not self.has_frame_weights:
            self.frame_threshold = np.empty(0, dtype=np.uint64)
            self.frame_alias, self.frame_offsets = empty_i, empty_i
            return
        lengths = [0 if t is None else len(t) for t in self.frame_tables]
        self.frame_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.frame_offsets[1:])
        tables = [t for t in self.frame_tables if t is not None]
        self.frame_threshold = np.concatenate([t.threshold for t in tables])
        self.frame_alias = np.concatenate([t.alias for t in tables])
        if any(s is not None for s in self.segments):  # every table then lists (start, length) per column
            cols = [(np.arange(len(t), dtype=np.int64), np.ones(len(t), dtype=np.int64)) if s is None else s
                    for t, s in zip(self.frame_tables, self.segments, strict=True) if t is not None]
            self.segment_start = np.concatenate([c[0] for c in cols])
            self.segment_length = np.concatenate([c[1] for c in cols])

    @property
    def num_datasets(self) -> int:
        return int(self.sizes.size)

    @property
    def total(self) -> int:
        return self.index_map.total

    def dataset_probabilities(self) -> np.ndarray:
        """float64 (K,): the exact probability of each dataset under the sampler's dataset draw (from the
        built table; equals `shares` up to float rounding)."""
        return _packed_probabilities(self.dataset_table)

    def _spread(self, d: int, column_p: np.ndarray) -> np.ndarray:
        """float64 (N_d,): column probabilities of dataset d spread over its frames (a segment's evenly)."""
        seg = self.segments[d]
        if seg is None:
            return column_p
        out = np.zeros(int(self.sizes[d]), dtype=np.float64)
        out[run_rows(*seg)] = np.repeat(column_p / seg[1], seg[1])
        return out

    def frame_probabilities(self, d: int) -> np.ndarray:
        """float64 (N_d,): ideal probability of each frame of dataset d given that d is drawn (0 for a frame
        its filter drops)."""
        w = self._column_weights[d]
        if w is None:
            return np.full(int(self.sizes[d]), 1.0 / float(self.sizes[d]))
        return self._spread(d, w / w.sum())

    def table_frame_probabilities(self, d: int) -> np.ndarray:
        """float64 (N_d,): the exact probability of each frame of dataset d given d, under the built table
        (`AliasTable.probabilities`; equals `frame_probabilities(d)` up to float rounding)."""
        t = self.frame_tables[d]
        if t is None:
            return np.full(int(self.sizes[d]), 1.0 / float(self.sizes[d]))
        return self._spread(d, t.probabilities())

    def sample_probabilities(self) -> np.ndarray:
        """float64 (N,): ideal probability of every frame of the concatenation (materializes N floats)."""
        return np.concatenate([self.shares[d] * self.frame_probabilities(d) for d in range(self.num_datasets)])

    def table_sample_probabilities(self) -> np.ndarray:
        """float64 (N,): the exact probability of every frame under the sampler's random draw (built tables)."""
        p = self.dataset_probabilities()
        return np.concatenate([p[d] * self.table_frame_probabilities(d) for d in range(self.num_datasets)])

    def reference_weights(self) -> np.ndarray:
        """float64 (N,): per-sample weights that make `WeightedRandomSampler` draw this mixture (per_sample:
        w_i·f_i, the reference's own list, 0 for filtered-out frames; otherwise w_i·P(frame | dataset i))."""
        parts = []
        for d in range(self.num_datasets):
            if self.weighting != "per_sample":
                parts.append(self.weights[d] * self.frame_probabilities(d))
                continue
            f, kept = self.frame_weights[d], self.kept[d]
            base = np.ones(int(self.sizes[d])) if f is None else f
            if kept is not None and not kept.everything:
                base = np.where(kept.mask(), base, 0.0)
            parts.append(self.weights[d] * base)
        return np.concatenate(parts)

    # ------------------------------------------------------------------ kept frames
    @property
    def filtered(self) -> bool:
        """Whether some frame filter drops frames."""
        return self.kept_total != self.total

    def kept_indices(self, d: int) -> np.ndarray:
        """int64 (M_d,): the local indices of dataset d that may be drawn (all of them without a filter),
        ascending — what norm stats and checks over "the data a mixture trains on" should read."""
        kept = self.kept[d]
        return np.arange(int(self.sizes[d]), dtype=np.int64) if kept is None else kept.local_indices()

    def is_kept(self, d: int, episode_index: Any, frame_index: Any) -> np.ndarray:
        """bool (n,): whether frames (episode index, frame index within it; arrays (n,)) of dataset d are kept."""
        kept = self.kept[d]
        if kept is None:
            return np.ones(np.atleast_1d(np.asarray(episode_index)).size, dtype=bool)
        return kept.contains(episode_index, frame_index)

    def kept_global(self, q: np.ndarray) -> np.ndarray:
        """int64 (n,): the global index of kept frame number q (int64 (n,), each in [0, kept_total)) in the
        order of the concatenation (the sequential order of a filtered mixture)."""
        q = np.asarray(q, dtype=np.int64)
        if not self.filtered:
            return q.copy()
        kept_offsets = np.concatenate([[0], np.cumsum(self.kept_sizes)])
        d = np.searchsorted(kept_offsets[1:], q, side="right")
        local = q - kept_offsets[d]
        for dd in np.unique(d).tolist():
            kept = self.kept[dd]
            if kept is None or kept.everything:
                continue
            sel = d == dd
            cum = np.concatenate([[0], np.cumsum(kept.seg_length)[:-1]])
            j = np.searchsorted(cum, local[sel], side="right") - 1
            local[sel] = kept.seg_start[j] + (local[sel] - cum[j])
        return self.index_map.offsets[d] + local

    def format_table(self, names: Sequence[str] | None = None) -> str:
        """Printable table: dataset, frames (kept frames where filtered), episodes (kept of all, where known),
        weight, frame weighting, expected share (%)."""
        k = self.num_datasets
        names = self.names if names is None else [str(n) for n in names]
        if len(names) != k:
            raise ConfigError(f"format_table got {len(names)} names for {k} datasets")
        frames = f"{self.total:,} frames" if not self.filtered else \
            f"{self.kept_total:,} frames kept of {self.total:,} (frame filters)"
        head = f"mixture: {k} datasets, {frames}, weighting={self.weighting} ({_RULES[self.weighting]})"
        known = any(c is not None for c in self.kept)
        w = max(7, *(len(n) for n in names))
        eps = f"  {'episodes':>15}" if known else ""
        label = "kept/frames" if self.filtered else "frames"
        lines = [head, f"  {'#':>3}  {'dataset':<{w}}  {label:>13}{eps}  {'weight':>10}  {'frames drawn':>12}  "
                       f"{'share':>8}"]
        for i in range(k):
            kept = self.kept[i]
            n = f"{int(self.kept_sizes[i]):,}"
            if kept is not None and not kept.everything:
                n = f"{n}/{int(self.sizes[i]):,}"
            e = "" if not known else f"  {'-':>15}" if kept is None else \
                f"  {kept.episodes_kept:,}/{kept.runs.num_episodes:,}".rjust(17)
            drawn = "per-frame" if self.frame_weights[i] is not None else \
                "per-episode" if self.weighting == "per_episode" else "uniform"
            share = f"{100 * self.shares[i]:7.3f}%"
            note = "  (weight 0: never drawn)" if self.masses[i] == 0 else ""
            if self.frame_filters[i] is not None:
                note += f"  [{self.frame_filters[i].describe()}"
                note += f"; {kept.ignored_keys} keys ignored]" if kept.ignored_keys else "]"
            lines.append(f"  {i:>3}  {names[i]:<{w}}  {n:>13}{e}  {self.weights[i]:>10.4g}  {drawn:>12}  "
                         f"{share:>8}{note}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Mixture(sizes={self.sizes.tolist()}, weights={self.weights.tolist()}, "
                f"weighting={self.weighting!r}, shares={np.round(self.shares, 6).tolist()})")


__all__ = ["WEIGHTINGS", "Mixture"]
