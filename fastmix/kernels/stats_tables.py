"""The exact parallel reduction of `RunningStats` over many batches at once (numba kernels + numpy).

`fastmix.kernels.stats` holds the per-batch form (`batch_moments`, `edge_schedule`, `PartialStats`,
`reduce_stats`); this module does the same over tables of batches, for whole chunks of rows per call:

1. `moments_table(x, starts)`: rows `x` (float (N, dim)) cut into batches at `starts` (int64 (nb + 1,), batch k
   is rows starts[k]:starts[k+1]) → `MomentsTable` (n (nb,), mean / mean_sq / min / max float64 (nb, dim)),
   each as `batch_moments` computes it (sums in row order, then divided by n).
2. `schedule_table(tables)`: the batches' tables in batch order → `TableSchedule`: which edges each batch is
   binned on (epoch 0 from the first non-empty batch, widened by EDGE_EPS; a new epoch where the running
   min/max widens), as RunningStats rebins.
3. `HistFold`: histograms batches on their epoch's edges (`histogram_exact`, np.histogram's bins bit for bit)
   and rebins its running histogram at each epoch change, so one process sends one (dim, B) histogram for
   its whole share; `HistFold.merge` continues the rebin chain across shares in batch order. Rebinning moves
   integer counts (float64, exact below 2**53), so it is linear and the folded result equals the sequential one.
4. `reduce_table(tables, schedule, hist)`: replays the mean updates in batch order → `ReducedStats`, equal to
   RunningStats' state after `update` on the same batches, whatever the number of shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from fastmix.kernels.stats import EDGE_EPS, NUM_BINS, ReducedStats, linspace_edges


@njit(cache=True, nogil=True)
def _moments(x, starts, mean, mean_sq, lo, hi):  # pragma: no cover - compiled
    dim = x.shape[1]
    s = np.zeros(dim)
    s2 = np.zeros(dim)
    mn = np.zeros(dim)
    mx = np.zeros(dim)
    for k in range(starts.shape[0] - 1):
        a, b = starts[k], starts[k + 1]
        if b <= a:
            continue
        for d in range(dim):  # sums in row order per dimension, as numpy's reduction over axis 0
            s[d] = 0.0
            s2[d] = 0.0
            mn[d] = x[a, d]
            mx[d] = x[a, d]
        for i in range(a, b):
            for d in range(dim):
                v = np.float64(x[i, d])
                s[d] += v
                s2[d] += v * v
                mn[d] = min(mn[d], v)
                mx[d] = max(mx[d], v)
        for d in range(dim):
            mean[k, d] = s[d] / (b - a)
            mean_sq[k, d] = s2[d] / (b - a)
            lo[k, d] = mn[d]
            hi[k, d] = mx[d]


@njit(cache=True, nogil=True)
def _histogram(hist, edges, inv_step, x, w):  # pragma: no cover - compiled
    nb = hist.shape[1]
    weighted = w.shape[0] > 0
    for i in range(x.shape[0]):
        for d in range(x.shape[1]):
            v = np.float64(x[i, d])
            e0 = edges[d, 0]
            if not (v >= e0 and v <= edges[d, nb]):
                continue  # outside the edges (or NaN): np.histogram drops it
            t = (v - e0) * inv_step[d]
            j = nb - 1
            if t < nb - 1:
                j = int(t)
            while j > 0 and v < edges[d, j]:
                j -= 1
            while j < nb - 1 and v >= edges[d, j + 1]:
                j += 1
            if weighted:
                hist[d, j] += w[i, d]
            else:
                hist[d, j] += 1.0


@njit(cache=True, nogil=True)
def _running_mean(n, bm, out):  # pragma: no cover - compiled
    count = 0
    for k in range(n.shape[0]):
        if n[k] == 0:
            continue
        count += n[k]
        frac = n[k] / count
        for d in range(out.shape[0]):
            out[d] += (bm[k, d] - out[d]) * frac


def histogram_exact(hist: np.ndarray, edges: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None
                    ) -> np.ndarray:
    """Add np.histogram's counts of each column of `x` (float (N, dim)) on `edges[d]` (float64 (dim, B+1),
    non-decreasing) to `hist` (float64 (dim, B)) in place: bin j holds edges[j] <= v < edges[j+1], the last bin
    also v == edges[-1]; values outside the edges dropped; `weights` (float64 (N, dim)) summed in row order as
    np.histogram sums them. A first guess from the uniform step, then corrected against the actual edges: exact
    for any edges. Returns hist."""
    x = np.ascontiguousarray(x)
    if x.ndim != 2 or x.shape[1] != edges.shape[0]:
        raise ValueError(f"values of shape {x.shape} do not match edges of {edges.shape[0]} dimensions")
    nb = edges.shape[1] - 1
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        width = edges[:, -1] - edges[:, 0]
        inv = np.where(width > 0, nb / np.where(width > 0, width, 1.0), 0.0)
    inv[~np.isfinite(inv)] = 0.0
    w = np.zeros((0, x.shape[1])) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    _histogram(hist, np.ascontiguousarray(edges, dtype=np.float64), inv, x, w)
    return hist


def rebin_exact(hist: np.ndarray, old_edges: np.ndarray, new_edges: np.ndarray) -> np.ndarray:
    """`fastmix.kernels.stats.rebin` (each old bin's count placed at its left edge in the new bins), compiled."""
    out = np.zeros((new_edges.shape[0], new_edges.shape[1] - 1))
    return histogram_exact(out, new_edges, old_edges[:, :-1].T, weights=hist.T)


@dataclass(frozen=True)
class MomentsTable:
    """Per-batch n (int64 (nb,)) and float64 (nb, dim) mean, mean of squares, min, max (rows of empty batches
    are 0 and ignored)."""

    n: np.ndarray
    mean: np.ndarray
    mean_sq: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @staticmethod
    def concat(tables: Sequence[MomentsTable]) -> MomentsTable:
        return MomentsTable(*(np.concatenate([getattr(t, f) for t in tables]) for f in
                              ("n", "mean", "mean_sq", "min", "max")))


def moments_table(x: np.ndarray, starts: np.ndarray) -> MomentsTable:
    """`MomentsTable` of the batches rows starts[k]:starts[k+1] of `x` (float (N, dim))."""
    x = np.ascontiguousarray(x)
    starts = np.asarray(starts, dtype=np.int64)
    nb, dim = len(starts) - 1, x.shape[1]
    out = [np.zeros((nb, dim)) for _ in range(4)]
    _moments(x, starts, *out)
    return MomentsTable(np.diff(starts), *out)


@dataclass(frozen=True)
class TableSchedule:
    """epoch_of_batch: int64 (nb,), -1 for empty batches; lo, hi: float64 (epochs, dim), the edges' ends of
    each epoch (epoch 0's already widened by EDGE_EPS); `edges(e)` gives epoch e's float64 (dim, B+1)."""

    epoch_of_batch: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    num_bins: int = NUM_BINS

    @property
    def num_epochs(self) -> int:
        return len(self.lo)

    def edges(self, e: int) -> np.ndarray:
        return linspace_edges(self.lo[e], self.hi[e], self.num_bins)


def schedule_table(table: MomentsTable, num_bins: int = NUM_BINS) -> TableSchedule:
    """Replay RunningStats' running min/max over the batches of `table` (in batch order)."""
    epoch = np.full(len(table.n), -1, dtype=np.int64)
    live = np.flatnonzero(table.n > 0)
    if live.size == 0:
        raise ValueError("Cannot compute statistics for less than 2 vectors (got 0).")
    run_lo = np.minimum.accumulate(table.min[live], axis=0)
    run_hi = np.maximum.accumulate(table.max[live], axis=0)
    widened = np.zeros(live.size, dtype=bool)
    widened[1:] = np.any(run_lo[1:] < run_lo[:-1], axis=1) | np.any(run_hi[1:] > run_hi[:-1], axis=1)
    epoch[live] = np.cumsum(widened)
    starts = np.flatnonzero(widened)
    lo = np.concatenate([run_lo[:1] - EDGE_EPS, run_lo[starts]])
    hi = np.concatenate([run_hi[:1] + EDGE_EPS, run_hi[starts]])
    return TableSchedule(epoch, lo, hi, int(num_bins))


class HistFold:
    """The histogram of a contiguous run of batches, on the edges of the last epoch it reached (`epoch`; -1
    before any row): `add` rows of one epoch (epochs non-decreasing), rebinned through every epoch between."""

    def __init__(self, schedule: TableSchedule) -> None:
        self.schedule = schedule
        self.epoch = -1
        self.hist: np.ndarray | None = None
        self._edges: np.ndarray | None = None

    def advance(self, epoch: int) -> None:
        """Rebin the histogram through epochs self.epoch+1 .. epoch (RunningStats' rebins, in order)."""
        if epoch < self.epoch:
            raise ValueError(f"epochs must not decrease ({self.epoch} -> {epoch})")
        if self.hist is None:
            self.epoch, self._edges = epoch, self.schedule.edges(epoch)
            self.hist = np.zeros((self._edges.shape[0], self._edges.shape[1] - 1))
            return
        for e in range(self.epoch + 1, epoch + 1):
            new = self.schedule.edges(e)
            self.hist, self._edges = rebin_exact(self.hist, self._edges, new), new
        self.epoch = epoch

    def add(self, x: np.ndarray, epoch: int) -> None:
        """Histogram rows `x` (float (N, dim)) of batches binned on `epoch`'s edges (-1: empty, skipped)."""
        if epoch < 0 or len(x) == 0:
            return
        self.advance(epoch)
        histogram_exact(self.hist, self._edges, x)

    def merge(self, later: HistFold) -> HistFold:
        """This run followed by the run `later` (its batches all after this run's): one fold (self, updated)."""
        if later.hist is None:
            return self
        if self.hist is None:
            self.epoch, self.hist, self._edges = later.epoch, later.hist.copy(), later._edges
            return self
        self.advance(later.epoch)
        self.hist += later.hist
        return self

    def __getstate__(self) -> dict:  # sent between processes: the schedule is known on both sides
        return {"epoch": self.epoch, "hist": self.hist}

    def __setstate__(self, state: dict) -> None:
        self.schedule, self.epoch, self.hist, self._edges = None, state["epoch"], state["hist"], None

    def attach(self, schedule: TableSchedule) -> HistFold:
        """After unpickling: the schedule again (and the current edges)."""
        self.schedule = schedule
        if self.hist is not None:
            self._edges = schedule.edges(self.epoch)
        return self


def reduce_table(table: MomentsTable, schedule: TableSchedule, fold: HistFold) -> ReducedStats:
    """RunningStats' final state from all batches' moments (in batch order) and the folded histogram."""
    live = table.n > 0
    mean, mean_sq = np.zeros(table.mean.shape[1]), np.zeros(table.mean.shape[1])
    _running_mean(table.n, table.mean, mean)
    _running_mean(table.n, table.mean_sq, mean_sq)
    fold.advance(schedule.num_epochs - 1)
    return ReducedStats(int(table.n.sum()), mean, mean_sq, table.min[live].min(axis=0), table.max[live].max(axis=0),
                        fold.hist, schedule.edges(schedule.num_epochs - 1))


__all__ = ["HistFold", "MomentsTable", "TableSchedule", "histogram_exact", "moments_table", "rebin_exact", "reduce_table",
           "schedule_table"]
