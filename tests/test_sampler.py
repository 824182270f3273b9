"""MixtureSampler: draws against an independent numpy-Philox reference, O(1) positions, ranks, resume,
epochs, stratified batches, sequential order, DataLoader use, 2^25 frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from fastmix.core import seeds
from fastmix.core.sampler import MixtureSampler
from fastmix.errors import ConfigError

M64 = (1 << 64) - 1


# ---------------------------------------------------------------- independent reference of the draw
def philox_words(seed: int, epoch: int, tag: int, block: int, attempt: int) -> list[int]:
    ctr = seeds.numpy_counter(epoch, tag, block, attempt)
    return [int(v) for v in np.random.Philox(key=seed, counter=ctr).random_raw(4)]


def lemire(seed, epoch, block, slot, n) -> tuple[int, int]:
    """(value, low half) of the unbiased bounded draw; rejected words come from attempts 1, 2, ..."""
    attempt = 0
    while True:
        m = philox_words(seed, epoch, seeds.STREAM_MIXTURE, block, attempt)[slot] * n
        if m & M64 >= (1 << 64) % n:
            return m >> 64, m & M64
        attempt += 1


def reference_draw(s: MixtureSampler, p: int) -> int:
    """Global index of draw position p, written from the layout in csrc/mixture.hpp with numpy's Philox."""
    m, seed, e = s.mixture, s.seed, s.epoch
    t = m.dataset_table
    frame_layout = m.has_frame_weights
    block, h = (p, 0) if frame_layout else (p >> 1, 2 * (p & 1))
    j, low = lemire(seed, e, block, h, len(t))
    d = j if low < int(t.threshold[j]) else int(t.alias[j])
    n = int(m.sizes[d])
    ft = m.frame_tables[d]
    if not frame_layout:
        local = lemire(seed, e, block, h + 1, n)[0]
    elif ft is None:
        local = lemire(seed, e, block, 1, n)[0]
    else:
        c = lemire(seed, e, block, 1, n)[0]
        coin = philox_words(seed, e, seeds.STREAM_MIXTURE, block, 0)[2]
        local = c if coin < int(ft.threshold[c]) else int(ft.alias[c])
    return int(s.index_map.offsets[d]) + local


CONFIGS = {
    "two": dict(dataset_sizes=[10000, 1000], dataset_weights=[1.0, 10.0]),
    "one": dict(dataset_sizes=[777]),
    "five_zero": dict(dataset_sizes=[5, 17, 1000, 3, 64], dataset_weights=[1.0, 0.0, 0.5, 9.0, 2.0],
                      weighting="per_dataset"),
    "frames": dict(dataset_sizes=[6, 40, 9], dataset_weights=[1.0, 2.0, 3.0],
                   frame_weights=[np.arange(1.0, 7.0), None, np.linspace(0.0, 1.0, 9)]),
    "huge": dict(dataset_sizes=[3 << 61]),  # Lemire rejects 1 word in 4: exercises the attempt blocks
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_draws_equal_numpy_philox_reference(name: str) -> None:
    s = MixtureSampler(**CONFIGS[name], seed=2**70 + 5, rank=0, world_size=1)
    s.set_epoch(3)
    got = s.next_indices(101)
    assert got.dtype == np.int64
    assert got.tolist() == [reference_draw(s, p) for p in range(101)]


def test_any_position_is_reached_directly() -> None:
    """Draw p is a pure function of (seed, epoch, p): a rank starting deep in the stream agrees."""
    a = MixtureSampler([10000, 1000], [1.0, 10.0], seed=4, rank=0, world_size=1)
    run = a.next_indices(5001)
    b = MixtureSampler([10000, 1000], [1.0, 10.0], seed=4, rank=0, world_size=1)
    b.load_state_dict({**b.state_dict(), "position": 4999, "global_position": 4999})
    assert b.next_indices(2).tolist() == run[4999:].tolist()
    far = 10**15 + 1
    b.load_state_dict({**b.state_dict(), "position": far, "global_position": far})
    assert b.next_indices(1)[0] == reference_draw(b, far)


@pytest.mark.parametrize("world_size", [2, 3, 5])
@pytest.mark.parametrize("batching", ["random", "sequential"])
def test_union_over_ranks_is_the_single_process_stream(world_size: int, batching: str) -> None:
    kw = dict(dataset_sizes=[300, 40, 7], dataset_weights=[1.0, 3.0, 2.0], seed=11, shuffle=batching == "random")
    single = MixtureSampler(**kw, rank=0, world_size=1).next_indices(world_size * 200)
    ranks = [MixtureSampler(**kw, rank=r, world_size=world_size) for r in range(world_size)]
    parts = [np.concatenate([s.next_indices(60), s.next_indices(140)]) for s in ranks]  # any batch sizes
    union = np.stack(parts, axis=1).ravel()  # position r + W*j
    np.testing.assert_array_equal(union, single)
    assert len(ranks[0]) == -(-347 // world_size)


def test_stream_depends_on_seed_and_epoch() -> None:
    a = MixtureSampler([1000, 1000], seed=1)
    x0 = a.next_indices(100)
    a.set_epoch(1)
    x1 = a.next_indices(100)
    b = MixtureSampler([1000, 1000], seed=2)
    assert not np.array_equal(x0, x1) and not np.array_equal(x0, b.next_indices(100))
    a.set_epoch(0)
    np.testing.assert_array_equal(a.next_indices(100), x0)


# ---------------------------------------------------------------- resume
@pytest.mark.parametrize("batching", ["random", "stratified"])
@pytest.mark.parametrize("frames", [False, True])
def test_resume_after_k_indices_gives_the_rest(batching: str, frames: bool) -> None:
    fw = [None, np.linspace(1, 2, 50), None] if frames else None
    kw = dict(dataset_sizes=[100, 50, 20], dataset_weights=[1.0, 2.0, 5.0], seed=3, batching=batching,
              frame_weights=fw)
    full = MixtureSampler(**kw)
    whole = [full.next_indices(b) for b in (7, 13, 8, 21, 32, 32)]
    for k in range(1, 6):
        a = MixtureSampler(**kw)
        for b in (7, 13, 8, 21, 32)[:k]:
            a.next_indices(b)
        state = a.state_dict()
        b = MixtureSampler(**kw, )
        b.load_state_dict(state)
        rest = [b.next_indices(n) for n in (7, 13, 8, 21, 32, 32)[k:]]
        assert [r.tolist() for r in rest] == [w.tolist() for w in whole[k:]]


@pytest.mark.parametrize("batching", ["random", "stratified"])
def test_resume_mid_iteration(batching: str) -> None:
    kw = dict(dataset_sizes=[60, 30], dataset_weights=[1.0, 4.0], seed=8, batching=batching, batch_size=16,
              num_samples=200)
    expected = list(MixtureSampler(**kw))
    a = MixtureSampler(**kw)
    it = iter(a)
    head = [next(it) for _ in range(37)]  # stops inside a chunk
    b = MixtureSampler(**kw)
    b.load_state_dict(a.state_dict())
    assert head + list(b) == expected


def test_resume_with_another_world_size_continues_the_global_stream() -> None:
    kw = dict(dataset_sizes=[500, 80], dataset_weights=[1.0, 2.0], seed=5)
    single = MixtureSampler(**kw, rank=0, world_size=1).next_indices(600)
    old = [MixtureSampler(**kw, rank=r, world_size=2) for r in range(2)]
    for s in old:
        s.next_indices(60)  # 120 global positions consumed
    state = old[0].state_dict()
    assert state["global_position"] == 120
    new = [MixtureSampler(**kw, rank=r, world_size=4) for r in range(4)]
    for s in new:
        s.load_state_dict(state)
    union = np.stack([s.next_indices(50) for s in new], axis=1).ravel()
    np.testing.assert_array_equal(union, single[120:320])


def test_load_state_errors_are_named() -> None:
    s = MixtureSampler([10, 10])
    with pytest.raises(ConfigError, match="missing key 'epoch'"):
        s.load_state_dict({"seed": 0})
    with pytest.raises(ConfigError, match=r"carry_counts'\] length \(3\) must match datasets length \(2\)"):
        s.load_state_dict({**s.state_dict(), "carry_counts": [0, 0, 0]})


@pytest.mark.parametrize("change, pattern", [
    ({"position": -1}, r"\['position'\] must be an integer >= 0, got MixtureSampler state\['position'\]=-1"),
    ({"position": 2.5}, r"\['position'\] must be an integer"),
    ({"epoch": "1"}, r"\['epoch'\] must be an integer"),
    ({"world_size": 0}, r"\['world_size'\] must be an integer >= 1"),
    ({"pending": "xy"}, r"\['pending'\] must be a list of integers"),
    ({"carry_counts": [[0], [1]]}, r"\['carry_counts'\]\[0\] must be an integer >= 0, got .*=\[0\]"),
    ({"carry_counts": [0, 0, 0]}, r"\['carry_counts'\] length \(3\) must match datasets length \(2\)"),
    ({"seed": -3}, r"MixtureSampler state\['seed'\] must be an integer >= 0 and < 2\*\*128, "
                   r"got MixtureSampler state\['seed'\]=-3"),
])
def test_malformed_state_is_refused_and_changes_nothing(change, pattern) -> None:
    s = MixtureSampler([10, 10], seed=4)
    s.next_indices(7)
    before = s.state_dict()
    with pytest.raises(ConfigError, match=pattern):
        s.load_state_dict({**before, **change})
    assert s.state_dict() == before
    np.testing.assert_array_equal(s.next_indices(5), MixtureSampler([10, 10], seed=4).next_indices(12)[7:])


def test_epoch_state_is_the_state_at_an_epochs_first_draw() -> None:
    """epoch_state(e) loaded into a sampler mid-way through another epoch restarts epoch e exactly, as a fresh
    sampler moved to epoch e draws it."""
    s = MixtureSampler([30, 20], [1.0, 2.0], seed=9, batching="stratified", batch_size=4)
    s.next_indices(13)
    fresh = MixtureSampler([30, 20], [1.0, 2.0], seed=9, batching="stratified", batch_size=4)
    fresh.set_epoch(3)
    s.load_state_dict(s.epoch_state(3))
    np.testing.assert_array_equal(s.next_indices(17), fresh.next_indices(17))


# ---------------------------------------------------------------- epochs and torch integration
def test_iter_yields_one_epoch_then_advances() -> None:
    s = MixtureSampler([30, 20], [1.0, 2.0], num_samples=45, seed=1)
    first = list(s)
    assert len(first) == len(s) == 45 and s.epoch == 1
    second = list(s)
    assert second != first and s.epoch == 2
    ref = MixtureSampler([30, 20], [1.0, 2.0], num_samples=45, seed=1)
    np.testing.assert_array_equal(ref.next_indices(45), first)
    ref.set_epoch(1)
    np.testing.assert_array_equal(ref.next_indices(45), second)
    s.set_epoch(2)  # already the current epoch: no-op
    assert s.position == 0 and s.epoch == 2


def test_drop_in_for_weighted_random_sampler_in_a_dataloader() -> None:
    data = torch.arange(1100)
    s = MixtureSampler([1000, 100], [1.0, 10.0], seed=0)
    batches = list(DataLoader(data, sampler=s, batch_size=64, num_workers=0))
    got = torch.cat(batches).numpy()
    assert got.size == 1100
    ref = MixtureSampler([1000, 100], [1.0, 10.0], seed=0)
    np.testing.assert_array_equal(got, ref.next_indices(1100))


def test_rank_defaults_come_from_torch_distributed(monkeypatch) -> None:
    import torch.distributed as dist

    assert (MixtureSampler([10]).rank, MixtureSampler([10]).world_size) == (0, 1)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 2)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    s = MixtureSampler([10])
    assert (s.rank, s.world_size) == (2, 4)


def test_sequential_order() -> None:
    s = MixtureSampler([3, 4], [1.0, 100.0], shuffle=False)
    assert list(s) == list(range(7))
    r = MixtureSampler([3, 4], shuffle=False, rank=1, world_size=3, num_samples=14)
    assert r.next_indices(6).tolist() == [1, 4, 0, 3, 6, 2]


# ---------------------------------------------------------------- stratified
@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 3)])
def test_stratified_batches_hold_exact_shares(rank: int, world_size: int) -> None:
    sizes, weights = [500, 70, 9, 300], [1.0, 3.0, 7.0, 0.0]
    s = MixtureSampler(sizes, weights, batching="stratified", seed=2, rank=rank, world_size=world_size)
    shares = s.mixture.shares
    rng = np.random.default_rng(0)
    total, cum = 0, np.zeros(4, dtype=np.int64)
    for _ in range(300):
        b = int(rng.integers(1, 97))
        d = s.index_map.to_local(s.next_indices(b))[0]
        counts = np.bincount(d, minlength=4)
        assert (np.abs(counts - b * shares) < 2).all() and counts[3] == 0
        total += b
        cum += counts
        assert (np.abs(cum - total * shares) <= 1.0 + 1e-9).all()  # carried remainders: long run exact
    assert np.abs(cum - total * shares).max() <= 1.0


def test_stratified_batch_is_shuffled_and_deterministic() -> None:
    kw = dict(dataset_sizes=[1000, 1000], batching="stratified", seed=6)
    x = MixtureSampler(**kw).next_indices(64)
    d = (x >= 1000).astype(int)
    assert d.sum() == 32 and 0 < d[:32].sum() < 32  # exact half, not grouped
    np.testing.assert_array_equal(MixtureSampler(**kw).next_indices(64), x)


# ---------------------------------------------------------------- sizes and errors
def test_2_pow_25_frames_sample_where_weighted_random_sampler_cannot() -> None:
    n = 2**25
    ref = WeightedRandomSampler(torch.ones(n), num_samples=n, replacement=True)
    with pytest.raises(RuntimeError, match="number of categories cannot exceed 2\\^24"):
        next(iter(ref))
    s = MixtureSampler([n // 2, n // 2], [1.0, 3.0], seed=0)
    assert len(s) == n
    x = s.next_indices(200_000)
    assert x.min() >= 0 and x.max() < n
    share = (x >= n // 2).mean()
    assert abs(share - 0.75) < 0.01


def test_1e8_frames() -> None:
    s = MixtureSampler([60_000_000, 40_000_000], [1.0, 1.0], seed=0)
    x = s.next_indices(100_000)
    assert len(s) == 10**8 and x.max() < 10**8 and abs((x >= 60_000_000).mean() - 0.4) < 0.01


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(num_samples=0), "num_samples=0"),
    (dict(rank=3, world_size=3), r"rank=3"),
    (dict(world_size=0, rank=0), "world_size=0"),
    (dict(batching="balanced"), "batching='balanced'"),
    (dict(seed=-1), "seed"),
])
def test_bad_arguments_are_named(kwargs, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        MixtureSampler([10, 20], **kwargs)


def test_next_indices_rejects_negative() -> None:
    with pytest.raises(ConfigError, match="n=-1"):
        MixtureSampler([10]).next_indices(-1)
    assert MixtureSampler([10]).next_indices(0).shape == (0,)


def test_a_state_of_another_mixture_continues_at_its_consumed_position_without_the_carry() -> None:
    """`load_state_dict(state, mixture_changed=True)`: the pending stratified draws (drawn under the old shares)
    and the carry are dropped; the draws go on from the consumed position under the new shares."""
    old = MixtureSampler([100, 50], batching="stratified", batch_size=4, seed=1)
    it = iter(old)
    for _ in range(5):  # one chunk of 4 and one draw of the next: 3 pending
        next(it)
    state = old.state_dict()
    assert state["position"] == 8 and len(state["pending"]) == 3
    new = MixtureSampler([100, 50], [1.0, 8.0], batching="stratified", batch_size=4, seed=1)
    new.load_state_dict(state, mixture_changed=True)
    assert new.position == 5 and new.state_dict()["carry_total"] == 0 and new.state_dict()["pending"] == []
    d, _ = new.index_map.to_local(new.next_indices(20))
    assert abs(int((d == 0).sum()) - 20 * 100 / 500) < 1  # the new shares, exactly within 1 from here on

