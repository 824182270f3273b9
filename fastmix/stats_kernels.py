"""Vectorized kernels of the norm-stats computation (pure numpy), bit-identical to openpi's `RunningStats`.

`RunningStats` keeps, per dimension, a 5000-bin histogram over [min, max] and moves old counts to the new bins
(each old bin's count at its left edge) whenever a batch widens the range. Here every dimension is handled at
once: a histogram update is one `np.bincount` over computed flat bin indices (dim * bins + bin) instead of one
`np.histogram` (sort + searchsorted) per dimension, and bins follow `np.histogram`'s rules for explicit edges
exactly (bin j holds edges[j] <= x < edges[j+1], the last bin also x == edges[-1], values outside [edges[0],
edges[-1]] and NaN dropped; counts are integers stored as float64, so sums are exact in any order).

Parallel reduction with the same numbers: the histogram's bins depend on the order batches arrive in (the
rebinning history), so processes cannot simply sum histograms over different edges. Instead
1. every batch gives its `BatchMoments` (n, mean, mean of squares, min, max — cheap, computed anywhere);
2. `edge_schedule(moments)` replays the running min/max in batch order: which edges ("epoch") each batch is
   binned on, and where RunningStats would rebin;
3. processes histogram their batches into a `PartialStats` keyed by epoch; partials merge by summing;
4. `reduce_stats(moments, schedule, partial)` replays the mean updates in batch order and chains the rebins
   across epochs: the result (count, mean, mean_sq, min, max, hist, edges) equals RunningStats' state after
   `update` on the same batches in the same order, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

NUM_BINS = 5000
EDGE_EPS = 1e-10  # the first batch's edges are widened by this much on both sides (as openpi does)


def linspace_edges(lo: np.ndarray, hi: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """float64 (dim, num_bins + 1): row d is `np.linspace(lo[d], hi[d], num_bins + 1)`, bit for bit (each row
    takes the scalar call's own path; np.linspace on arrays switches every row to the zero-step path as soon
    as one row has zero width)."""
    lo, hi = np.asarray(lo, np.float64)[:, None], np.asarray(hi, np.float64)[:, None]
    delta = hi - lo
    step = delta / num_bins
    y = np.arange(num_bins + 1, dtype=np.float64)[None, :]
    out = np.where(step == 0, (y / num_bins) * delta, y * step) + lo
    out[:, -1] = hi[:, 0]
    return out


def bin_indices(edges: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bins of values `x` (float64 (n, dim)) under per-dimension `edges` (float64 (dim, B+1), non-decreasing).

    Returns (idx int64 (n, dim) in 0..B-1, valid bool (n, dim)) with np.histogram's rule: idx is the last j < B
    with edges[d, j] <= x (x == edges[d, -1] goes to bin B-1); valid is False outside the edges and for NaN.
    """
    dim, nb = edges.shape[0], edges.shape[1] - 1
    lo, hi = edges[:, 0], edges[:, -1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = nb / (hi - lo)
        guess = np.floor((x - lo) * scale)
    idx = np.clip(np.nan_to_num(guess, nan=0.0, posinf=nb, neginf=0.0), 0, nb).astype(np.int64)
    flat = edges.ravel()
    base = np.arange(dim, dtype=np.int64) * (nb + 1)
    # The guess is off by at most one bin from rounding; step towards the exact bin (a few passes, then exact
    # searchsorted for anything left, e.g. degenerate edges with repeated values).
    for _ in range(3):
        down = (flat[base + idx] > x) & (idx > 0)
        up = (flat[base + np.minimum(idx + 1, nb)] <= x) & (idx < nb)
        if not (down.any() or up.any()):
            break
        idx += up.astype(np.int64) - down.astype(np.int64)
    else:
        bad = ((flat[base + idx] > x) & (idx > 0)) | ((flat[base + np.minimum(idx + 1, nb)] <= x) & (idx < nb))
        for d in np.flatnonzero(bad.any(axis=0)):
            rows = bad[:, d]
            idx[rows, d] = np.searchsorted(edges[d], x[rows, d], side="right") - 1
    valid = (x >= lo) & (x <= hi)
    return np.minimum(idx, nb - 1), valid


def histogram_update(hist: np.ndarray, edges: np.ndarray, batch: np.ndarray,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """Add the histogram of `batch` ((n, dim); cast to float64) on `edges` ((dim, B+1)) to `hist` (float64
    (dim, B)) in place, all dimensions in one bincount; `weights` (n, dim) as np.histogram's. Returns hist."""
    x = np.asarray(batch, dtype=np.float64).reshape(-1, edges.shape[0])
    dim, nb = hist.shape
    idx, valid = bin_indices(edges, x)
    flat = (idx + np.arange(dim, dtype=np.int64) * nb)[valid]
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(x.shape)[valid]
    hist += np.bincount(flat, weights=w, minlength=dim * nb).reshape(dim, nb)
    return hist


def rebin(hist: np.ndarray, old_edges: np.ndarray, new_edges: np.ndarray) -> np.ndarray:
    """RunningStats' rebinning: each old bin's count placed at its left edge in the new bins (counts whose left
    edge lies outside the new edges are dropped, as np.histogram drops them). New float64 (dim, B)."""
    out = np.zeros((new_edges.shape[0], new_edges.shape[1] - 1), dtype=np.float64)
    return histogram_update(out, new_edges, old_edges[:, :-1].T, weights=hist.T)


def quantiles(hist: np.ndarray, edges: np.ndarray, count: int, q: float) -> np.ndarray:
    """float64 (dim,): per dimension the left edge of the first bin whose cumulative count reaches q * count."""
    cum = np.cumsum(hist, axis=1)
    k = (cum < q * count).sum(axis=1)  # == np.searchsorted(cum[d], q * count) (side "left")
    return edges[np.arange(len(edges)), k]


# -- parallel reduction ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchMoments:
    """What one batch contributes besides its histogram: rows n; float64 (dim,) mean, mean of squares, min,
    max (computed exactly as RunningStats.update computes them)."""

    n: int
    mean: np.ndarray
    mean_sq: np.ndarray
    min: np.ndarray
    max: np.ndarray


def batch_moments(batch: np.ndarray) -> BatchMoments:
    """BatchMoments of `batch` (every axis but the last is a batch axis)."""
    x = np.asarray(batch, dtype=np.float64)
    x = x.reshape(-1, x.shape[-1])
    if len(x) == 0:
        z = np.zeros(x.shape[-1])
        return BatchMoments(0, z, z, z, z)
    return BatchMoments(len(x), x.mean(axis=0), (x**2).mean(axis=0), x.min(axis=0), x.max(axis=0))


@dataclass(frozen=True)
class EdgeSchedule:
    """Which edges each batch is binned on. epoch_of_batch: int64 (num_batches,), -1 for empty batches;
    edges[e]: float64 (dim, B+1) of epoch e (epoch 0 from the first non-empty batch, a new one at each
    widening)."""

    epoch_of_batch: np.ndarray
    edges: list[np.ndarray]


def edge_schedule(moments: Sequence[BatchMoments], num_bins: int = NUM_BINS) -> EdgeSchedule:
    """Replay RunningStats' running min/max over the batches in order."""
    epoch = np.full(len(moments), -1, dtype=np.int64)
    edges: list[np.ndarray] = []
    lo = hi = None
    for b, m in enumerate(moments):
        if m.n == 0:
            continue
        if lo is None:
            lo, hi = m.min.copy(), m.max.copy()
            edges.append(linspace_edges(lo - EDGE_EPS, hi + EDGE_EPS, num_bins))
        else:
            if len(m.min) != len(lo):
                raise ValueError(f"vectors of length {len(m.min)} do not match the running stats' length {len(lo)}")
            widened = bool(np.any(m.max > hi) or np.any(m.min < lo))
            hi, lo = np.maximum(hi, m.max), np.minimum(lo, m.min)
            if widened:
                edges.append(linspace_edges(lo, hi, num_bins))
        epoch[b] = len(edges) - 1
    return EdgeSchedule(epoch, edges)


@dataclass
class PartialStats:
    """Histograms of some of the batches, one per edge epoch ({epoch: float64 (dim, B)}); mergeable by sum
    (exact: integer counts) across threads or processes, in any order."""

    hists: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, batch: np.ndarray, batch_number: int, schedule: EdgeSchedule) -> None:
        """Histogram batch `batch_number` (as numbered in the schedule) on its epoch's edges."""
        e = int(schedule.epoch_of_batch[batch_number])
        if e < 0:
            return
        edges = schedule.edges[e]
        h = self.hists.get(e)
        if h is None:
            h = self.hists[e] = np.zeros((edges.shape[0], edges.shape[1] - 1))
        histogram_update(h, edges, np.asarray(batch, np.float64).reshape(-1, edges.shape[0]))

    def merge(self, other: PartialStats) -> PartialStats:
        out = {e: h.copy() for e, h in self.hists.items()}
        for e, h in other.hists.items():
            if e in out:
                out[e] += h
            else:
                out[e] = h.copy()
        return PartialStats(out)


@dataclass(frozen=True)
class ReducedStats:
    """RunningStats' state after all batches: count, float64 (dim,) mean / mean_sq / min / max, hist (dim, B),
    edges (dim, B+1)."""

    count: int
    mean: np.ndarray
    mean_sq: np.ndarray
    min: np.ndarray
    max: np.ndarray
    hist: np.ndarray
    edges: np.ndarray

    def quantile(self, q: float) -> np.ndarray:
        return quantiles(self.hist, self.edges, self.count, q)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(0.0, self.mean_sq - self.mean**2))


def reduce_stats(moments: Sequence[BatchMoments], schedule: EdgeSchedule, partial: PartialStats) -> ReducedStats:
    """Combine per-batch moments (in batch order) and the merged histograms into RunningStats' final state."""
    first = next((m for m in moments if m.n), None)
    if first is None:
        raise ValueError("Cannot compute statistics for less than 2 vectors (got 0).")
    dim = len(first.mean)
    count, mean, mean_sq = 0, np.zeros(dim), np.zeros(dim)
    lo, hi = first.min.copy(), first.max.copy()
    for m in moments:
        if m.n == 0:
            continue
        lo, hi = np.minimum(lo, m.min), np.maximum(hi, m.max)
        count += m.n
        frac = m.n / count
        mean += (m.mean - mean) * frac
        mean_sq += (m.mean_sq - mean_sq) * frac
    hist = np.zeros((dim, schedule.edges[0].shape[1] - 1))
    for e, edges in enumerate(schedule.edges):
        if e:
            hist = rebin(hist, schedule.edges[e - 1], edges)
        if e in partial.hists:
            hist += partial.hists[e]
    return ReducedStats(count, mean, mean_sq, lo, hi, hist, schedule.edges[-1])
