// Vose's alias method: O(n) build from float64 weights, O(1) draw.
// Column j keeps itself when its coin is below threshold[j] (probability threshold[j] / 2^64), otherwise it
// yields alias[j]. Full columns get threshold 2^64-1 and alias[j] = j, so they are exact.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "philox.hpp"

namespace fastmix {

// Builds the table. `w` holds n >= 1 finite, non-negative weights with a positive sum (validated by the
// caller, already scaled so the maximum is 1). Writes threshold[n] and alias[n]. The float operations and
// their order are fixed (sequential sum, Vose worklists as stacks) so the numba twin builds the same table.
inline void alias_build(const double* w, i64 n, u64* threshold, i64* alias) {
    double total = 0.0;
    for (i64 i = 0; i < n; ++i) total += w[i];
    const double scale = static_cast<double>(n) / total;
    std::vector<double> scaled(static_cast<std::size_t>(n));
    std::vector<i64> stack(static_cast<std::size_t>(n));  // small items from the front, large from the back
    i64 n_small = 0, n_large = 0;
    for (i64 i = 0; i < n; ++i) {
        scaled[i] = w[i] * scale;
        if (scaled[i] < 1.0)
            stack[n_small++] = i;
        else
            stack[n - 1 - n_large++] = i;
    }
    constexpr double two64 = 18446744073709551616.0;
    while (n_small > 0 && n_large > 0) {
        const i64 s = stack[--n_small];
        const i64 g = stack[n - n_large--];
        threshold[s] = static_cast<u64>(scaled[s] * two64);
        alias[s] = g;
        scaled[g] = (scaled[g] + scaled[s]) - 1.0;
        if (scaled[g] < 1.0)
            stack[n_small++] = g;
        else
            stack[n - 1 - n_large++] = g;
    }
    // Leftovers are full columns (exactly 1 up to rounding).
    while (n_small > 0) {
        const i64 s = stack[--n_small];
        threshold[s] = ~u64(0);
        alias[s] = s;
    }
    while (n_large > 0) {
        const i64 g = stack[n - n_large--];
        threshold[g] = ~u64(0);
        alias[g] = g;
    }
}

// Column j, or alias[j] when the coin fails; branch-free (the coin is a fair guess for the predictor).
inline i64 alias_select(i64 j, u64 coin, const u64* threshold, const i64* alias) {
    const i64 keep = -static_cast<i64>(coin < threshold[j]);  // all ones: keep the column
    return (j & keep) | (alias[j] & ~keep);
}

// Two-word draw: column from `column_word` (word `slot` of block b), coin = `coin_word`.
inline i64 alias_pick(u64 column_word, u64 coin_word, const u64* threshold, const i64* alias, u64 n,
                      const Stream& s, u64 b, int slot) {
    return alias_select(static_cast<i64>(bounded(column_word, n, s, b, slot)), coin_word, threshold, alias);
}

// One-word ("packed") draw for small tables: the column is the high half of word*n (Lemire), the coin is
// the low half. For each column the coin takes floor(2^64/n) evenly spaced values, so its probability
// differs from threshold/2^64 by at most n/2^64; fastmix.mixture reconstructs the exact probabilities.
inline i64 alias_pick_packed(u64 word, const u64* threshold, const i64* alias, u64 n, const Stream& s, u64 b,
                             int slot) {
    u64 low;
    const i64 j = static_cast<i64>(bounded(word, n, s, b, slot, low));
    return alias_select(j, low, threshold, alias);
}

// out[i] = two-word alias draw at position p = start + i * stride (block p, words 0 and 1).
inline void alias_draw(const u64* threshold, const i64* alias, i64 n, const Stream& s, u64 start, u64 stride,
                       i64* out, i64 count) {
    u64 p = start;
    for (i64 i = 0; i < count; ++i, p += stride) {
        const Block b = s.block(p);
        out[i] = alias_pick(b.v[0], b.v[1], threshold, alias, static_cast<u64>(n), s, p, 0);
    }
}

}  // namespace fastmix
