// Global index of the concatenation <-> (dataset, local index), vectorized.
// offsets has K+1 entries: offsets[0] = 0, offsets[d+1] = offsets[d] + N_d.
// Both functions return the position of the first out-of-range entry, or -1 when all are valid.
#pragma once
#include <cstdint>

namespace fastmix {

using i64 = std::int64_t;

inline i64 to_local(const i64* offsets, i64 k, const i64* global, i64 n, i64* dataset, i64* local) {
    const i64 total = offsets[k];
    if (k <= 8) {  // branch-free count of boundaries passed
        for (i64 i = 0; i < n; ++i) {
            const i64 g = global[i];
            if (g < 0 || g >= total) return i;
            i64 d = 0;
            for (i64 j = 1; j < k; ++j) d += (g >= offsets[j]);
            dataset[i] = d;
            local[i] = g - offsets[d];
        }
        return -1;
    }
    // Branch-free binary search (conditional moves; a random g defeats the branch predictor of
    // std::upper_bound): d = number of boundaries offsets[1..k-1] that are <= g.
    const i64* first = offsets + 1;
    for (i64 i = 0; i < n; ++i) {
        const i64 g = global[i];
        if (g < 0 || g >= total) return i;
        const i64* base = first;
        i64 len = k - 1;
        while (len > 1) {
            const i64 half = len >> 1;
            base = (base[half] <= g) ? base + half : base;
            len -= half;
        }
        const i64 d = (base - first) + (*base <= g);
        dataset[i] = d;
        local[i] = g - offsets[d];
    }
    return -1;
}

inline i64 to_global(const i64* offsets, i64 k, const i64* dataset, const i64* local, i64 n, i64* global) {
    for (i64 i = 0; i < n; ++i) {
        const i64 d = dataset[i], l = local[i];
        if (d < 0 || d >= k || l < 0 || l >= offsets[d + 1] - offsets[d]) return i;
        global[i] = offsets[d] + l;
    }
    return -1;
}

}  // namespace fastmix
