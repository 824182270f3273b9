// Pixel-exact replica of Pillow's 8-bit separable resample with the BILINEAR filter (Image.resize(...,
// BILINEAR) on "L" / "RGB" images), plus openpi's resize-with-pad: the resized image placed at (top, left) on a
// zero canvas. Written from the algorithm of Pillow's libImaging/Resample.c (no code taken from it):
//   * per output position: center = (o + 0.5) * scale, scale = in / out, filterscale = max(scale, 1),
//     support = filterscale; taps [(int)(center - support + 0.5) clamped >= 0, (int)(center + support + 0.5)
//     clamped <= in); weight of tap i = tent(((i - center) + 0.5) * (1 / filterscale)), normalized by the sum;
//     then fixed point with 22 fractional bits, rounded half away from zero.
//   * horizontal pass first, over only the source rows the vertical pass reads, into uint8 (clip8), then the
//     vertical pass; a pass is skipped when its axis keeps its size. Accumulators start at 1 << 21 (rounding).
// All double arithmetic must round exactly as Pillow's (IEEE double, no fused multiply-add), hence fp-contract
// off. fastmix/resize.py checks every geometry against PIL itself before using this.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#define FASTMIX_AVX2_KERNEL 1
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTMIX_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FASTMIX_SIMD_CLONES
#endif

#if defined(__clang__)
#define FASTMIX_NO_FMA
#elif defined(__GNUC__)
#define FASTMIX_NO_FMA __attribute__((optimize("fp-contract=off")))
#else
#define FASTMIX_NO_FMA
#endif

namespace fastmix {
namespace resize {

constexpr int kPrecisionBits = 22;

// Coefficients of one axis: output o reads `count[o]` inputs from `first[o]` with weights w[o * ksize + i].
// The same taps padded to a fixed count `kfix` (the largest count) for the horizontal pass: output o reads
// kfix inputs from `fstart[o]` (moved left near the end so that no read passes the row) with weights
// fw[o * kfix + i], zero outside the real taps (adding 0 keeps the sums identical).
struct AxisCoeffs {
    int in_size = 0, out_size = 0, ksize = 0, kfix = 0;
    std::vector<int32_t> first, count, w, fstart, fw;
};

inline double tent(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

FASTMIX_NO_FMA inline AxisCoeffs make_coeffs(int in_size, int out_size) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    AxisCoeffs c;
    c.in_size = in_size;
    c.out_size = out_size;
    const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = 1.0 * filterscale;
    const double inv = 1.0 / filterscale;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.first.resize(out_size);
    c.count.resize(out_size);
    c.w.assign(static_cast<size_t>(out_size) * c.ksize, 0);
    std::vector<double> tmp(c.ksize);
    for (int o = 0; o < out_size; ++o) {
        const double center = 0.0 + (o + 0.5) * scale;
        int lo = static_cast<int>(center - support + 0.5);
        if (lo < 0) lo = 0;
        int hi = static_cast<int>(center + support + 0.5);
        if (hi > in_size) hi = in_size;
        const int n = hi - lo;
        double sum = 0.0;
        for (int i = 0; i < n; ++i) {
            const double v = tent((static_cast<double>(i + lo) - center + 0.5) * inv);
            tmp[i] = v;
            sum += v;
        }
        for (int i = 0; i < n; ++i)
            if (sum != 0.0) tmp[i] /= sum;
        int32_t* wo = &c.w[static_cast<size_t>(o) * c.ksize];
        for (int i = 0; i < n; ++i) {
            const double scaled = tmp[i] * static_cast<double>(1 << kPrecisionBits);
            wo[i] = static_cast<int32_t>(tmp[i] < 0 ? -0.5 + scaled : 0.5 + scaled);
        }
        c.first[o] = lo;
        c.count[o] = n;
    }
    c.kfix = std::max(1, *std::max_element(c.count.begin(), c.count.end()));
    c.fstart.resize(out_size);
    c.fw.assign(static_cast<size_t>(out_size) * c.kfix, 0);
    for (int o = 0; o < out_size; ++o) {
        const int start = std::max(0, std::min(c.first[o], in_size - c.kfix));
        const int shift = c.first[o] - start;
        c.fstart[o] = start;
        for (int i = 0; i < c.count[o]; ++i)
            c.fw[static_cast<size_t>(o) * c.kfix + shift + i] = c.w[static_cast<size_t>(o) * c.ksize + i];
    }
    return c;
}

// Coefficient tables are cached per (in, out) size: a loader sees a handful of geometries.
inline std::shared_ptr<const AxisCoeffs> coeffs(int in_size, int out_size) {
    static std::mutex mu;
    static std::map<std::pair<int, int>, std::shared_ptr<const AxisCoeffs>> cache;
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find({in_size, out_size});
    if (it != cache.end()) return it->second;
    if (cache.size() >= 256) cache.clear();
    auto c = std::make_shared<const AxisCoeffs>(make_coeffs(in_size, out_size));
    cache.emplace(std::make_pair(in_size, out_size), c);
    return c;
}

inline uint8_t clip8(int32_t acc) {
    const int32_t v = acc >> kPrecisionBits;
    return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Horizontal pass over `rows` rows: src rows of in_w * C bytes (stride src_stride), dst rows of out_w * C bytes
// (stride dst_stride). K: the fixed tap count (cx.kfix) as a compile-time constant, or 0 for any.
template <int C, int K>
FASTMIX_SIMD_CLONES void horizontal_k(const uint8_t* src, std::ptrdiff_t src_stride, int rows, const AxisCoeffs& cx, uint8_t* dst,
                  std::ptrdiff_t dst_stride) {
    const int out_w = cx.out_size, kf = K > 0 ? K : cx.kfix;
    const int32_t* start = cx.fstart.data();
    const int32_t* wt = cx.fw.data();
    int y = 0;
    for (; y + 2 <= rows; y += 2) {  // two rows share each output's taps and weights
        const uint8_t* s0 = src + y * src_stride;
        const uint8_t* s1 = s0 + src_stride;
        uint8_t* d0 = dst + y * dst_stride;
        uint8_t* d1 = d0 + dst_stride;
        for (int o = 0; o < out_w; ++o) {
            const uint8_t* p0 = s0 + start[o] * C;
            const uint8_t* p1 = s1 + start[o] * C;
            const int32_t* k = wt + static_cast<std::ptrdiff_t>(o) * kf;
            int32_t a0[C], a1[C];
            for (int ch = 0; ch < C; ++ch) a0[ch] = a1[ch] = 1 << (kPrecisionBits - 1);
            for (int i = 0; i < kf; ++i) {
                const int32_t w = k[i];
                for (int ch = 0; ch < C; ++ch) {
                    a0[ch] += static_cast<int32_t>(p0[i * C + ch]) * w;
                    a1[ch] += static_cast<int32_t>(p1[i * C + ch]) * w;
                }
            }
            for (int ch = 0; ch < C; ++ch) {
                d0[o * C + ch] = clip8(a0[ch]);
                d1[o * C + ch] = clip8(a1[ch]);
            }
        }
    }
    for (; y < rows; ++y) {
        const uint8_t* s = src + y * src_stride;
        uint8_t* d = dst + y * dst_stride;
        for (int o = 0; o < out_w; ++o) {
            const uint8_t* p = s + start[o] * C;
            const int32_t* k = wt + static_cast<std::ptrdiff_t>(o) * kf;
            int32_t acc[C];
            for (int ch = 0; ch < C; ++ch) acc[ch] = 1 << (kPrecisionBits - 1);
            for (int i = 0; i < kf; ++i)
                for (int ch = 0; ch < C; ++ch) acc[ch] += static_cast<int32_t>(p[i * C + ch]) * k[i];
            for (int ch = 0; ch < C; ++ch) d[o * C + ch] = clip8(acc[ch]);
        }
    }
}

#ifdef FASTMIX_AVX2_KERNEL
// AVX2 horizontal pass for 3 channels, two output pixels per 256-bit register: each tap adds the pixel's bytes
// (loaded as 4, the 4th ignored) widened to int32 times its weight, the same integer sums as horizontal_k.
// Outputs are vectorized while their 4-byte loads stay inside the row and their 4-byte stores inside the
// resized row; the rest run horizontal_k's scalar code.
template <int K>
__attribute__((target("avx2"))) void horizontal_avx2_c3(const uint8_t* src, std::ptrdiff_t src_stride, int rows,
                                                         const AxisCoeffs& cx, uint8_t* dst,
                                                         std::ptrdiff_t dst_stride) {
    constexpr int C = 3;
    const int out_w = cx.out_size, in_w = cx.in_size;
    const int32_t* start = cx.fstart.data();
    const int32_t* wt = cx.fw.data();
    int vec_end = 0;  // outputs [0, vec_end) may use 4-byte loads (start + K < in_w) and stores (o + 1 < out_w)
    while (vec_end < out_w - 1 && start[vec_end] + K < in_w) ++vec_end;
    const __m256i half = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
    for (int y = 0; y < rows; ++y) {
        const uint8_t* s = src + y * src_stride;
        uint8_t* d = dst + y * dst_stride;
        int o = 0;
        for (; o + 2 <= vec_end; o += 2) {
            const uint8_t* p0 = s + start[o] * C;
            const uint8_t* p1 = s + start[o + 1] * C;
            const int32_t* k0 = wt + static_cast<std::ptrdiff_t>(o) * K;
            const int32_t* k1 = k0 + K;
            __m256i acc = half;
            for (int i = 0; i < K; ++i) {
                int32_t a, b;
                std::memcpy(&a, p0 + i * C, 4);
                std::memcpy(&b, p1 + i * C, 4);
                const __m256i px = _mm256_cvtepu8_epi32(_mm_insert_epi32(_mm_cvtsi32_si128(a), b, 1));
                const __m256i w = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi32(k0[i])),
                                                          _mm_set1_epi32(k1[i]), 1);
                acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(px, w));
            }
            const __m256i v = _mm256_srai_epi32(acc, kPrecisionBits);
            const __m256i b16 = _mm256_packs_epi32(v, v);      // per 128-bit lane: saturate to int16
            const __m256i b8 = _mm256_packus_epi16(b16, b16);  // then to uint8: clip8
            const int32_t r0 = _mm256_extract_epi32(b8, 0), r1 = _mm256_extract_epi32(b8, 4);
            std::memcpy(d + o * C, &r0, 4);  // the 4th byte is overwritten by the next pixel
            std::memcpy(d + (o + 1) * C, &r1, 4);
        }
        for (; o < out_w; ++o) {
            const uint8_t* p = s + start[o] * C;
            const int32_t* k = wt + static_cast<std::ptrdiff_t>(o) * K;
            int32_t acc[C];
            for (int ch = 0; ch < C; ++ch) acc[ch] = 1 << (kPrecisionBits - 1);
            for (int i = 0; i < K; ++i)
                for (int ch = 0; ch < C; ++ch) acc[ch] += static_cast<int32_t>(p[i * C + ch]) * k[i];
            for (int ch = 0; ch < C; ++ch) d[o * C + ch] = clip8(acc[ch]);
        }
    }
}

// FASTMIX_RESIZE_SCALAR=1 (read once per process) forces the portable code, for tests.
inline bool has_avx2() {
    static const bool yes = __builtin_cpu_supports("avx2") && std::getenv("FASTMIX_RESIZE_SCALAR") == nullptr;
    return yes;
}
#endif

template <int C>
void horizontal(const uint8_t* src, std::ptrdiff_t src_stride, int rows, const AxisCoeffs& cx, uint8_t* dst,
                std::ptrdiff_t dst_stride) {
#ifdef FASTMIX_AVX2_KERNEL
    if (C == 3 && has_avx2()) {
        switch (cx.kfix) {
            case 2: return horizontal_avx2_c3<2>(src, src_stride, rows, cx, dst, dst_stride);
            case 3: return horizontal_avx2_c3<3>(src, src_stride, rows, cx, dst, dst_stride);
            case 4: return horizontal_avx2_c3<4>(src, src_stride, rows, cx, dst, dst_stride);
            case 5: return horizontal_avx2_c3<5>(src, src_stride, rows, cx, dst, dst_stride);
            case 6: return horizontal_avx2_c3<6>(src, src_stride, rows, cx, dst, dst_stride);
            case 7: return horizontal_avx2_c3<7>(src, src_stride, rows, cx, dst, dst_stride);
            case 8: return horizontal_avx2_c3<8>(src, src_stride, rows, cx, dst, dst_stride);
            default: break;
        }
    }
#endif
    switch (cx.kfix) {  // common tap counts unrolled: 2..3 (up to x1 down), 4..5 (to x2), 6..7 (to x3)
        case 2: return horizontal_k<C, 2>(src, src_stride, rows, cx, dst, dst_stride);
        case 3: return horizontal_k<C, 3>(src, src_stride, rows, cx, dst, dst_stride);
        case 4: return horizontal_k<C, 4>(src, src_stride, rows, cx, dst, dst_stride);
        case 5: return horizontal_k<C, 5>(src, src_stride, rows, cx, dst, dst_stride);
        case 6: return horizontal_k<C, 6>(src, src_stride, rows, cx, dst, dst_stride);
        case 7: return horizontal_k<C, 7>(src, src_stride, rows, cx, dst, dst_stride);
        default: return horizontal_k<C, 0>(src, src_stride, rows, cx, dst, dst_stride);
    }
}

// Vertical pass: output row o = weighted sum of `count[o]` rows of src starting at row first[o] - row0.
// Each row is `row_len` bytes; the accumulation runs over the whole row (vectorized by the compiler).
FASTMIX_SIMD_CLONES inline void vertical(const uint8_t* src, std::ptrdiff_t src_stride, int row0, std::ptrdiff_t row_len,
                     const AxisCoeffs& cy, uint8_t* dst, std::ptrdiff_t dst_stride, int32_t* acc) {
    const int ks = cy.ksize;
    for (int o = 0; o < cy.out_size; ++o) {
        const int n = cy.count[o];
        const int32_t* k = cy.w.data() + static_cast<std::ptrdiff_t>(o) * ks;
        const uint8_t* s0 = src + static_cast<std::ptrdiff_t>(cy.first[o] - row0) * src_stride;
        for (std::ptrdiff_t i = 0; i < row_len; ++i) acc[i] = 1 << (kPrecisionBits - 1);
        for (int t = 0; t < n; ++t) {
            const uint8_t* __restrict s = s0 + t * src_stride;
            const int32_t w = k[t];
            int32_t* __restrict a = acc;
            for (std::ptrdiff_t i = 0; i < row_len; ++i) a[i] += static_cast<int32_t>(s[i]) * w;
        }
        uint8_t* __restrict d = dst + o * dst_stride;
        for (std::ptrdiff_t i = 0; i < row_len; ++i) {
            const int32_t v = acc[i] >> kPrecisionBits;
            d[i] = static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
        }
    }
}

// Reusable per-call scratch: the horizontally resampled rows and one row of accumulators.
struct Scratch {
    std::vector<uint8_t> rows;
    std::vector<int32_t> acc;
};

// vertical_first: run the vertical pass first when both axes change (Pillow >= 13 does for some geometries;
// fastmix/resize.py finds out which order the installed Pillow uses).
template <int C>
void resample_into(const uint8_t* src, int in_h, int in_w, int out_h, int out_w, uint8_t* dst,
                   std::ptrdiff_t dst_stride, bool vertical_first, Scratch& scratch) {
    const std::ptrdiff_t in_row = static_cast<std::ptrdiff_t>(in_w) * C;
    const std::ptrdiff_t out_row = static_cast<std::ptrdiff_t>(out_w) * C;
    const bool need_h = out_w != in_w, need_v = out_h != in_h;
    if (!need_h && !need_v) {
        for (int y = 0; y < in_h; ++y) std::memcpy(dst + y * dst_stride, src + y * in_row, in_row);
        return;
    }
    if (!need_v) {  // horizontal only, every row, straight into the canvas
        horizontal<C>(src, in_row, in_h, *coeffs(in_w, out_w), dst, dst_stride);
        return;
    }
    const auto cy = coeffs(in_h, out_h);
    scratch.acc.resize(static_cast<size_t>(out_row));
    if (!need_h) {  // vertical only, straight from the source
        vertical(src, in_row, 0, in_row, *cy, dst, dst_stride, scratch.acc.data());
        return;
    }
    if (vertical_first) {  // all columns vertically into scratch, then horizontally into the canvas
        scratch.acc.resize(static_cast<size_t>(in_row));
        scratch.rows.resize(static_cast<size_t>(out_h) * in_row);
        vertical(src, in_row, 0, in_row, *cy, scratch.rows.data(), in_row, scratch.acc.data());
        horizontal<C>(scratch.rows.data(), in_row, out_h, *coeffs(in_w, out_w), dst, dst_stride);
        return;
    }
    const int y_first = cy->first[0];
    const int y_last = cy->first[out_h - 1] + cy->count[out_h - 1];
    const int rows = y_last - y_first;
    scratch.rows.resize(static_cast<size_t>(rows) * out_row);
    horizontal<C>(src + y_first * in_row, in_row, rows, *coeffs(in_w, out_w), scratch.rows.data(), out_row);
    vertical(scratch.rows.data(), out_row, y_first, out_row, *cy, dst, dst_stride, scratch.acc.data());
}

// Resize n images (in_h, in_w, channels) uint8 to (rh, rw) and write each at (top, left) on its
// (height, width, channels) canvas in `out`, zeroing only the canvas outside the resized image.
inline void resize_with_pad(const uint8_t* src, int64_t n, int in_h, int in_w, int channels, uint8_t* out,
                            int height, int width, int rh, int rw, int top, int left, bool vertical_first) {
    if (channels < 1 || channels > 4) throw std::invalid_argument("channels must be 1..4");
    if (in_h < 1 || in_w < 1 || rh < 1 || rw < 1 || top < 0 || left < 0 || top + rh > height ||
        left + rw > width)
        throw std::invalid_argument("resize_with_pad: the resized image does not fit the canvas");
    const std::ptrdiff_t c = channels;
    const std::ptrdiff_t in_size = static_cast<std::ptrdiff_t>(in_h) * in_w * c;
    const std::ptrdiff_t row = static_cast<std::ptrdiff_t>(width) * c;
    const std::ptrdiff_t out_size = static_cast<std::ptrdiff_t>(height) * row;
    Scratch scratch;
    for (int64_t i = 0; i < n; ++i) {
        const uint8_t* s = src + i * in_size;
        uint8_t* o = out + i * out_size;
        if (top > 0) std::memset(o, 0, top * row);
        if (top + rh < height) std::memset(o + (top + rh) * row, 0, (height - top - rh) * row);
        if (left > 0 || left + rw < width)
            for (int y = top; y < top + rh; ++y) {
                uint8_t* r = o + y * row;
                if (left > 0) std::memset(r, 0, left * c);
                if (left + rw < width) std::memset(r + (left + rw) * c, 0, (width - left - rw) * c);
            }
        uint8_t* dst = o + top * row + left * c;
        switch (channels) {
            case 1: resample_into<1>(s, in_h, in_w, rh, rw, dst, row, vertical_first, scratch); break;
            case 2: resample_into<2>(s, in_h, in_w, rh, rw, dst, row, vertical_first, scratch); break;
            case 3: resample_into<3>(s, in_h, in_w, rh, rw, dst, row, vertical_first, scratch); break;
            default: resample_into<4>(s, in_h, in_w, rh, rw, dst, row, vertical_first, scratch); break;
        }
    }
}

}  // namespace resize
}  // namespace fastmix
