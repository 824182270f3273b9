// Philox4x64-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the variant
// numpy.random.Philox implements. A block is a pure function of a 256-bit counter and a 128-bit key.
// numpy's bit generator increments its counter *before* generating, so numpy's first block for
// counter c is philox4x64_10(c + 1, key).
#pragma once
#include <cstdint>

namespace fastmix {

using u64 = std::uint64_t;
using i64 = std::int64_t;
using u128 = unsigned __int128;

struct Block {
    u64 v[4];
};

constexpr u64 kPhiloxM0 = 0xD2E7470EE14C6C93ULL;  // round multipliers
constexpr u64 kPhiloxM1 = 0xCA5A826395121157ULL;
constexpr u64 kPhiloxW0 = 0x9E3779B97F4A7C15ULL;  // key schedule (Weyl) increments
constexpr u64 kPhiloxW1 = 0xBB67AE8584CAA73BULL;

// One Philox4x64 block: 10 rounds over counter (c0..c3) with key (k0, k1).
inline Block philox4x64_10(u64 c0, u64 c1, u64 c2, u64 c3, u64 k0, u64 k1) {
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {
            k0 += kPhiloxW0;
            k1 += kPhiloxW1;
        }
        const u128 p0 = static_cast<u128>(kPhiloxM0) * c0;
        const u128 p1 = static_cast<u128>(kPhiloxM1) * c2;
        c0 = static_cast<u64>(p1 >> 64) ^ c1 ^ k0;
        c2 = static_cast<u64>(p0 >> 64) ^ c3 ^ k1;
        c1 = static_cast<u64>(p1);
        c3 = static_cast<u64>(p0);
    }
    return Block{{c0, c1, c2, c3}};
}

// A stream: the key and the two fixed counter words (epoch word, stream-tag word) that seeds.py derives.
// Block b of the stream has counter (b, c1, c2, attempt); attempt > 0 only for the rare Lemire rejections.
struct Stream {
    u64 k0, k1, c1, c2;
    inline Block block(u64 b, u64 attempt = 0) const { return philox4x64_10(b, c1, c2, attempt, k0, k1); }
};

// Unbiased integer in [0, n) from a 64-bit word (Lemire's multiply-shift with rejection); `low` receives the
// low half of the accepted product (uniform over {l0 + m*n} ∩ [(2^64 mod n), 2^64), used as a coin by the
// packed alias draw). A rejected word is replaced by word `slot` of block `b` at attempt 1, 2, ... so the
// result stays a pure function of (stream, block). n >= 1.
inline u64 bounded(u64 word, u64 n, const Stream& s, u64 b, int slot, u64& low) {
    u128 m = static_cast<u128>(word) * n;
    low = static_cast<u64>(m);
    if (__builtin_expect(low < n, 0)) {
        const u64 threshold = (0 - n) % n;
        u64 attempt = 1;
        while (low < threshold) {
            m = static_cast<u128>(s.block(b, attempt++).v[slot]) * n;
            low = static_cast<u64>(m);
        }
    }
    return static_cast<u64>(m >> 64);
}

inline u64 bounded(u64 word, u64 n, const Stream& s, u64 b, int slot) {
    u64 low;
    return bounded(word, n, s, b, slot, low);
}

}  // namespace fastmix
