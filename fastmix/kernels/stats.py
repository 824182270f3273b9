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


@dataclass(frozen=True)
class EdgeGrid:
    """What the fast path of `bin_indices` needs about `edges` (float64 (dim,) each): lo, hi, 1/step (0 where
    not uniform), tol (bins of slack for rounding and edge deviation), uniform (bool)."""

    lo: np.ndarray
    hi: np.ndarray
    inv_step: np.ndarray
    tol: np.ndarray
    uniform: np.ndarray


def edge_grid(edges: np.ndarray) -> EdgeGrid:
    """Measure how far `edges` (dim, B+1) deviate from lo + j * step; rows within 1e-3 bin are "uniform"."""
    nb = edges.shape[1] - 1
    lo, hi = edges[:, 0].copy(), edges[:, -1].copy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        step = (hi - lo) / nb
        dev = np.max(np.abs(edges - (lo[:, None] + np.arange(nb + 1) * step[:, None])), axis=1)
        ulp = np.spacing(np.maximum(np.abs(lo), np.abs(hi)))
        tol = (dev + 4 * ulp) / step + 1e-9
        uniform = np.isfinite(tol) & (step > 0) & (tol < 1e-3)
        inv = np.where(uniform, 1.0 / np.where(uniform, step, 1.0), 0.0)
    return EdgeGrid(lo, hi, inv, np.where(uniform, tol, 1.0), uniform)


def bin_indices(edges: np.ndarray, x: np.ndarray, grid: EdgeGrid | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bins of values `x` (float64 (n, dim)) under per-dimension `edges` (float64 (dim, B+1), non-decreasing).

    Returns (idx int64 (n, dim) in 0..B-1, valid bool (n, dim)) with np.histogram's rule: idx is the last j < B
    with edges[d, j] <= x (x == edges[d, -1] goes to bin B-1); valid is False outside the edges and for NaN.

    Fast path: t = (x - lo) / step; floor(t) is the bin whenever t's fractional part is farther from 0 and 1
    than the rounding error plus the largest deviation of `edges` from lo + j * step (`edge_grid`, pass it
    when binning many batches on the same edges). Values closer to an edge, and rows that are not uniform
    (zero width, repeated edges), go through np.searchsorted on the actual edges: the result is always exact.
    """
    nb = edges.shape[1] - 1
    g_ = edge_grid(edges) if grid is None else grid
    with np.errstate(invalid="ignore", over="ignore"):
        t = x - g_.lo
        t *= g_.inv_step
        g = np.floor(t)
        t -= g  # fractional part
        ok = t > g_.tol
        ok &= t < 1.0 - g_.tol
    valid = x >= g_.lo
    valid &= x <= g_.hi
    g[~valid] = 0
    idx = g.astype(np.int64)
    slow = valid & ~(ok & g_.uniform)
    if slow.any():
        for d in np.flatnonzero(slow.any(axis=0)):
            rows = slow[:, d]
            idx[rows, d] = np.searchsorted(edges[d], x[rows, d], side="right") - 1
    np.minimum(idx, nb - 1, out=idx)
    return idx, valid


def histogram_update(hist: np.ndarray, edges: np.ndarray, batch: np.ndarray,
                     weights: np.ndarray | None = None, grid: EdgeGrid | None = None) -> np.ndarray:
    """Add the histogram of `batch` ((n, dim); cast to float64) on `edges` ((dim, B+1)) to `hist` (float64
    (dim, B)) in place, all dimensions in one bincount; `weights` (n, dim) as np.histogram's. Returns hist."""
    x = np.asarray(batch, dtype=np.float64).reshape(-1, edges.shape[0])
    dim, nb = hist.shape
    idx, valid = bin_indices(edges, x, grid)
    idx += np.arange(dim, dtype=np.int64) * nb
    idx[~valid] = dim * nb  # one extra bin collects what np.histogram drops (cheaper than compressing)
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(x.shape).ravel()
    hist += np.bincount(idx.ravel(), weights=w, minlength=dim * nb + 1)[:dim * nb].reshape(dim, nb)
    return hist


def histogram_sorted(hist: np.ndarray, edges: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """`histogram_update` without weights by np.histogram's own algorithm (sort, then count by searchsorted of
    the edges), all dimensions sorted in one call. Faster than the bincount path on CPUs with a SIMD sort
    (numpy >= 2 on AVX-512/AVX2); same counts. Returns hist (updated in place)."""
    xt = np.sort(np.asarray(batch, dtype=np.float64).reshape(-1, edges.shape[0]).T, axis=1)
    for d in range(edges.shape[0]):
        cum = np.concatenate((xt[d].searchsorted(edges[d, :-1], "left"), xt[d].searchsorted(edges[d, -1:], "right")))
        hist[d] += np.diff(cum)
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


class StatsAccumulator:
    """RunningStats' computation (same state, bit for bit) with the histogram work batched.

    `update(batch)` does what RunningStats.update does, except that rows are buffered and binned in one
    call per `flush_rows` rows (`method`: "sort" → `histogram_sorted`, "bincount" → `histogram_update`) — or earlier, when a batch widens the range: the buffered rows
    are then binned on the current edges before the rebin, exactly as RunningStats binned them. Counts are
    integers, so binning them later changes nothing.
    """

    def __init__(self, num_bins: int = NUM_BINS, flush_rows: int = 1 << 18, method: str = "sort") -> None:
        if method not in ("sort", "bincount"):
            raise ValueError(f"method should be 'sort' or 'bincount', got {method!r}")
        self.num_bins, self.flush_rows, self.method = int(num_bins), int(flush_rows), method
        self._grid: EdgeGrid | None = None
        self.count = 0
        self.mean = self.mean_sq = self.min = self.max = self.hist = self.edges = None
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def update(self, batch: np.ndarray) -> None:
        """Add vectors: every axis of `batch` but the last is a batch axis."""
        x = np.asarray(batch, dtype=np.float64)
        x = x.reshape(-1, x.shape[-1])
        n, dim = x.shape
        if n == 0:
            return
        if self.count == 0:
            self.mean, self.mean_sq = np.zeros(dim), np.zeros(dim)
            self.min, self.max = x.min(axis=0), x.max(axis=0)
            self.hist = np.zeros((dim, self.num_bins))
            self.edges = linspace_edges(self.min - EDGE_EPS, self.max + EDGE_EPS, self.num_bins)
        else:
            if dim != self.mean.size:
                raise ValueError(f"vectors of length {dim} do not match the running stats' length {self.mean.size}")
            new_min, new_max = x.min(axis=0), x.max(axis=0)
            widened = bool(np.any(new_max > self.max) or np.any(new_min < self.min))
            self.max, self.min = np.maximum(self.max, new_max), np.minimum(self.min, new_min)
            if widened:
                self.flush()
                new_edges = linspace_edges(self.min, self.max, self.num_bins)
                self.hist, self.edges = rebin(self.hist, self.edges, new_edges), new_edges
                self._grid = None
        self.count += n
        frac = n / self.count
        self.mean += (x.mean(axis=0) - self.mean) * frac
        self.mean_sq += ((x**2).mean(axis=0) - self.mean_sq) * frac
        self._pending.append(x)
        self._pending_rows += n
        if self._pending_rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Bin the buffered rows."""
        if self._pending:
            rows = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
            self._pending, self._pending_rows = [], 0
            if self.method == "sort":
                histogram_sorted(self.hist, self.edges, rows)
            else:
                if self._grid is None:
                    self._grid = edge_grid(self.edges)
                histogram_update(self.hist, self.edges, rows, grid=self._grid)

    def result(self) -> ReducedStats:
        """The state so far (RunningStats' count, mean, mean_sq, min, max, hist, edges)."""
        if self.count == 0:
            raise ValueError("Cannot compute statistics for less than 2 vectors (got 0).")
        self.flush()
        return ReducedStats(self.count, self.mean.copy(), self.mean_sq.copy(), self.min.copy(), self.max.copy(),
                            self.hist.copy(), self.edges.copy())


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
    (exact: integer counts) across threads or processes, in any order. Rows are buffered per epoch and
    binned `flush_rows` at a time (`histogram_sorted`)."""

    hists: dict[int, np.ndarray] = field(default_factory=dict)
    flush_rows: int = 1 << 18
    _pending: dict[int, list[np.ndarray]] = field(default_factory=dict, repr=False)
    _edges: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def add(self, batch: np.ndarray, batch_number: int, schedule: EdgeSchedule) -> None:
        """Histogram batch `batch_number` (as numbered in the schedule) on its epoch's edges."""
        e = int(schedule.epoch_of_batch[batch_number])
        if e < 0:
            return
        edges = schedule.edges[e]
        self._edges[e] = edges
        rows = self._pending.setdefault(e, [])
        rows.append(np.asarray(batch, np.float64).reshape(-1, edges.shape[0]))
        if sum(len(r) for r in rows) >= self.flush_rows:
            self._flush(e)

    def _flush(self, e: int) -> None:
        rows = self._pending.pop(e, [])
        if rows:
            edges = self._edges[e]
            h = self.hists.get(e)
            if h is None:
                h = self.hists[e] = np.zeros((edges.shape[0], edges.shape[1] - 1))
            histogram_sorted(h, edges, np.concatenate(rows))

    def flush(self) -> PartialStats:
        for e in list(self._pending):
            self._flush(e)
        return self

    def __getstate__(self) -> dict:  # send only finished histograms between processes
        self.flush()
        return {"hists": self.hists, "flush_rows": self.flush_rows, "_pending": {}, "_edges": {}}

    def merge(self, other: PartialStats) -> PartialStats:
        out = {e: h.copy() for e, h in self.flush().hists.items()}
        for e, h in other.flush().hists.items():
            if e in out:
                out[e] += h
            else:
                out[e] = h.copy()
        return PartialStats(out, self.flush_rows)


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
        if e in partial.flush().hists:
            hist += partial.hists[e]
    return ReducedStats(count, mean, mean_sq, lo, hi, hist, schedule.edges[-1])
