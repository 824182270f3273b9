"""Sampling controls of large mixtures: per-episode weighting, frame filters (keep-ranges per episode, openpi's
`filter_dict_path` JSON format, trims) and resuming with changed weights.

Every expected probability is computed here, independently, from the episode lengths and the raw keep-ranges
(exact fractions over Python sets), and compared with the mixture's declared probabilities, with the exact
probabilities of the built tables, and with draws (chi-square with scipy, filtered-out frames never drawn).
The draw layout is checked against a numpy-Philox reference of csrc/mixture.hpp; native and numba (with and
without the JIT) give the same streams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fastmix.core import seeds
from fastmix.core.episodes import EpisodeRuns
from fastmix.core.filters import FrameFilter
from fastmix.core.mixture import Mixture
from fastmix.core.sampler import MixtureSampler
from fastmix.errors import ConfigError
from fastmix.loader.loader import MixtureLoader
from fastmix.testing.fakes import FakeReader, FakeSource
from fastmix.tools import equivalence
from tests.loader_args import grouped

M64 = (1 << 64) - 1


# ------------------------------------------------------------------ the independent reference
def kept_sets(lengths: list[int], ranges: dict | None, trim_start: int = 0, trim_end: int = 0) -> list[set[int]]:
    """Per episode (0, 1, ...), the set of kept frames: union of its ranges (all frames without ranges; none
    when the episode is not listed), minus the trims."""
    out = []
    for e, n in enumerate(lengths):
        if ranges is None:
            keep = set(range(n))
        else:
            keep = set()
            for a, b in ranges.get(str(e), ranges.get(e, [])):
                keep |= set(range(a, b))
        out.append({f for f in keep if trim_start <= f < n - trim_end})
    return out


def expected_probabilities(episode_lengths: list[list[int]], weights: list[float], weighting: str,
                           kept: list[list[set[int]]]) -> np.ndarray:
    """float64 (N,): the probability of every frame of the concatenation (episodes stored one after another, in
    frame order), from exact fractions: per_sample ∝ w_i per kept frame; per_dataset w_i/Σw uniform over kept
    frames; per_episode w_i/Σw, 1/E_i per kept episode, 1/M_e per kept frame of it."""
    w = [Fraction(x) for x in weights]
    probs: list[Fraction] = []
    if weighting == "per_sample":
        total = sum(wi * sum(len(k) for k in ks) for wi, ks in zip(w, kept, strict=True))
    for i, lengths in enumerate(episode_lengths):
        m_i = sum(len(k) for k in kept[i])
        e_i = sum(1 for k in kept[i] if k)
        for e, n in enumerate(lengths):
            for f in range(n):
                if f not in kept[i][e]:
                    probs.append(Fraction(0))
                elif weighting == "per_sample":
                    probs.append(w[i] / total)
                elif weighting == "per_dataset":
                    probs.append(w[i] / sum(w) / m_i)
                else:
                    probs.append(w[i] / sum(w) / e_i / len(kept[i][e]))
    assert sum(probs) == 1
    return np.array([float(p) for p in probs])


def chi_square_p(draws: np.ndarray, probs: np.ndarray) -> float:
    """p-value of scipy's chi-square goodness of fit of the draws' counts per frame (frames expecting < 5
    pooled); a draw of a probability-0 frame gives 0."""
    counts = np.bincount(draws, minlength=probs.size)
    if counts[probs == 0].any():
        return 0.0
    exp = probs * draws.size
    small = (exp < 5) & (probs > 0)
    big = exp >= 5
    obs = np.append(counts[big], counts[small].sum())
    e = np.append(exp[big], exp[small].sum())
    if e[-1] < 5:
        obs, e = obs[:-1], e[:-1]
        obs[-1] += counts[small].sum()
        e[-1] += exp[small].sum()
    return float(stats.chisquare(obs, e * obs.sum() / e.sum()).pvalue)


# the mixture used throughout: three datasets of uneven episodes, a filter with overlaps, an empty range, an
# unlisted episode, and trims
EPISODES = [[3, 10, 1, 6, 25], [50], [2, 2, 9, 40]]
RANGES0 = {"0": [[0, 2]], "1": [[2, 6], [4, 9], [5, 5]], "3": [[0, 6]], "4": [[10, 25]]}  # episode 2 not listed
FILTERS = [FrameFilter(RANGES0), None, FrameFilter(trim_start=1, trim_end=2)]
KEPT = [kept_sets(EPISODES[0], RANGES0), kept_sets(EPISODES[1], None), kept_sets(EPISODES[2], None, 1, 2)]
WEIGHTS = [1.0, 2.0, 0.5]
SIZES = [sum(e) for e in EPISODES]


def full_sets(lengths: list[int]) -> list[set[int]]:
    return kept_sets(lengths, None)


# ------------------------------------------------------------------ exact probabilities
@pytest.mark.parametrize("weighting", ["per_sample", "per_dataset", "per_episode"])
@pytest.mark.parametrize("filtered", [False, True])
def test_probabilities_equal_the_independent_ones(weighting: str, filtered: bool) -> None:
    kept = KEPT if filtered else [full_sets(e) for e in EPISODES]
    want = expected_probabilities(EPISODES, WEIGHTS, weighting, kept)
    m = Mixture(SIZES, WEIGHTS, weighting=weighting, episodes=EPISODES, frame_filters=FILTERS if filtered else None)
    np.testing.assert_allclose(m.sample_probabilities(), want, rtol=1e-12, atol=0)
    np.testing.assert_allclose(m.table_sample_probabilities(), want, rtol=1e-12, atol=0)  # the built tables
    assert (m.table_sample_probabilities()[want == 0] == 0).all()
    r = m.reference_weights()
    np.testing.assert_allclose(r / r.sum(), want, rtol=1e-12, atol=0)
    assert m.kept_sizes.tolist() == [sum(len(k) for k in ks) for ks in kept]
    for d in range(3):
        rows = [sum(EPISODES[d][:e]) + f for e, ks in enumerate(kept[d]) for f in sorted(ks)]
        assert m.kept_indices(d).tolist() == rows


def test_per_episode_share_is_the_weight_and_every_episode_is_equally_likely() -> None:
    m = Mixture(SIZES, WEIGHTS, weighting="per_episode", episodes=EPISODES)
    np.testing.assert_allclose(m.shares, np.array(WEIGHTS) / sum(WEIGHTS), rtol=1e-15)
    p = m.frame_probabilities(0)
    bounds = np.cumsum([0, *EPISODES[0]])
    np.testing.assert_allclose([p[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:], strict=True)], 0.2, rtol=1e-13)


@pytest.mark.parametrize("weighting", ["per_sample", "per_dataset", "per_episode"])
@pytest.mark.parametrize("batching", ["random", "stratified"])
@pytest.mark.parametrize("backend", ["native", "numba"])
def test_draws_follow_the_independent_probabilities(weighting: str, batching: str, backend: str) -> None:
    want = expected_probabilities(EPISODES, WEIGHTS, weighting, KEPT)
    s = MixtureSampler(SIZES, WEIGHTS, weighting=weighting, episodes=EPISODES, frame_filters=FILTERS, seed=7,
                       batching=batching, batch_size=64, backend=backend)
    draws = np.concatenate([s.next_indices(64) for _ in range(3000)])  # 192,000 draws, >= 40 per kept frame
    assert not np.isin(draws, np.flatnonzero(want == 0)).any()  # a filtered-out frame is never drawn
    assert chi_square_p(draws, want) > 1e-4  # fixed seed: reproducible; a wrong table fails by orders
    if batching == "stratified":  # every batch holds the shares exactly (largest remainder, carried)
        d, _ = s.index_map.to_local(draws)
        counts = np.bincount(d, minlength=3)
        np.testing.assert_array_less(np.abs(counts - draws.size * s.mixture.shares), 1.0 + 1e-9)


def test_draws_do_not_follow_wrong_probabilities() -> None:
    """The chi-square above has power: per_episode draws are far from per_dataset's probabilities."""
    s = MixtureSampler(SIZES, WEIGHTS, weighting="per_episode", episodes=EPISODES, frame_filters=FILTERS, seed=7)
    draws = s.next_indices(192_000)
    assert chi_square_p(draws, expected_probabilities(EPISODES, WEIGHTS, "per_dataset", KEPT)) < 1e-30


def test_a_filter_keeping_every_frame_changes_nothing() -> None:
    plain = MixtureSampler([40, 30], [1.0, 2.0], seed=3).next_indices(500)
    kept_all = MixtureSampler([40, 30], [1.0, 2.0], seed=3, episodes=[[20, 20], None],
                              frame_filters=[FrameFilter({"0": [[0, 20]], "1": [[0, 20]]}), None]).next_indices(500)
    np.testing.assert_array_equal(plain, kept_all)


# ------------------------------------------------------------------ the draw layout, backends
def _words(seed: int, epoch: int, block: int, attempt: int = 0) -> list[int]:
    ctr = seeds.numpy_counter(epoch, seeds.STREAM_MIXTURE, block, attempt)
    return [int(v) for v in np.random.Philox(key=seed, counter=ctr).random_raw(4)]


def _lemire(seed: int, epoch: int, block: int, slot: int, n: int) -> tuple[int, int]:
    attempt = 0
    while True:
        m = _words(seed, epoch, block, attempt)[slot] * n
        if m & M64 >= (1 << 64) % n:
            return m >> 64, m & M64
        attempt += 1


def reference_segment_draw(s: MixtureSampler, p: int) -> int:
    """Global index of draw p in the frame layout with segments (csrc/mixture.hpp), from numpy's Philox: word 0
    dataset (packed alias), word 1 column, word 2 its coin, word 3 the frame inside the segment."""
    m, seed, e = s.mixture, s.seed, s.epoch
    t = m.dataset_table
    j, low = _lemire(seed, e, p, 0, len(t))
    d = j if low < int(t.threshold[j]) else int(t.alias[j])
    ft = m.frame_tables[d]
    if ft is None:
        return int(s.index_map.offsets[d]) + _lemire(seed, e, p, 1, int(m.sizes[d]))[0]
    c = _lemire(seed, e, p, 1, len(ft))[0]
    c = c if _words(seed, e, p)[2] < int(ft.threshold[c]) else int(ft.alias[c])
    start, length = m.segments[d]
    return int(s.index_map.offsets[d]) + int(start[c]) + _lemire(seed, e, p, 3, int(length[c]))[0]


def test_segment_draws_equal_the_numpy_philox_reference() -> None:
    s = MixtureSampler(SIZES, WEIGHTS, weighting="per_episode", episodes=EPISODES, frame_filters=FILTERS,
                       seed=2**70 + 5)
    s.set_epoch(2)
    assert s.next_indices(150).tolist() == [reference_segment_draw(s, p) for p in range(150)]


def test_segment_draws_with_lemire_rejections() -> None:
    """Segments of about 3·2^60 frames: Lemire rejects about 1 word in 16 of word 3 (attempt blocks)."""
    n = 3 << 60
    s = MixtureSampler([2 * n], episodes=[EpisodeRuns.from_lengths([n, n])], frame_filters=[
        FrameFilter({"0": [[0, n]], "1": [[5, n]]})], seed=9)
    assert s.next_indices(60).tolist() == [reference_segment_draw(s, p) for p in range(60)]


@pytest.mark.parametrize("batching", ["random", "stratified"])
@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 3)])
def test_native_and_numba_streams_are_bit_identical(batching: str, rank: int, world_size: int) -> None:
    fw = [None, np.random.default_rng(0).uniform(size=SIZES[1]), None]  # per-frame columns beside segments
    kw = dict(dataset_sizes=SIZES, dataset_weights=WEIGHTS, weighting="per_episode", episodes=EPISODES,
              frame_filters=FILTERS, frame_weights=fw, seed=5, batching=batching, rank=rank, world_size=world_size)
    a, b = (MixtureSampler(**kw, backend=be) for be in ("native", "numba"))
    for n in (1, 33, 500, 0, 7):
        np.testing.assert_array_equal(a.next_indices(n), b.next_indices(n))


_JIT_OFF = """
import sys, warnings
import numpy as np
warnings.simplefilter("ignore", RuntimeWarning)
from fastmix.kernels import numba_kernels as k
from tests.test_sampling_controls import segment_kernel_cases
out = {}
for name, (fn, args, i) in segment_kernel_cases().items():
    getattr(k, fn)(*args[:-2], seg_start=args[-2], seg_length=args[-1])
    out[name] = args[i]
np.savez(sys.argv[1], **out)
"""


def segment_kernel_cases() -> dict:
    """Kernel inputs with segments: name -> (kernel, args (seg_start, seg_length last), index of the output)."""
    s = MixtureSampler(SIZES, WEIGHTS, weighting="per_episode", episodes=EPISODES, frame_filters=FILTERS, seed=2**65)
    m = s.mixture
    tables = (m.dataset_table.threshold, m.dataset_table.alias, s.index_map.offsets, m.frame_threshold,
              m.frame_alias, m.frame_offsets)
    mix, perm = (seeds.stream(s.seed, 1, tag) for tag in (seeds.STREAM_MIXTURE, seeds.STREAM_PERMUTATION))
    labels = np.repeat(np.arange(3, dtype=np.int64), [9, 5, 6])
    segs = (m.segment_start, m.segment_length)
    return {"mixture": ("mixture_draw", (mix, 3, 2, *tables, np.empty(40, np.int64), 1, *segs), 9),
            "stratified": ("stratified_draw", (mix, perm, 1, 3, *tables, labels, np.empty(20, np.int64), *segs), 10)}


def test_numba_segment_kernels_without_jit_equal_native(tmp_path) -> None:
    from fastmix.kernels import _native

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONPATH=os.pathsep.join([str(root), *sys.path]))
    res = subprocess.run([sys.executable, "-c", _JIT_OFF, str(tmp_path / "out.npz")], env=env, cwd=root,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for name, (fn, args, i) in segment_kernel_cases().items():
        getattr(_native, fn)(*args[:-2], seg_start=args[-2], seg_length=args[-1])
        np.testing.assert_array_equal(got[name], args[i], err_msg=name)


def test_a_stale_native_build_is_refused_for_numba(monkeypatch) -> None:
    """An extension built from older sources (its kernels lack the segment arguments) is not used: the numba
    twin is, with a warning naming the rebuild; FASTMIX_BACKEND=native raises."""
    from fastmix.kernels import _native
    from fastmix.kernels import backend as _backend

    monkeypatch.setattr(_native, "ABI_VERSION", 1)
    monkeypatch.delenv("FASTMIX_BACKEND", raising=False)
    _backend._load.cache_clear()
    _backend.reset()
    try:
        with pytest.warns(RuntimeWarning, match=r"built from other sources \(ABI 1, these sources need 2\); rebuild"):
            assert _backend.backend() == "numba"
        monkeypatch.setenv("FASTMIX_BACKEND", "native")
        with pytest.raises(ImportError, match="pip install -e"):
            _backend.backend()
    finally:
        monkeypatch.undo()
        _backend._load.cache_clear()
        _backend.reset()
    assert _backend.backend() == "native"


# ------------------------------------------------------------------ filters: formats, episodes, order
def test_openpi_filter_file_format(tmp_path) -> None:
    """openpi's `filter_dict_path` JSON ({"<episode key>": [[start, end], ...]}) equals the same mapping."""
    path = tmp_path / "ranges.json"
    path.write_text(json.dumps(RANGES0))
    from_file = Mixture(SIZES, WEIGHTS, episodes=EPISODES, frame_filters=[FrameFilter(path), None, None])
    from_map = Mixture(SIZES, WEIGHTS, episodes=EPISODES, frame_filters=[FrameFilter(RANGES0), None, None])
    np.testing.assert_array_equal(from_file.sample_probabilities(), from_map.sample_probabilities())
    assert str(path) in from_file.format_table()


def test_episode_keys_map_other_keys_and_unknown_ones_can_be_ignored() -> None:
    ranges = {"rec_a--f1": [[1, 3]], "rec_b--f2": [[0, 4]], "failed--f9": [[0, 2]]}
    flt = FrameFilter(ranges, episode_keys={"rec_a--f1": 7, "rec_b--f2": 9}, unknown_episodes="ignore")
    runs = EpisodeRuns.from_lengths([5, 4], episode_ids=[7, 9])
    m = Mixture([9], episodes=[runs], frame_filters=[flt])
    assert m.kept_indices(0).tolist() == [1, 2, 5, 6, 7, 8]
    assert m.kept[0].ignored_keys == 1 and "1 keys ignored" in m.format_table()
    with pytest.raises(ConfigError, match=r"'failed--f9'.*names no episode.*unknown_episodes='ignore'"):
        Mixture([9], episodes=[runs], frame_filters=[FrameFilter(ranges, episode_keys={"rec_a--f1": 7,
                                                                                        "rec_b--f2": 9})])


def test_rows_in_any_order() -> None:
    """Episodes whose rows are interleaved (EpisodeRuns.from_rows): probabilities follow (episode, frame)."""
    rng = np.random.default_rng(3)
    ep = np.repeat([4, 8, 5], [6, 3, 7])
    fr = np.concatenate([np.arange(6), np.arange(3), np.arange(7)])
    order = rng.permutation(ep.size)
    runs = EpisodeRuns.from_rows(ep[order], fr[order])
    flt = FrameFilter({"4": [[1, 6]], "8": [[0, 3]], "5": [[2, 4]]}, trim_end=1)
    m = Mixture([ep.size], weighting="per_episode", episodes=[runs], frame_filters=[flt])
    keep = {4: {1, 2, 3, 4}, 8: {0, 1}, 5: {2, 3}}
    want = np.array([1 / 3 / len(keep[e]) if f in keep[e] else 0.0 for e, f in zip(ep[order], fr[order], strict=True)])
    np.testing.assert_allclose(m.sample_probabilities(), want, rtol=1e-12)
    draws = MixtureSampler([ep.size], weighting="per_episode", episodes=[runs], frame_filters=[flt],
                           seed=1).next_indices(20_000)
    assert chi_square_p(draws, want) > 1e-4
    assert m.is_kept(0, [4, 4, 8, 5, 5, 6], [0, 4, 1, 4, 3, 0]).tolist() == [False, True, True, False, True, False]


def test_sequential_order_skips_filtered_frames_and_epochs_count_kept_frames() -> None:
    s = MixtureSampler(SIZES, WEIGHTS, episodes=EPISODES, frame_filters=FILTERS, shuffle=False)
    kept = np.concatenate([s.mixture.kept_indices(d) + s.index_map.offsets[d] for d in range(3)])
    assert len(s) == kept.size == s.mixture.kept_total
    np.testing.assert_array_equal(s.next_indices(kept.size + 5), np.concatenate([kept, kept[:5]]))
    assert len(MixtureSampler(SIZES, episodes=EPISODES, frame_filters=FILTERS)) == kept.size


def test_table_prints_kept_frames_episodes_and_rule() -> None:
    m = Mixture(SIZES, WEIGHTS, weighting="per_episode", episodes=EPISODES, frame_filters=FILTERS,
                names=["libero", "droid", "aloha"])
    text = m.format_table()
    assert f"{m.kept_total} frames kept of {sum(SIZES)}" in text
    assert "each episode of a dataset equally likely" in text
    row = next(line for line in text.splitlines() if "libero" in line)
    assert f"{m.kept_total - 50 - sum(len(k) for k in KEPT[2])}/{SIZES[0]}" in row and "4/5" in row


# ------------------------------------------------------------------ resume with changed weights
def _loader(weights, **kw) -> MixtureLoader:
    sources = [FakeSource("a", num_episodes=3, episode_length=10), FakeSource("b", num_episodes=2, episode_length=7)]
    return MixtureLoader(sources, **grouped(dataset_weights=weights, batch_size=4, num_workers=0, seed=3,
                                            reader_factory=FakeReader, **kw))


def _take(loader: MixtureLoader, n: int) -> list[list[tuple[int, int]]]:
    it = iter(loader)
    out = []
    for _ in range(n):
        b = next(it)
        out.append(list(zip(b["dataset_index"].tolist(), b["index"].tolist(), strict=True)))
    return out


@pytest.mark.parametrize("batching", ["random", "stratified"])
def test_resume_with_changed_weights_is_an_explicit_deterministic_opt_in(batching: str) -> None:
    with _loader([1.0, 1.0], batching=batching) as old:
        before = _take(old, 3)
        state = old.state_dict()
        unchanged = _take(old, 4)
    with _loader([1.0, 9.0], batching=batching) as new:
        with pytest.raises(ConfigError, match=r"(?s)weights.*allow_mixture_change=True"):
            new.load_state_dict(state)
        with pytest.warns(RuntimeWarning, match=r"batch 3 under a changed mixture.*a 68\.182% -> 19\.231%, "
                                                r"b 31\.818% -> 80\.769%"):
            new.load_state_dict(state, allow_mixture_change=True)
        after = _take(new, 4)
    with _loader([1.0, 9.0], batching=batching) as again, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        again.load_state_dict(state, allow_mixture_change=True)
        assert _take(again, 4) == after  # same state + new configuration: same stream
    assert after != unchanged
    with _loader([1.0, 1.0], batching=batching) as replay:  # what came before is the old mixture's stream
        assert _take(replay, 3) == before
    if batching == "random":  # draw p is a pure function of (seed, epoch, p, tables): the new mixture's own
        fresh = MixtureSampler([30, 14], [1.0, 9.0], seed=3)  # stream from the saved position on
        fresh.next_indices(12)
        d, local = fresh.index_map.to_local(fresh.next_indices(16))
        assert [pair for batch in after for pair in batch] == list(zip(d.tolist(), local.tolist(), strict=True))
    else:  # stratification restarts at the resume point: 16 draws hold the new shares within 1
        assert abs(sum(d == 0 for batch in after for d, _ in batch) - 16 * 30 / 156) < 1


def test_resume_with_changed_filters_weighting_and_a_shorter_epoch() -> None:
    with _loader([1.0, 1.0]) as old:
        _take(old, 8)
        state = old.state_dict()
    flt = {"a": FrameFilter({"0": [[0, 3]], "2": [[5, 10]]})}
    with _loader([1.0, 1.0], weighting="per_episode", frame_filters=flt) as new:
        assert len(new) == (8 + 14) // 4 == 5  # 22 kept frames: the saved batch 8 is past the new epoch
        with pytest.warns(RuntimeWarning, match=r"epoch 1 at batch 0 .*weighting 'per_sample' -> 'per_episode'; "
                                                r"kept frames a all 30 -> 8 of 30"):
            new.load_state_dict(state, allow_mixture_change=True)
        assert new.state_dict()["epoch"] == 1 and new.state_dict()["batch"] == 0
        drawn = [b for batch in _take(new, 5) for b in batch]
    keep = {0, 1, 2, 25, 26, 27, 28, 29}
    assert all(g in keep for d, g in drawn if d == 0)


def test_resume_with_other_datasets_is_refused_even_with_the_opt_in() -> None:
    with _loader([1.0, 1.0]) as old:
        _take(old, 2)
        state = old.state_dict()
    sources = [FakeSource("a", num_episodes=3, episode_length=10), FakeSource("c", num_episodes=2, episode_length=7)]
    with MixtureLoader(sources, **grouped(dataset_weights=[1.0, 3.0], batch_size=4, num_workers=0, seed=3,
                                          reader_factory=FakeReader)) as other:
        with pytest.raises(ConfigError, match=r"(?s)datasets: the state has datasets=\['a', 'b'\].*only the weights, "
                                              r"weighting and frame filters may differ"):
            other.load_state_dict(state, allow_mixture_change=True)
        assert other.position.batch == 0  # nothing changed


def test_states_from_before_frame_filters_still_load() -> None:
    with _loader([1.0, 2.0]) as old:
        _take(old, 2)
        state = old.state_dict()
        rest = _take(old, 2)
    legacy = {**state, "mixture": {k: v for k, v in state["mixture"].items() if k not in ("frame_filters", "shares")}}
    with _loader([1.0, 2.0]) as new:
        new.load_state_dict(legacy)
        assert _take(new, 2) == rest


# ------------------------------------------------------------------ the loader and equivalence
def test_loader_draws_only_kept_frames_and_prints_them() -> None:
    flt = [FrameFilter({"1": [[2, 8]]}, trim_start=3), FrameFilter(trim_end=5)]
    with _loader([1.0, 1.0], weighting="per_episode", frame_filters=flt, num_batches=60) as ld:
        table = ld.mixture.format_table()
        assert "kept/frames" in table and "5/30" in table and "4/14" in table and "trim 3 first" in table
        seen = [(d, e, f) for batch in ld for d, e, f in zip(batch["dataset_index"].tolist(),
                batch["episode_index"].tolist(), batch["frame_index"].tolist(), strict=True)]
    allowed = {(0, 1, f) for f in range(3, 8)} | {(1, e, f) for e in range(2) for f in range(2)}
    assert set(seen) == allowed and len(seen) == 240  # every kept frame drawn, nothing else


@pytest.mark.parametrize("weighting", ["per_sample", "per_dataset", "per_episode"])
def test_equivalence_mode_per_weighting_with_filters(weighting: str) -> None:
    r = equivalence.check_equivalence(SIZES, WEIGHTS, weighting=weighting, episodes=EPISODES, frame_filters=FILTERS,
                                      draws=150_000, seed=4)
    assert r.passed, r.format()
    assert r.zero_probability_draws == 0 and r.kept_frames == [int(v) for v in Mixture(
        SIZES, episodes=EPISODES, frame_filters=FILTERS).kept_sizes]
    np.testing.assert_allclose(r.expected_shares, [
        expected_probabilities(EPISODES, WEIGHTS, weighting, KEPT)[a:b].sum()
        for a, b in zip(np.cumsum([0, *SIZES[:-1]]), np.cumsum(SIZES), strict=True)], rtol=1e-12)


def test_equivalence_fails_a_sampler_that_ignores_the_filter() -> None:
    wrong = MixtureSampler(SIZES, WEIGHTS, weighting="per_episode", episodes=EPISODES, seed=4)  # no filters
    r = equivalence.check_equivalence(SIZES, WEIGHTS, weighting="per_episode", episodes=EPISODES,
                                      frame_filters=FILTERS, draws=50_000, seed=4, sampler=wrong)
    assert not r.passed and r.zero_probability_draws > 0


def test_equivalence_cli_runs_a_check_per_mode(capsys) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    equivalence.add_arguments(parser)
    args = parser.parse_args(["--sizes", "900", "400", "--weights", "1", "3", "--weighting", "all", "--filter-seed",
                              "2", "--trim-start", "1", "--draws", "60000", "--json"])
    assert equivalence.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["weighting"] for r in out] == ["per_sample", "per_dataset", "per_episode"]
    assert all(r["verdict"] == "PASS" and r["kept_frames"] and len(r["tests"]) == 16 for r in out)


def test_lerobot_dataset_per_episode_and_filter_file_against_lerobot(video_ds, tmp_path) -> None:
    """A dataset written by lerobot's writer, a keep-ranges file in openpi's format and trims: the mixture's
    probabilities equal those computed from lerobot's own episode/frame columns, and every drawn sample is a kept
    frame whose values equal `LeRobotDataset`'s item."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from fastmix.sources.lerobot_source import LeRobotSource

    ranges = {"1": [[0, 5], [20, 30]], "3": [[10, 12]], "6": [[0, 30]], "7": [[3, 3]]}
    path = tmp_path / "keep.json"
    path.write_text(json.dumps(ranges))
    src = LeRobotSource(root=video_ds)
    ref = LeRobotDataset(src.name, root=video_ds, video_backend="pyav")
    ep = np.asarray(ref.hf_dataset["episode_index"], dtype=np.int64)
    fr = np.asarray(ref.hf_dataset["frame_index"], dtype=np.int64)
    lengths = np.bincount(ep)
    keep = {int(e): {f for a, b in r for f in range(a, b) if f < lengths[int(e)] - 2} for e, r in ranges.items()}
    keep = {e: k for e, k in keep.items() if k}
    want = np.array([1 / len(keep) / len(keep[e]) if e in keep and f in keep[e] else 0.0
                     for e, f in zip(ep.tolist(), fr.tolist(), strict=True)])
    with MixtureLoader([src], weighting="per_episode", frame_filters=[FrameFilter(path, trim_end=2)], batch_size=8,
                       num_workers=0, num_batches=5, seed=2) as ld:
        np.testing.assert_allclose(ld.mixture.sample_probabilities(), want, rtol=1e-12, atol=0)
        batches = list(ld)
    for batch in batches:
        for i in range(len(batch["index"])):
            e, f = int(batch["episode_index"][i]), int(batch["frame_index"][i])
            assert e in keep and f in keep[e], (e, f)
            item = ref[int(batch["index"][i])]
            assert (int(item["episode_index"]), int(item["frame_index"])) == (e, f)
            for key in ("state", "actions"):
                np.testing.assert_array_equal(batch[key][i].numpy(), item[key].numpy().astype(np.float32))


# ------------------------------------------------------------------ verify
def _filtered_config(tmp_path, frame_filters):
    """A TrainConfig over two fake datasets whose data config declares `frame_filters` (as a config layer that
    carries them will), with norm stats over the fake sources."""
    import dataclasses

    from fastmix.openpi import config as C
    from tests.test_verify import _with_stats

    @dataclasses.dataclass(frozen=True)
    class Filtered(C.DataConfigFactory):
        inner: object = None
        filters: object = None

        def create(self, assets_dirs, model_config):  # DataConfig.frame_filters: create_data_loader passes it on
            return dataclasses.replace(self.inner.create(assets_dirs, model_config), frame_filters=self.filters)

    sources = [FakeSource("fake/a", num_episodes=4, episode_length=10), FakeSource("fake/b", num_episodes=2,
                                                                                   episode_length=8)]
    deps = dict(open_sources=lambda data_config: sources, check_compatible=lambda s: None)
    cfg = _with_stats(tmp_path, deps, name="verify_filtered_cfg", weights=[1.0, 3.0], batch_size=8)
    return dataclasses.replace(cfg, data=Filtered(inner=cfg.data, filters=frame_filters)), deps


@pytest.mark.parametrize("loader_applies_filters", [True, False])
def test_verify_expects_shares_of_kept_frames_and_checks_every_draw_is_kept(tmp_path, capsys,
                                                                           loader_applies_filters: bool) -> None:
    from fastmix.tools import verify as V
    from tests.test_verify import create_loader_with, fake_loader_factory

    filters = {"fake/a": FrameFilter({"0": [[0, 4]], "2": [[5, 10]]}, trim_start=1)}  # a keeps 3 + 5 = 8 of 40
    cfg, deps = _filtered_config(tmp_path, filters)

    def factory(sources, **kw):
        kw.pop("frame_filters", None)  # a loader that applies them or (the failure verify must see) one that does not
        return fake_loader_factory(sources, **kw, frame_filters=filters if loader_applies_filters else None)

    report = V.verify(cfg, 800, plot_path=tmp_path / "shares.png", **deps,
                      create_loader=create_loader_with(loader_factory=factory))
    out = capsys.readouterr().out
    np.testing.assert_allclose(report.expected_shares, [8 * 1.0 / (8 + 16 * 3.0), 16 * 3.0 / (8 + 16 * 3.0)])
    if loader_applies_filters:
        assert report.ok, out
        assert "[PASS] frame filters: kept frames fake/a 8/40, fake/b 16/16; none of the 800 draws" in out
    else:
        assert not report.ok
        assert "[FAIL] frame filters: draws of filtered-out frames: fake/a episode" in out
        assert "[FAIL] mixture:" in out
