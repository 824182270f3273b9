"""fastmix.kernels.stats against numpy's np.histogram / np.linspace and today's np.histogram-based RunningStats:
identical numbers (exact equality), including values on bin edges, at the range ends, outside it, NaN,
degenerate edges, and the parallel (per-process partial) reduction."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fastmix.kernels import stats as sk
from fastmix.openpi.norm_stats import NormStats


def edge_heavy(rng: np.random.Generator, edges: np.ndarray, n: int) -> np.ndarray:
    """(n, dim) values: half drawn uniformly inside the edges, half exactly on random edges (both ends too)."""
    dim, nb1 = edges.shape
    x = rng.uniform(edges[:, 0], edges[:, -1], size=(n, dim))
    on = rng.random((n, dim)) < 0.5
    j = rng.integers(0, nb1, size=(n, dim))
    x[on] = edges[np.arange(dim)[None, :].repeat(n, 0)[on], j[on]]
    x[0], x[1] = edges[:, 0], edges[:, -1]
    return x


class RunningStats:
    """fastmix's former RunningStats, one np.histogram per dimension: the reference the kernels must equal
    (fastmix.openpi.norm_stats.RunningStats now runs on the kernels; test_norm_stats checks it against this class's
    numbers through the public API)."""

    NUM_BINS = 5000

    def __init__(self) -> None:
        self._count = 0
        self._mean = self._mean_sq = self._min = self._max = None
        self._hist: list[np.ndarray] = []
        self._edges: list[np.ndarray] = []

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, dtype=np.float64)
        batch = batch.reshape(-1, batch.shape[-1])
        n, dim = batch.shape
        if n == 0:
            return
        if self._count == 0:
            self._mean, self._mean_sq = np.zeros(dim), np.zeros(dim)
            self._min, self._max = batch.min(axis=0), batch.max(axis=0)
            self._hist = [np.zeros(self.NUM_BINS) for _ in range(dim)]
            self._edges = [np.linspace(self._min[i] - 1e-10, self._max[i] + 1e-10, self.NUM_BINS + 1)
                           for i in range(dim)]
        else:
            new_min, new_max = batch.min(axis=0), batch.max(axis=0)
            widened = bool(np.any(new_max > self._max) or np.any(new_min < self._min))
            self._max, self._min = np.maximum(self._max, new_max), np.minimum(self._min, new_min)
            if widened:
                for i in range(len(self._hist)):
                    new_edges = np.linspace(self._min[i], self._max[i], self.NUM_BINS + 1)
                    self._hist[i] = np.histogram(self._edges[i][:-1], bins=new_edges, weights=self._hist[i])[0]
                    self._edges[i] = new_edges
        self._count += n
        frac = n / self._count
        self._mean += (batch.mean(axis=0) - self._mean) * frac
        self._mean_sq += ((batch**2).mean(axis=0) - self._mean_sq) * frac
        for i in range(dim):
            self._hist[i] += np.histogram(batch[:, i], bins=self._edges[i])[0]

    @property
    def count(self) -> int:
        return self._count

    def _quantile(self, q: float) -> np.ndarray:
        target = q * self._count
        return np.array([edges[np.searchsorted(np.cumsum(h), target)]
                         for h, edges in zip(self._hist, self._edges, strict=True)])

    def get_statistics(self) -> NormStats:
        std = np.sqrt(np.maximum(0.0, self._mean_sq - self._mean**2))
        return NormStats(mean=self._mean.copy(), std=std, q01=self._quantile(0.01), q99=self._quantile(0.99))


def test_norm_stats_running_stats_equals_the_reference():
    """fastmix.openpi.norm_stats.RunningStats (on the kernels) gives the reference's numbers bit for bit, over batches
    that widen the range several times, with repeated values on bin edges."""
    from fastmix.openpi.norm_stats import RunningStats as Fast

    rng = np.random.default_rng(5)
    batches = [rng.standard_normal((64, 10, 7)) * (1 + i) + i for i in range(12)]
    batches.append(np.repeat(batches[0][:1], 50, axis=0))
    ref, fast = RunningStats(), Fast()
    for b in batches:
        ref.update(b.astype(np.float32))
        fast.update(b.astype(np.float32))
    a, b = ref.get_statistics(), fast.get_statistics()
    for name in ("mean", "std", "q01", "q99"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_linspace_edges_equal_per_dim_linspace():
    rng = np.random.default_rng(0)
    lo, hi = rng.normal(size=6) * 100, rng.normal(size=6) * 100 + 300
    lo[0] = hi[0] = 5.0
    e = sk.linspace_edges(lo, hi, 5000)
    for d in range(6):
        np.testing.assert_array_equal(e[d], np.linspace(lo[d], hi[d], 5001))


@pytest.mark.parametrize("num_bins", [7, 5000])
def test_histogram_update_equals_np_histogram(num_bins):
    rng = np.random.default_rng(1)
    lo = np.array([-1.0, 0.0, 1e-3, -7.5, 1e7 - 1e-10, 3.0])
    hi = np.array([1.0, 1e-9, 2e-3, 250.0, 1e7 + 1e-10, 3.0])  # tiny span, degenerate edges, zero span
    edges = sk.linspace_edges(lo, hi, num_bins)
    x = edge_heavy(rng, edges, 4000)
    x[5:40] = rng.normal(size=(35, 6)) * 1e3  # far outside on some dims
    x[50, :] = np.nan
    x[51, :] = np.inf
    hist = np.zeros((6, num_bins))
    sk.histogram_update(hist, edges, x)
    for d in range(6):
        np.testing.assert_array_equal(hist[d], np.histogram(x[:, d], bins=edges[d])[0], err_msg=f"dim {d}")
    np.testing.assert_array_equal(sk.histogram_sorted(np.zeros((6, num_bins)), edges, x), hist)
    w = rng.integers(0, 50, size=x.shape).astype(np.float64)
    weighted = sk.histogram_update(np.zeros((6, num_bins)), edges, x, weights=w)
    for d in range(6):
        np.testing.assert_array_equal(weighted[d], np.histogram(x[:, d], bins=edges[d], weights=w[:, d])[0])


def test_rebin_equals_np_histogram_of_left_edges():
    rng = np.random.default_rng(2)
    old = sk.linspace_edges(np.array([0.0, -1.0]) - 1e-10, np.array([1.0, 1.0]) + 1e-10)
    new = sk.linspace_edges(np.array([-0.5, -1.0]), np.array([1.0, 3.0]))  # dim 1 widened at the top only
    hist = rng.integers(0, 9, size=(2, 5000)).astype(np.float64)
    got = sk.rebin(hist, old, new)
    for d in range(2):
        np.testing.assert_array_equal(got[d], np.histogram(old[d, :-1], bins=new[d], weights=hist[d])[0])


def batches_with_widening(seed: int) -> list[np.ndarray]:
    """Batches of 5 dims (a constant one among them) whose range widens several times, many values on the
    current bin edges, and an empty batch."""
    rng = np.random.default_rng(seed)
    out = []
    lo, hi = np.array([-1.0, 0.0, 2.0, 0.0, 10.0]), np.array([1.0, 1.0, 2.0, 5.0, 11.0])
    for b in range(12):
        if b in (3, 7, 10):  # widen
            lo, hi = lo - rng.random(5) * 2, hi + rng.random(5) * 3
            lo[2] = hi[2] = 2.0
        edges = sk.linspace_edges(lo, hi, 5000)
        n = int(rng.integers(50, 400))
        x = edge_heavy(rng, edges, n) if b % 2 else rng.uniform(lo, hi, size=(n, 5))
        x[:, 2] = 2.0
        out.append(x.astype(np.float32 if b == 5 else np.float64))
    out.insert(6, np.zeros((0, 5)))
    return out


def reference_stats(batches) -> RunningStats:
    ref = RunningStats()
    for b in batches:
        ref.update(b)
    return ref


@pytest.mark.parametrize("seed", [0, 1])
def test_norm_stats_running_stats_identical_on_widening_batches(seed):
    """fastmix.openpi.norm_stats.RunningStats (on StatsAccumulator) against the reference, batches that widen the
    range again and again."""
    from fastmix.openpi.norm_stats import RunningStats as Fast

    batches = batches_with_widening(seed)
    ref, fast = reference_stats(batches), Fast()
    for b in batches:
        fast.update(b)
    a, b = ref.get_statistics(), fast.get_statistics()
    for f in ("mean", "std", "q01", "q99"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


@pytest.mark.parametrize("method", ["sort", "bincount"])
@pytest.mark.parametrize("flush_rows", [1, 500, 1 << 16])
def test_accumulator_identical(flush_rows, method):
    batches = batches_with_widening(4)
    ref, acc = reference_stats(batches), sk.StatsAccumulator(flush_rows=flush_rows, method=method)
    for b in batches:
        acc.update(b)
    red, st = acc.result(), ref.get_statistics()
    assert red.count == ref.count
    np.testing.assert_array_equal(red.hist, np.stack(ref._hist))
    np.testing.assert_array_equal(red.edges, np.stack(ref._edges))
    for got, want in ((red.mean, st.mean), (red.std, st.std), (red.quantile(0.01), st.q01),
                      (red.quantile(0.99), st.q99)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", [0, 3])
def test_parallel_partials_reduce_to_identical_stats(seed):
    batches = batches_with_widening(seed)
    ref = reference_stats(batches)
    moments = [sk.batch_moments(b) for b in batches]  # pass 1 (anywhere, any order)
    schedule = sk.edge_schedule(moments)
    assert len(schedule.edges) >= 4  # the first batch and at least three widenings (rebins)
    # pass 2: three "processes" each histogram an interleaved share of the batches; merged in another order
    parts = [sk.PartialStats(flush_rows=300) for _ in range(3)]
    for i, b in enumerate(batches):
        parts[i % 3].add(b, i, schedule)
    parts[1] = pickle.loads(pickle.dumps(parts[1]))  # as sent back from a worker process
    merged = parts[2].merge(parts[0]).merge(parts[1])
    red = sk.reduce_stats(moments, schedule, merged)
    assert red.count == ref.count
    np.testing.assert_array_equal(red.hist, np.stack(ref._hist))
    np.testing.assert_array_equal(red.edges, np.stack(ref._edges))
    st = ref.get_statistics()
    np.testing.assert_array_equal(red.mean, st.mean)
    np.testing.assert_array_equal(red.std, st.std)
    np.testing.assert_array_equal(red.quantile(0.01), st.q01)
    np.testing.assert_array_equal(red.quantile(0.99), st.q99)
    np.testing.assert_array_equal(red.min, ref._min)
    np.testing.assert_array_equal(red.max, ref._max)


# ------------------------------------------------------------ the table form (fastmix.kernels.stats_tables)
from fastmix.kernels import stats_tables as st  # noqa: E402


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("num_bins", [1, 7, 5000])
def test_histogram_exact_equals_np_histogram(num_bins, dtype):
    """Values on every kind of edge, outside the range, NaN; zero-width and repeated edges; float32 values."""
    rng = np.random.default_rng(num_bins)
    lo = np.array([-1.0, 0.0, 3.0, 1e-9, -5.0])
    hi = np.array([1.0, 1e-12, 3.0, 2e-9, 7.0])
    edges = sk.linspace_edges(lo, hi, num_bins)
    x = edge_heavy(rng, edges, 3000)
    x[5:20] = rng.uniform(-10, 10, size=(15, 5))
    x[20, 1] = np.nan
    x = x.astype(dtype)
    h = st.histogram_exact(np.zeros((5, num_bins)), edges, x)
    want = np.stack([np.histogram(x[:, d].astype(np.float64), bins=edges[d])[0] for d in range(5)])
    np.testing.assert_array_equal(h, want)
    w = rng.integers(0, 9, size=x.shape).astype(np.float64)
    hw = st.histogram_exact(np.zeros((5, num_bins)), edges, x, weights=w)
    want_w = np.stack([np.histogram(x[:, d].astype(np.float64), bins=edges[d], weights=w[:, d])[0] for d in range(5)])
    np.testing.assert_array_equal(hw, want_w)


def test_rebin_exact_equals_rebin():
    rng = np.random.default_rng(2)
    old = sk.linspace_edges(np.array([-1.0, 0.0, 2.0]), np.array([1.0, 3.0, 2.0]))
    new = sk.linspace_edges(np.array([-1.5, 0.0, 1.0]), np.array([1.0, 3.5, 2.0]))
    hist = rng.integers(0, 50, size=(3, 5000)).astype(np.float64)
    np.testing.assert_array_equal(st.rebin_exact(hist, old, new), sk.rebin(hist, old, new))


def test_moments_table_equals_batch_moments():
    batches = [b for b in batches_with_widening(1) if len(b)]
    x = np.concatenate([b.astype(np.float64) for b in batches])
    starts = np.r_[0, np.cumsum([len(b) for b in batches])]
    table = st.moments_table(x, starts)
    for k, b in enumerate(batches):
        m = sk.batch_moments(b)
        for f in ("mean", "mean_sq", "min", "max"):
            np.testing.assert_array_equal(getattr(table, f)[k], getattr(m, f), err_msg=f"batch {k} {f}")
        assert table.n[k] == m.n


@pytest.mark.parametrize("seed", [0, 3, 4])
@pytest.mark.parametrize("shares", [1, 2, 5])
def test_table_reduction_in_shares_equals_the_reference(seed, shares):
    """Batches cut into `shares` contiguous runs (one per process): moments per run, one schedule, one folded
    histogram per run (pickled as sent back), merged in order — RunningStats' state bit for bit."""
    batches = batches_with_widening(seed)
    ref = reference_stats(batches)
    rows = [b.reshape(-1, b.shape[-1]).astype(np.float64) for b in batches]
    cuts = np.linspace(0, len(rows), shares + 1).astype(int)
    tables = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        starts = np.r_[0, np.cumsum([len(r) for r in rows[a:b]])]
        tables.append(st.moments_table(np.concatenate(rows[a:b]) if b > a else np.zeros((0, 5)), starts))
    table = st.MomentsTable.concat(tables)
    schedule = st.schedule_table(table)
    assert schedule.num_epochs >= 4
    folds = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        fold = st.HistFold(schedule)
        for k in range(a, b):
            fold.add(rows[k], int(schedule.epoch_of_batch[k]))
        folds.append(pickle.loads(pickle.dumps(fold)).attach(schedule))
    merged = folds[0]
    for f in folds[1:]:
        merged = merged.merge(f)
    red = st.reduce_table(table, schedule, merged)
    st_ref = ref.get_statistics()
    assert red.count == ref.count
    np.testing.assert_array_equal(red.hist, np.stack(ref._hist))
    np.testing.assert_array_equal(red.edges, np.stack(ref._edges))
    for got, want in ((red.mean, st_ref.mean), (red.std, st_ref.std), (red.quantile(0.01), st_ref.q01),
                      (red.quantile(0.99), st_ref.q99), (red.min, ref._min), (red.max, ref._max)):
        np.testing.assert_array_equal(got, want)


def test_schedule_of_no_rows_is_an_error():
    table = st.moments_table(np.zeros((0, 3)), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="less than 2 vectors"):
        st.schedule_table(table)
