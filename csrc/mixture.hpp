// Two-level mixture draw: a K-entry alias table picks the dataset, then a uniform local index (or the
// dataset's per-frame alias table). Output: global index offsets[d] + local.
//
// Word layout of draw position p (the numba twin and the Python reference follow it exactly):
//   uniform layout (no frame tables):  block p >> 1, h = 2 * (p & 1):
//       word h     -> dataset (packed alias: column = Lemire high half, coin = low half)
//       word h + 1 -> local index (Lemire)                         => two draws per Philox block
//   frame layout (some dataset has a table of columns: per-frame weights, frame filters, per-episode weighting):
//   block p:
//       word 0 -> dataset (packed alias); word 1 -> column (Lemire) or uniform local index;
//       word 2 -> column coin; word 3 -> offset inside the column's segment (Lemire over its length; only with
//       segments)
// A column is one local frame, or (segments) a run of local frames [seg_start[c], seg_start[c] + seg_length[c])
// drawn uniformly: frame filters and per-episode weighting need one column per kept run, not per frame.
// Rejected Lemire words are replaced by the same word of the same block at attempt 1, 2, ...
#pragma once
#include <cstdint>

#include "alias.hpp"

namespace fastmix {

struct DatasetTables {
    const u64* threshold;  // K
    const i64* alias;      // K
    const i64* offsets;    // K+1: start of each dataset in the concatenation
    i64 k;
};

// Per-frame alias tables of all datasets, concatenated: dataset d's table is entries
// [frame_offsets[d], frame_offsets[d+1]); an empty range means "uniform local index".
struct FrameTables {
    const u64* threshold;
    const i64* alias;
    const i64* frame_offsets;  // K+1 entries, or nullptr: uniform layout
    const i64* seg_start;      // one per column (same indexing as threshold), or nullptr: column c is frame c
    const i64* seg_length;     // one per column (>= 1), or nullptr
};

inline u64 dataset_size(const DatasetTables& ds, i64 d) { return static_cast<u64>(ds.offsets[d + 1] - ds.offsets[d]); }

// Local index of dataset d in the frame layout (block b at position p).
inline i64 frame_local(const Block& blk, i64 d, const DatasetTables& ds, const FrameTables& fr, const Stream& s,
                       u64 p) {
    const i64 lo = fr.frame_offsets[d], hi = fr.frame_offsets[d + 1];
    if (hi > lo) {
        const i64 c = lo + alias_pick(blk.v[1], blk.v[2], fr.threshold + lo, fr.alias + lo, static_cast<u64>(hi - lo),
                                      s, p, 1);
        if (fr.seg_start == nullptr) return c - lo;
        return fr.seg_start[c] + static_cast<i64>(bounded(blk.v[3], static_cast<u64>(fr.seg_length[c]), s, p, 3));
    }
    return static_cast<i64>(bounded(blk.v[1], dataset_size(ds, d), s, p, 1));
}

// Calls f(i, block_index, block, h) for draw i at position start + i * stride in the uniform layout
// (h = 2 * (position & 1)). Stride 1 (one process) runs in chunks, all Philox blocks of a chunk first and
// then the picks, which keeps the multiplier busy (about 15 % faster than fusing them); other strides
// compute each block once when consecutive draws share it.
template <class F>
inline void for_each_pair_block(const Stream& s, u64 start, u64 stride, i64 count, F&& f) {
    if (stride == 1) {
        constexpr i64 kChunk = 512;  // draws per chunk
        Block buf[kChunk / 2 + 1];
        for (i64 base = 0; base < count; base += kChunk) {
            const i64 nd = count - base < kChunk ? count - base : kChunk;
            const u64 p0 = start + static_cast<u64>(base);
            const u64 b0 = p0 >> 1, b_last = (p0 + static_cast<u64>(nd) - 1) >> 1;
            for (u64 b = b0; b <= b_last; ++b) buf[b - b0] = s.block(b);
            for (i64 i = 0; i < nd; ++i) {
                const u64 p = p0 + static_cast<u64>(i);
                f(base + i, p >> 1, buf[(p >> 1) - b0], static_cast<int>(p & 1) * 2);
            }
        }
        return;
    }
    u64 cached = ~u64(0);  // no block index reaches 2^64 - 1 (positions are < 2^64)
    Block blk{};
    u64 p = start;
    for (i64 i = 0; i < count; ++i, p += stride) {
        const u64 b = p >> 1;
        if (b != cached) {
            blk = s.block(b);
            cached = b;
        }
        f(i, b, blk, static_cast<int>(p & 1) * 2);
    }
}

// out[i] = global index drawn at position start + i * stride.
inline void mixture_draw(const Stream& s, u64 start, u64 stride, const DatasetTables& ds, const FrameTables& fr,
                         i64* out, i64 count) {
    const u64 k = static_cast<u64>(ds.k);
    if (fr.frame_offsets == nullptr && ds.k == 1) {  // one dataset: only the local word matters
        const u64 n = dataset_size(ds, 0);
        const i64 base = ds.offsets[0];
        for_each_pair_block(s, start, stride, count, [&](i64 i, u64 b, const Block& blk, int h) {
            out[i] = base + static_cast<i64>(bounded(blk.v[h + 1], n, s, b, h + 1));
        });
        return;
    }
    if (fr.frame_offsets == nullptr) {  // the common case: alias over datasets + uniform local index
        for_each_pair_block(s, start, stride, count, [&](i64 i, u64 b, const Block& blk, int h) {
            const i64 d = alias_pick_packed(blk.v[h], ds.threshold, ds.alias, k, s, b, h);
            out[i] = ds.offsets[d] + static_cast<i64>(bounded(blk.v[h + 1], dataset_size(ds, d), s, b, h + 1));
        });
        return;
    }
    u64 p = start;
    for (i64 i = 0; i < count; ++i, p += stride) {
        const Block blk = s.block(p);
        const i64 d = alias_pick_packed(blk.v[0], ds.threshold, ds.alias, k, s, p, 0);
        out[i] = ds.offsets[d] + frame_local(blk, d, ds, fr, s, p);
    }
}

// Stratified batch: `labels` (count entries) holds the batch's dataset of every slot, grouped; it is
// shuffled in place (Fisher-Yates: the swap partner of slot i comes from word 0 of block p_i of the
// permutation stream, p_i = start + i * stride), then slot i gets its local index from the mixture stream at
// position p_i with the layout above (the dataset words are unused). out[i] = global index.
inline void stratified_draw(const Stream& s, const Stream& perm, u64 start, u64 stride, const DatasetTables& ds,
                            const FrameTables& fr, i64* labels, i64* out, i64 count) {
    for (i64 i = count - 1; i > 0; --i) {
        const u64 p = start + static_cast<u64>(i) * stride;
        const i64 j = static_cast<i64>(bounded(perm.block(p).v[0], static_cast<u64>(i + 1), perm, p, 0));
        const i64 t = labels[i];
        labels[i] = labels[j];
        labels[j] = t;
    }
    if (fr.frame_offsets == nullptr) {
        for_each_pair_block(s, start, stride, count, [&](i64 i, u64 b, const Block& blk, int h) {
            const i64 d = labels[i];
            out[i] = ds.offsets[d] + static_cast<i64>(bounded(blk.v[h + 1], dataset_size(ds, d), s, b, h + 1));
        });
        return;
    }
    u64 p = start;
    for (i64 i = 0; i < count; ++i, p += stride) {
        const i64 d = labels[i];
        out[i] = ds.offsets[d] + frame_local(s.block(p), d, ds, fr, s, p);
    }
}

}  // namespace fastmix
