"""Numba twin of the native core (`csrc/*.hpp` → `fastmix.kernels._native`): same functions, same signatures,
bit-identical output. Used when the extension is missing or `FASTMIX_BACKEND=numba`.

One helper per C++ helper, named alike (`_philox4x64_10`, `_block` = Stream::block, `_bounded`, `_alias_select`,
`_alias_pick`, `_alias_pick_packed`, `_dataset_size`, `_frame_local`, `_pair_block` = the per-draw step of
for_each_pair_block; `_push` is alias_build's worklist step), so a change to a .hpp helper has one place to go
here. With NUMBA_DISABLE_JIT=1 the same code runs as plain Python on numpy scalars (tests/test_backends.py).

All arithmetic is uint64 with explicit np.uint64 constants (numba promotes uint64 ⊕ int64 to float64).
The word layout of each draw is documented in `csrc/mixture.hpp`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U2 = np.uint64(2)
_S32 = np.uint64(32)
_S64M = np.uint64(0xFFFFFFFFFFFFFFFF)
_M32 = np.uint64(0xFFFFFFFF)
_PHILOX_M0 = np.uint64(0xD2E7470EE14C6C93)
_PHILOX_M1 = np.uint64(0xCA5A826395121157)
_PHILOX_W0 = np.uint64(0x9E3779B97F4A7C15)
_PHILOX_W1 = np.uint64(0xBB67AE8584CAA73B)
_TWO64 = 18446744073709551616.0


@njit(cache=True, nogil=True, inline="always")
def _mulhilo(a, b):
    """(high, low) 64-bit halves of the 128-bit product a*b (uint64)."""
    a0 = a & _M32
    a1 = a >> _S32
    b0 = b & _M32
    b1 = b >> _S32
    p00 = a0 * b0
    p01 = a0 * b1
    p10 = a1 * b0
    p11 = a1 * b1
    mid = (p00 >> _S32) + (p01 & _M32) + (p10 & _M32)
    hi = p11 + (p01 >> _S32) + (p10 >> _S32) + (mid >> _S32)
    return hi, a * b


# ----------------------------------------------------------------- csrc/philox.hpp
@njit(cache=True, nogil=True)
def _philox4x64_10(c0, c1, c2, c3, k0, k1):
    """philox4x64_10: Philox4x64-10 block (4 uint64) of counter (c0..c3) under key (k0, k1)."""
    for r in range(10):
        if r > 0:
            k0 = k0 + _PHILOX_W0
            k1 = k1 + _PHILOX_W1
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0 = hi1 ^ c1 ^ k0
        c2 = hi0 ^ c3 ^ k1
        c1 = lo1
        c3 = lo0
    return c0, c1, c2, c3


@njit(cache=True, nogil=True, inline="always")
def _block(stream, b, attempt):
    """Stream::block: block b (attempt `attempt`) of a stream [k0, k1, c1, c2] (counter (b, c1, c2, attempt))."""
    return _philox4x64_10(b, stream[2], stream[3], attempt, stream[0], stream[1])


@njit(cache=True, nogil=True)
def _bounded(word, n, stream, b, slot):
    """bounded: (value in [0, n), low half of the accepted product) by Lemire's method; a rejected word is
    replaced by word `slot` of block b at attempts 1, 2, ..."""
    hi, lo = _mulhilo(word, n)
    if lo < n:
        threshold = (_U0 - n) % n
        attempt = _U1
        while lo < threshold:
            hi, lo = _mulhilo(_block(stream, b, attempt)[slot], n)
            attempt += _U1
    return hi, lo


# ----------------------------------------------------------------- csrc/alias.hpp
@njit(cache=True, nogil=True, inline="always")
def _alias_select(j, coin, threshold, alias):
    """alias_select: column j, or alias[j] when the coin fails."""
    return j if coin < threshold[j] else alias[j]


@njit(cache=True, nogil=True)
def _alias_pick(column_word, coin_word, threshold, alias, n, stream, b, slot):
    """alias_pick: two-word draw, column from `column_word` (word `slot` of block b), coin = `coin_word`."""
    j, _ = _bounded(column_word, n, stream, b, slot)
    return _alias_select(np.int64(j), coin_word, threshold, alias)


@njit(cache=True, nogil=True)
def _alias_pick_packed(word, threshold, alias, n, stream, b, slot):
    """alias_pick_packed: one-word draw, column = Lemire high half of word*n, coin = the low half."""
    j, low = _bounded(word, n, stream, b, slot)
    return _alias_select(np.int64(j), low, threshold, alias)


@njit(cache=True, nogil=True)
def philox4x64(key, counters, out):
    """out[i] = Philox4x64-10 block of counters[i] (4 uint64) under key (2 uint64)."""
    c = counters.reshape(-1, 4)
    o = out.reshape(-1, 4)
    for i in range(c.shape[0]):
        w = _philox4x64_10(c[i, 0], c[i, 1], c[i, 2], c[i, 3], key[0], key[1])
        for j in range(4):
            o[i, j] = w[j]


@njit(cache=True, nogil=True, inline="always")
def _push(stack, item, small, n_small, n_large):
    """alias_build's worklists in one array: a small item onto the front stack (`stack[n_small++]`), a large one
    onto the back stack (`stack[n - 1 - n_large++]`); returns (n_small, n_large)."""
    if small:
        stack[n_small] = item
        return n_small + 1, n_large
    stack[stack.shape[0] - 1 - n_large] = item
    return n_small, n_large + 1


@njit(cache=True, nogil=True)
def alias_build(weights, threshold, alias):
    """Vose alias table of float64 weights (max 1, validated) into threshold (uint64), alias (int64)."""
    n = weights.shape[0]
    total = 0.0
    for i in range(n):
        total += weights[i]
    scale = n / total
    scaled = np.empty(n, np.float64)
    stack = np.empty(n, np.int64)
    n_small = 0
    n_large = 0
    for i in range(n):
        scaled[i] = weights[i] * scale
        n_small, n_large = _push(stack, i, scaled[i] < 1.0, n_small, n_large)
    while n_small > 0 and n_large > 0:
        n_small -= 1
        s = stack[n_small]
        g = stack[n - n_large]
        n_large -= 1
        threshold[s] = np.uint64(scaled[s] * _TWO64)
        alias[s] = g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        n_small, n_large = _push(stack, g, scaled[g] < 1.0, n_small, n_large)
    while n_small > 0:
        n_small -= 1
        s = stack[n_small]
        threshold[s] = _S64M
        alias[s] = s
    while n_large > 0:
        g = stack[n - n_large]
        n_large -= 1
        threshold[g] = _S64M
        alias[g] = g


@njit(cache=True, nogil=True)
def alias_draw(threshold, alias, stream, start, stride, out):
    """out[i] = two-word alias draw at position p = start + i*stride (block p, words 0 and 1)."""
    n = np.uint64(threshold.shape[0])
    p = np.uint64(start)
    step = np.uint64(stride)
    for i in range(out.shape[0]):
        w = _block(stream, p, _U0)
        out[i] = _alias_pick(w[0], w[1], threshold, alias, n, stream, p, 0)
        p += step


# ----------------------------------------------------------------- csrc/mixture.hpp
@njit(cache=True, nogil=True, inline="always")
def _dataset_size(offsets, d):
    """dataset_size: frames of dataset d (uint64)."""
    return np.uint64(offsets[d + 1] - offsets[d])


@njit(cache=True, nogil=True)
def _frame_local(blk, d, offsets, frame_threshold, frame_alias, frame_offsets, seg_start, seg_length, stream, p):
    """frame_local: local index of dataset d in the frame layout (block `blk` at position p); with segments
    (seg_start non-empty) the column is a run of frames and word 3 picks the frame inside it."""
    lo = frame_offsets[d]
    hi = frame_offsets[d + 1]
    if hi > lo:
        c = lo + _alias_pick(blk[1], blk[2], frame_threshold[lo:hi], frame_alias[lo:hi], np.uint64(hi - lo),
                             stream, p, 1)
        if seg_start.shape[0] == 0:
            return c - lo
        v, _ = _bounded(blk[3], np.uint64(seg_length[c]), stream, p, 3)
        return seg_start[c] + np.int64(v)
    v, _ = _bounded(blk[1], _dataset_size(offsets, d), stream, p, 1)
    return np.int64(v)


@njit(cache=True, nogil=True, inline="always")
def _pair_block(stream, p, cached_b, cached):
    """for_each_pair_block's step: (block index b = p >> 1, its block, h = 2 * (p & 1)) of position p in the
    uniform layout; `cached` (block `cached_b`) is reused when consecutive draws share the block."""
    b = p >> _U1
    if b != cached_b:
        cached = _block(stream, b, _U0)
    return b, cached, 2 * np.int64(p & _U1)


_NO_SEGMENTS = np.empty(0, dtype=np.int64)
_NO_SEGMENTS.setflags(write=False)


def mixture_draw(stream, start, stride, ds_threshold, ds_alias, offsets, frame_threshold, frame_alias,
                 frame_offsets, out, threads=1, seg_start=None, seg_length=None):
    """out[i] = global index of the two-level mixture draw at position start + i*stride (`threads` is
    accepted for signature parity with the native kernel and ignored: one thread). seg_start/seg_length (one
    per column, or None/empty): each column is a run of frames drawn uniformly (csrc/mixture.hpp)."""
    _mixture_draw(stream, start, stride, ds_threshold, ds_alias, offsets, frame_threshold, frame_alias,
                  frame_offsets, _NO_SEGMENTS if seg_start is None else seg_start,
                  _NO_SEGMENTS if seg_length is None else seg_length, out)


@njit(cache=True, nogil=True)
def _mixture_draw(stream, start, stride, ds_threshold, ds_alias, offsets, frame_threshold, frame_alias,
                  frame_offsets, seg_start, seg_length, out):
    """mixture_draw's loop (all arguments given)."""
    k = np.uint64(ds_threshold.shape[0])
    p = np.uint64(start)
    step = np.uint64(stride)
    if frame_offsets.shape[0] == 0:  # uniform layout: block p >> 1, words h (dataset), h + 1 (local)
        b, blk = _S64M, (_U0, _U0, _U0, _U0)  # no block index reaches 2^64 - 1
        for i in range(out.shape[0]):
            b, blk, h = _pair_block(stream, p, b, blk)
            d = _alias_pick_packed(blk[h], ds_threshold, ds_alias, k, stream, b, h)
            v, _ = _bounded(blk[h + 1], _dataset_size(offsets, d), stream, b, h + 1)
            out[i] = offsets[d] + np.int64(v)
            p += step
        return
    for i in range(out.shape[0]):  # frame layout: block p
        blk = _block(stream, p, _U0)
        d = _alias_pick_packed(blk[0], ds_threshold, ds_alias, k, stream, p, 0)
        out[i] = offsets[d] + _frame_local(blk, d, offsets, frame_threshold, frame_alias, frame_offsets, seg_start,
                                           seg_length, stream, p)
        p += step


def stratified_draw(stream, perm_stream, start, stride, ds_threshold, ds_alias, offsets, frame_threshold,
                    frame_alias, frame_offsets, labels, out, seg_start=None, seg_length=None):
    """Shuffle the batch's dataset labels in place, then draw each slot's local index; out = global."""
    _stratified_draw(stream, perm_stream, start, stride, ds_threshold, ds_alias, offsets, frame_threshold,
                     frame_alias, frame_offsets, _NO_SEGMENTS if seg_start is None else seg_start,
                     _NO_SEGMENTS if seg_length is None else seg_length, labels, out)


@njit(cache=True, nogil=True)
def _stratified_draw(stream, perm_stream, start, stride, ds_threshold, ds_alias, offsets, frame_threshold,
                     frame_alias, frame_offsets, seg_start, seg_length, labels, out):
    """stratified_draw's loops (all arguments given)."""
    p0 = np.uint64(start)
    step = np.uint64(stride)
    count = labels.shape[0]
    for i in range(count - 1, 0, -1):
        p = p0 + np.uint64(i) * step
        j, _ = _bounded(_block(perm_stream, p, _U0)[0], np.uint64(i + 1), perm_stream, p, 0)
        jj = np.int64(j)
        t = labels[i]
        labels[i] = labels[jj]
        labels[jj] = t
    p = p0
    if frame_offsets.shape[0] == 0:  # uniform layout: the local word h + 1 of block p >> 1
        b, blk = _S64M, (_U0, _U0, _U0, _U0)
        for i in range(count):
            b, blk, h = _pair_block(stream, p, b, blk)
            d = labels[i]
            v, _ = _bounded(blk[h + 1], _dataset_size(offsets, d), stream, b, h + 1)
            out[i] = offsets[d] + np.int64(v)
            p += step
        return
    for i in range(count):
        d = labels[i]
        out[i] = offsets[d] + _frame_local(_block(stream, p, _U0), d, offsets, frame_threshold, frame_alias,
                                           frame_offsets, seg_start, seg_length, stream, p)
        p += step


@njit(cache=True, nogil=True)
def to_local(offsets, global_index, dataset, local):
    """Global -> (dataset, local); returns the first out-of-range position, or -1."""
    k = offsets.shape[0] - 1
    total = offsets[k]
    for i in range(global_index.shape[0]):
        g = global_index[i]
        if g < 0 or g >= total:
            return i
        d = np.searchsorted(offsets[1:k], g, side="right")
        dataset[i] = d
        local[i] = g - offsets[d]
    return -1


@njit(cache=True, nogil=True)
def to_global(offsets, dataset, local, global_index):
    """(dataset, local) -> global; returns the first out-of-range position, or -1."""
    k = offsets.shape[0] - 1
    for i in range(dataset.shape[0]):
        d = dataset[i]
        ln = local[i]
        if d < 0 or d >= k or ln < 0 or ln >= offsets[d + 1] - offsets[d]:
            return i
        global_index[i] = offsets[d] + ln
    return -1
