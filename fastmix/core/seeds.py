"""The one place that derives Philox keys and counters from (seed, epoch, stream, position).

Every random number of fastmix is a Philox4x64-10 block (the generator of `numpy.random.Philox`):

* key    = the seed as a 128-bit integer: (seed mod 2^64, seed >> 64);
* counter = (block, epoch, stream tag, attempt), least significant word first, where `attempt` is 0 except
  for the rare Lemire rejections (then 1, 2, ... of the same block).

A stream is the array ``[k0, k1, epoch, tag]`` (uint64, 4) handed to the kernels. Draw position p of the
mixture stream reads block p >> 1 (uniform local indices: two draws per block) or block p (per-frame
weights); `csrc/mixture.hpp` lists the words. Hence draw p of epoch e is a pure function of (seed, e, p) and
any position is reached in O(1). Ranks never get their own stream: rank r of W takes global positions
r, r + W, r + 2W, ... of the one stream (`rank_start`).

numpy increments its counter before generating, so ``numpy.random.Philox(key=seed,
counter=numpy_counter(epoch, tag, block)).random_raw(4)`` equals block `block` of the stream.
"""

from __future__ import annotations

import numpy as np

from fastmix._args import check_int

STREAM_MIXTURE = 0  # dataset and frame choices of every draw
STREAM_PERMUTATION = 1  # order of the slots inside a stratified batch
STREAM_ALIAS = 2  # AliasTable.draw used on its own

_MASK64 = (1 << 64) - 1


def check_seed(seed: int, name: str = "seed") -> int:
    """The seed as a Python int in [0, 2^128), or ConfigError naming `name` (`check_int`'s wording)."""
    return check_int(seed, name, minimum=0, below=1 << 128, below_text="2**128")


def check_epoch(epoch: int, name: str = "epoch") -> int:
    """The epoch as a Python int in [0, 2^64), or ConfigError naming `name` (`check_int`'s wording)."""
    return check_int(epoch, name, minimum=0, below=1 << 64, below_text="2**64")


def philox_key(seed: int) -> tuple[int, int]:
    """Philox key (k0, k1) of a seed: its low and high 64 bits."""
    seed = check_seed(seed)
    return seed & _MASK64, seed >> 64


def stream(seed: int, epoch: int, tag: int) -> np.ndarray:
    """The kernels' stream argument: uint64 [k0, k1, epoch, tag] (shape (4,))."""
    k0, k1 = philox_key(seed)
    return np.array([k0, k1, check_epoch(epoch), int(tag)], dtype=np.uint64)


def counter(epoch: int, tag: int, block: int, attempt: int = 0) -> int:
    """The 256-bit Philox counter of `block` (attempt `attempt`) of stream (epoch, tag), as an integer."""
    return (block & _MASK64) | (epoch & _MASK64) << 64 | (tag & _MASK64) << 128 | (attempt & _MASK64) << 192


def numpy_counter(epoch: int, tag: int, block: int, attempt: int = 0) -> int:
    """Counter to give `numpy.random.Philox` so its first 4 raw outputs are that block (numpy adds 1 first)."""
    return (counter(epoch, tag, block, attempt) - 1) % (1 << 256)


def rank_start(rank: int, world_size: int, local_position: int) -> int:
    """Global position of this rank's draw number `local_position` (its stride is `world_size`)."""
    return rank + world_size * local_position


__all__ = [
    "STREAM_ALIAS",
    "STREAM_MIXTURE",
    "STREAM_PERMUTATION",
    "check_epoch",
    "check_seed",
    "counter",
    "numpy_counter",
    "philox_key",
    "rank_start",
    "stream",
]
