"""`MixtureSampler`: a `torch.utils.data.Sampler[int]` over the concatenation of K datasets, drawing the
mixture from the counter-based stream (drop-in for `WeightedRandomSampler(per-sample weights,
num_samples=N, replacement=True)`), with a batch API `next_indices(n)` for the loader.

Positions. Epoch e has one global stream; draw p is a pure function of (seed, e, p). Rank r of W takes
global positions r, r+W, r+2W, ..., so the union over ranks is the single-process stream for any W.
`len(sampler)` = ceil(num_samples / W) draws per rank (ranks stay in step; their union is the first
W·len positions of the stream). `next_indices` does not stop at len(): the loader owns epoch boundaries;
`__iter__` yields the rest of the current epoch, then moves to the next one.

Batching. "random": every draw independent (the reference's behaviour; shares hold in expectation).
"stratified": each `next_indices(B)` call on a rank holds every dataset's share exactly: counts by largest
remainder of B·share_i + carry_i, where carry_i = (draws so far)·share_i − (dataset i's draws so far), so
|carry_i| < 1 forever (long-run shares exact). Each rank stratifies its own batches (its carry is its own);
the order of slots in a batch (permutation stream) and the local frames (mixture stream) still come from the
rank's global positions, so stratified streams resume exactly and ranks never share randomness, but their
union is not the single-process stratified stream. `__iter__` stratifies chunks of `batch_size` (default 1).

shuffle=False: the sequential order p → p mod N (weights ignored), split by rank the same way; with frame
filters, the p mod M-th kept frame (M = kept frames), so filtered-out frames are skipped there too.

A state saved under other weights, weighting or frame filters may be continued with this sampler's mixture
(`load_state_dict(state, mixture_changed=True)`): draws from the saved position on follow the new tables, the
stratified carry restarts at that position. Draw p is still a pure function of (seed, epoch, p, tables).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from fastmix._args import check_int, check_int_list, check_optional_int
from fastmix.core import seeds
from fastmix.core.episodes import EpisodeRuns
from fastmix.core.filters import FrameFilter
from fastmix.core.index_map import IndexMap
from fastmix.core.mixture import Mixture
from fastmix.errors import ConfigError
from fastmix.kernels.backend import kernels, threads_for

BATCHINGS = ("random", "stratified")
_ITER_CHUNK = 8192  # indices generated at a time by __iter__ in random / sequential mode


def resolve_rank_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size), each defaulting to torch.distributed's when it is initialized, else 0 and 1;
    ConfigError unless 0 <= rank < world_size."""
    if rank is None or world_size is None:
        from fastmix.distributed import rank_world

        live_rank, live_world = rank_world("pytorch")
        world_size = live_world if world_size is None else world_size
        rank = live_rank if rank is None else rank
    world_size = check_int(world_size, "world_size", minimum=1)
    rank = check_int(rank, "rank", minimum=0, below=world_size, below_text=f"world_size ({world_size})")
    return rank, world_size


def _state_value(state: Mapping[str, Any], key: str, where: str) -> Any:
    """state[key], or ConfigError naming `where` and the keys it has."""
    try:
        return state[key]
    except KeyError:
        raise ConfigError(f"{where} is missing key {key!r}; got keys {sorted(state)}") from None


def _state_int(state: Mapping[str, Any], key: str, where: str, minimum: int = 0) -> int:
    """state[key] as an int >= minimum (`check_int`, naming `where[key]`)."""
    return check_int(_state_value(state, key, where), f"{where}[{key!r}]", minimum=minimum)


class MixtureSampler(Sampler[int]):
    """Weighted sampler over K datasets (global indices of their concatenation).

    Args:
        dataset_sizes: frames per dataset (K,).
        dataset_weights: (K,) weights, default all ones; semantics set by `weighting`.
        weighting: "per_sample" (default; frame of dataset i ∝ w_i, like WeightedRandomSampler),
            "per_dataset" (dataset i's share = w_i / Σw) or "per_episode" (share = w_i / Σw, each episode of a
            dataset equally likely, frames uniform within it; `fastmix.core.mixture`).
        num_samples: draws per epoch over all ranks (default: total kept frames — all frames without frame
            filters, the reference's epoch).
        seed: integer in [0, 2^128), the Philox key.
        rank, world_size: default torch.distributed's when initialized, else 0 and 1.
        batching: "random" or "stratified" (see the module docstring).
        shuffle: False gives the sequential order p → p mod N.
        frame_weights: None, or K entries each None or a float array (N_i,) of per-frame weights.
        episodes: None, or K entries each None, an `EpisodeRuns` or the episode lengths (needed by per_episode
            weighting and frame filters).
        frame_filters: None, or K entries each None or a `FrameFilter` (filtered-out frames are never drawn).
        batch_size: chunk that `__iter__` stratifies (stratified mode only; default 1).
        backend: "native" / "numba" / None (`fastmix.backend()`).
        names: K dataset names, for errors and `mixture.format_table()` (default "dataset i").

    Attributes:
        mixture: the `Mixture`; index_map: its `IndexMap` (`mixture.index_map`, the one map of this mixture).

    Example:
        >>> s = MixtureSampler([10000, 1000], [1.0, 10.0], seed=0)
        >>> s.next_indices(4)   # int64 (4,) global indices
    """

    EPOCH_KEY = "epoch"
    POSITION_KEY = "position"
    GLOBAL_POSITION_KEY = "global_position"

    mixture: Mixture
    index_map: IndexMap
    num_samples: int
    seed: int
    rank: int
    world_size: int
    epoch: int

    def __init__(
        self,
        dataset_sizes: Sequence[int] | np.ndarray,
        dataset_weights: Sequence[float] | np.ndarray | None = None,
        *,
        weighting: str = "per_sample",
        num_samples: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        batching: str = "random",
        shuffle: bool = True,
        frame_weights: Sequence[Sequence[float] | np.ndarray | None] | None = None,
        batch_size: int | None = None,
        backend: str | None = None,
        names: Sequence[str] | None = None,
        episodes: Sequence[EpisodeRuns | Sequence[int] | np.ndarray | None] | None = None,
        frame_filters: Sequence[FrameFilter | None] | None = None,
    ) -> None:
        self.mixture = Mixture(dataset_sizes, dataset_weights, weighting=weighting, frame_weights=frame_weights,
                               episodes=episodes, frame_filters=frame_filters, backend=backend, names=names)
        self.index_map = self.mixture.index_map
        num_samples = check_optional_int(num_samples, "num_samples", minimum=1)
        self.num_samples = self.mixture.kept_total if num_samples is None else num_samples
        self.seed = seeds.check_seed(seed)
        self.rank, self.world_size = resolve_rank_world_size(rank, world_size)
        if batching not in BATCHINGS:
            raise ConfigError(f"batching={batching!r} is not one of {BATCHINGS}")
        self.batching = batching
        self.shuffle = bool(shuffle)
        self.batch_size = check_optional_int(batch_size, "batch_size", minimum=1) or 1
        self._k = kernels(backend)
        self.epoch = 0
        self._reset_epoch_state()

    # ----------------------------------------------------------------- state
    def _reset_epoch_state(self) -> None:
        self._position = 0  # this rank's draws generated in this epoch
        self._carry_counts = np.zeros(self.mixture.num_datasets, dtype=np.int64)  # stratified: draws per dataset
        self._carry_total = 0  # stratified: draws so far
        self._pending: deque[int] = deque()  # generated by __iter__ but not yet yielded
        self._streams = (seeds.stream(self.seed, self.epoch, seeds.STREAM_MIXTURE),
                         seeds.stream(self.seed, self.epoch, seeds.STREAM_PERMUTATION))

    @property
    def _stratified(self) -> bool:
        return self.shuffle and self.batching == "stratified"

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` at position 0; a no-op when it is already the current epoch (keeps a resume)."""
        epoch = seeds.check_epoch(epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self._reset_epoch_state()

    def __len__(self) -> int:
        """Draws per epoch on this rank: ceil(num_samples / world_size)."""
        return -(-self.num_samples // self.world_size)

    @property
    def position(self) -> int:
        """This rank's draws consumed in the current epoch."""
        return self._position - len(self._pending)

    def state_dict(self) -> dict[str, Any]:
        """Seed, epoch, consumed position (rank-local and global) and the stratified carry."""
        consumed = self.position
        stratified = self._stratified
        return {
            "seed": self.seed,
            self.EPOCH_KEY: self.epoch,
            self.POSITION_KEY: self._position if stratified else consumed,
            self.GLOBAL_POSITION_KEY: consumed * self.world_size,
            "world_size": self.world_size,
            "rank": self.rank,
            "carry_counts": self._carry_counts.tolist(),
            "carry_total": self._carry_total,
            "pending": list(self._pending) if stratified else [],
        }

    def epoch_state(self, epoch: int) -> dict[str, Any]:
        """The state at the first draw of `epoch` (what `state_dict()` returns after `set_epoch(epoch)` from a
        fresh epoch), without changing this sampler."""
        return {"seed": self.seed, self.EPOCH_KEY: seeds.check_epoch(epoch), self.POSITION_KEY: 0,
                self.GLOBAL_POSITION_KEY: 0, "world_size": self.world_size, "rank": self.rank,
                "carry_counts": [0] * self.mixture.num_datasets, "carry_total": 0, "pending": []}

    def load_state_dict(self, state: dict[str, Any], *, where: str = "MixtureSampler state",
                        mixture_changed: bool = False) -> None:
        """Continue exactly where `state` stopped. With another world_size the rank resumes at global position
        ceil(global_position / W) * W (never repeating a draw); stratified pending draws are then dropped.
        `mixture_changed`: the state was saved under other weights, weighting or frame filters; the draws from
        its consumed position on come from this sampler's mixture and the stratified carry (counts under the old
        shares) and pending draws are dropped, so stratification restarts there.
        A malformed state raises ConfigError naming the key (`where` prefixes it) and changes nothing."""
        if not isinstance(state, Mapping):
            raise ConfigError(f"{where} must be a dict (from MixtureSampler.state_dict()), "
                              f"got {where}={type(state).__name__}")
        seed = seeds.check_seed(_state_value(state, "seed", where), f"{where}['seed']")
        epoch = seeds.check_epoch(_state_value(state, self.EPOCH_KEY, where), f"{where}[{self.EPOCH_KEY!r}]")
        saved_world = _state_int(state, "world_size", where, minimum=1)
        if saved_world == self.world_size:
            position = _state_int(state, self.POSITION_KEY, where)
            pending = deque(check_int_list(state.get("pending", []), f"{where}['pending']"))
        else:
            position = -(-_state_int(state, self.GLOBAL_POSITION_KEY, where) // self.world_size)
            pending = deque()
        counts = np.array(check_int_list(state.get("carry_counts", [0] * self.mixture.num_datasets),
                                         f"{where}['carry_counts']", minimum=0), dtype=np.int64)
        if counts.size != self.mixture.num_datasets:
            raise ConfigError(f"{where}['carry_counts'] length ({counts.size}) must match datasets length "
                              f"({self.mixture.num_datasets}): datasets={self.mixture.names}")
        carry_total = _state_int(state, "carry_total", where) if "carry_total" in state else 0
        if mixture_changed:
            position -= len(pending)
            pending, counts, carry_total = deque(), np.zeros_like(counts), 0
        self.seed, self.epoch = seed, epoch
        self._reset_epoch_state()
        self._position, self._pending = position, pending
        self._carry_counts = counts.copy()
        self._carry_total = carry_total

    # ----------------------------------------------------------------- drawing
    def _stratified_counts(self, n: int) -> np.ndarray:
        """int64 (K,) per-dataset counts of the next n draws (largest remainder with carried remainders)."""
        quota = (self._carry_total + n) * self.mixture.shares - self._carry_counts
        counts = np.floor(np.maximum(quota, 0.0)).astype(np.int64)
        short = n - int(counts.sum())
        remainder = quota - counts
        if short > 0:  # the largest remainders get one more (ties: lower dataset index)
            counts[np.argsort(-remainder, kind="stable")[:short]] += 1
        elif short < 0:  # only after clipping a negative quota: take back from the smallest remainders
            order = [i for i in np.argsort(remainder, kind="stable") if counts[i] > 0]
            counts[order[:-short]] -= 1
        self._carry_counts += counts
        self._carry_total += n
        return counts

    def _generate(self, n: int) -> np.ndarray:
        """Draw this rank's next n indices (advancing the position, not touching `_pending`)."""
        out = np.empty(n, dtype=np.int64)
        if n == 0:
            return out
        start = seeds.rank_start(self.rank, self.world_size, self._position)
        m = self.mixture
        if not self.shuffle:
            np.remainder(np.arange(n, dtype=np.int64) * self.world_size + start, m.kept_total, out=out)
            if m.filtered:
                out[:] = m.kept_global(out)
        elif self._stratified:
            counts = self._stratified_counts(n)
            labels = np.repeat(np.arange(m.num_datasets, dtype=np.int64), counts)
            self._k.stratified_draw(self._streams[0], self._streams[1], start, self.world_size,
                                    m.dataset_table.threshold, m.dataset_table.alias, self.index_map.offsets,
                                    m.frame_threshold, m.frame_alias, m.frame_offsets, labels, out,
                                    seg_start=m.segment_start, seg_length=m.segment_length)
        else:
            self._k.mixture_draw(self._streams[0], start, self.world_size, m.dataset_table.threshold,
                                 m.dataset_table.alias, self.index_map.offsets, m.frame_threshold, m.frame_alias,
                                 m.frame_offsets, out, threads_for(n), seg_start=m.segment_start,
                                 seg_length=m.segment_length)
        self._position += n
        return out

    def next_indices(self, n: int) -> np.ndarray:
        """int64 (n,): this rank's next n global indices (a stratified batch when batching="stratified")."""
        n = check_int(n, "n", minimum=0)
        if self._pending:  # finish what __iter__ started, in stream order
            take = [self._pending.popleft() for _ in range(min(n, len(self._pending)))]
            return np.concatenate([np.asarray(take, dtype=np.int64), self.next_indices(n - len(take))])
        return self._generate(n)

    def __iter__(self) -> Iterator[int]:
        """Yields the rest of this rank's current epoch, then moves to the next epoch."""
        if self.position >= len(self):
            self.set_epoch(self.epoch + 1)
        chunk = self.batch_size if self._stratified else _ITER_CHUNK
        while self.position < len(self):
            if not self._pending:
                self._pending = deque(self._generate(min(chunk, len(self) - self._position)).tolist())
            while self._pending:
                yield self._pending.popleft()
        self.set_epoch(self.epoch + 1)

    def __repr__(self) -> str:
        return (f"MixtureSampler(sizes={self.mixture.sizes.tolist()}, weights={self.mixture.weights.tolist()}, "
                f"weighting={self.mixture.weighting!r}, batching={self.batching!r}, shuffle={self.shuffle}, "
                f"seed={self.seed}, rank={self.rank}, world_size={self.world_size}, epoch={self.epoch})")


__all__ = ["BATCHINGS", "MixtureSampler", "resolve_rank_world_size"]
