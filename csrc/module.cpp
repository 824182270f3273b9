// fastmix._native: the sampling core over caller-owned numpy buffers (no allocation of results here).
// fastmix/_kernels_numba.py implements the same functions with the same signatures, bit for bit.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "alias.hpp"
#include "convert.hpp"
#include "index_map.hpp"
#include "mixture.hpp"
#include "philox.hpp"

namespace py = pybind11;
using fastmix::i64;
using fastmix::u64;

namespace {

template <typename T>
using Arr = py::array_t<T, py::array::c_style>;

template <typename T>
const T* in_ptr(const Arr<T>& a, py::ssize_t n, const char* name) {
    if (n >= 0 && a.size() != n)
        throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(n) + " entries, got " +
                                    std::to_string(a.size()));
    return a.data();
}

template <typename T>
T* out_ptr(Arr<T>& a, py::ssize_t n, const char* name) {
    if (a.size() != n)
        throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(n) + " entries, got " +
                                    std::to_string(a.size()));
    return a.mutable_data();  // throws if not writeable
}

fastmix::Stream to_stream(const Arr<u64>& s, const char* name) {
    const u64* p = in_ptr(s, 4, name);
    return fastmix::Stream{p[0], p[1], p[2], p[3]};
}

// Runs fn(begin, end) over [0, count) on `threads` threads that take even-sized chunks of 2^15 draws from a
// shared counter (even boundaries keep both draws of a Philox block in one chunk). Dynamic chunks keep both
// cores busy when one of them is briefly taken by another process; results do not depend on `threads` or on
// who ran which chunk: every draw is a pure function of its position.
template <class F>
void parallel_ranges(i64 count, int threads, F&& fn) {
    constexpr i64 kChunk = i64(1) << 15;
    if (threads <= 1 || count < 2 * kChunk) {
        fn(0, count);
        return;
    }
    std::atomic<i64> next{0};
    auto run = [&]() {
        for (i64 begin = next.fetch_add(kChunk); begin < count; begin = next.fetch_add(kChunk))
            fn(begin, std::min(count, begin + kChunk));
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(run);
    run();
    for (auto& th : pool) th.join();
}

// Pixel conversion (convert.hpp): out = table[src], uint8 (N, H, W, C) -> float32 (N, C, H, W) or (N, H, W, C).
void lut_u8_to_f32(const py::array_t<std::uint8_t, py::array::c_style>& src, const Arr<float>& table, Arr<float> out,
                   bool chw) {
    if (src.ndim() != 4) throw std::invalid_argument("src: expected uint8 (N, H, W, C)");
    const py::ssize_t n = src.shape(0), h = src.shape(1), w = src.shape(2), c = src.shape(3);
    const float* t = in_ptr(table, 256, "table");
    if (out.ndim() != 4) throw std::invalid_argument("out: expected float32 (N, C, H, W) or (N, H, W, C)");
    const bool ok = chw ? (out.shape(0) == n && out.shape(1) == c && out.shape(2) == h && out.shape(3) == w)
                        : (out.shape(0) == n && out.shape(1) == h && out.shape(2) == w && out.shape(3) == c);
    if (!ok) throw std::invalid_argument("out: shape does not match src (N, H, W, C) in the requested layout");
    const std::uint8_t* s = src.data();
    float* o = out.mutable_data();
    py::gil_scoped_release nogil;
    fastmix::lut_u8_to_f32(s, n, h, w, c, t, o, chw);
}

struct Tables {
    fastmix::DatasetTables ds;
    fastmix::FrameTables fr;
};

Tables make_tables(const Arr<u64>& ds_threshold, const Arr<i64>& ds_alias, const Arr<i64>& offsets,
                   const Arr<u64>& frame_threshold, const Arr<i64>& frame_alias, const Arr<i64>& frame_offsets,
                   const Arr<i64>& seg_start, const Arr<i64>& seg_length) {
    const py::ssize_t k = ds_threshold.size();
    if (k < 1) throw std::invalid_argument("ds_threshold: need at least one dataset");
    Tables t;
    t.ds = {in_ptr(ds_threshold, k, "ds_threshold"), in_ptr(ds_alias, k, "ds_alias"),
            in_ptr(offsets, k + 1, "offsets"), static_cast<i64>(k)};
    if (frame_offsets.size() == 0) {
        t.fr = {nullptr, nullptr, nullptr, nullptr, nullptr};
    } else {
        const i64* fo = in_ptr(frame_offsets, k + 1, "frame_offsets");
        in_ptr(frame_threshold, fo[k], "frame_threshold");
        in_ptr(frame_alias, fo[k], "frame_alias");
        t.fr = {frame_threshold.data(), frame_alias.data(), fo, nullptr, nullptr};
        if (seg_start.size() != 0 || seg_length.size() != 0) {  // segments: (start, length >= 1) per column,
            t.fr.seg_start = in_ptr(seg_start, fo[k], "seg_start");  // built by fastmix.core.mixture
            t.fr.seg_length = in_ptr(seg_length, fo[k], "seg_length");
        }
    }
    return t;
}

void philox4x64(const Arr<u64>& key, const Arr<u64>& counters, Arr<u64> out) {
    const u64* k = in_ptr(key, 2, "key");
    const py::ssize_t n = counters.size() / 4;
    const u64* c = in_ptr(counters, 4 * n, "counters");
    u64* o = out_ptr(out, 4 * n, "out");
    py::gil_scoped_release nogil;
    for (py::ssize_t i = 0; i < n; ++i) {
        const fastmix::Block b = fastmix::philox4x64_10(c[4 * i], c[4 * i + 1], c[4 * i + 2], c[4 * i + 3], k[0], k[1]);
        for (int j = 0; j < 4; ++j) o[4 * i + j] = b.v[j];
    }
}

void alias_build(const Arr<double>& weights, Arr<u64> threshold, Arr<i64> alias) {
    const py::ssize_t n = weights.size();
    if (n < 1) throw std::invalid_argument("weights: need at least one entry");
    const double* w = weights.data();
    u64* t = out_ptr(threshold, n, "threshold");
    i64* a = out_ptr(alias, n, "alias");
    py::gil_scoped_release nogil;
    fastmix::alias_build(w, n, t, a);
}

void alias_draw(const Arr<u64>& threshold, const Arr<i64>& alias, const Arr<u64>& stream, u64 start, u64 stride,
                Arr<i64> out) {
    const py::ssize_t n = threshold.size();
    if (n < 1) throw std::invalid_argument("threshold: need at least one entry");
    const fastmix::Stream s = to_stream(stream, "stream");
    const u64* t = threshold.data();
    const i64* a = in_ptr(alias, n, "alias");
    i64* o = out.mutable_data();
    const i64 count = out.size();
    py::gil_scoped_release nogil;
    fastmix::alias_draw(t, a, n, s, start, stride, o, count);
}

void mixture_draw(const Arr<u64>& stream, u64 start, u64 stride, const Arr<u64>& ds_threshold,
                  const Arr<i64>& ds_alias, const Arr<i64>& offsets, const Arr<u64>& frame_threshold,
                  const Arr<i64>& frame_alias, const Arr<i64>& frame_offsets, Arr<i64> out, int threads,
                  const Arr<i64>& seg_start, const Arr<i64>& seg_length) {
    const fastmix::Stream s = to_stream(stream, "stream");
    const Tables t = make_tables(ds_threshold, ds_alias, offsets, frame_threshold, frame_alias, frame_offsets,
                                 seg_start, seg_length);
    i64* o = out.mutable_data();
    const i64 count = out.size();
    py::gil_scoped_release nogil;
    parallel_ranges(count, threads, [&](i64 begin, i64 end) {
        fastmix::mixture_draw(s, start + static_cast<u64>(begin) * stride, stride, t.ds, t.fr, o + begin, end - begin);
    });
}

void stratified_draw(const Arr<u64>& stream, const Arr<u64>& perm_stream, u64 start, u64 stride,
                     const Arr<u64>& ds_threshold, const Arr<i64>& ds_alias, const Arr<i64>& offsets,
                     const Arr<u64>& frame_threshold, const Arr<i64>& frame_alias, const Arr<i64>& frame_offsets,
                     Arr<i64> labels, Arr<i64> out, const Arr<i64>& seg_start, const Arr<i64>& seg_length) {
    const fastmix::Stream s = to_stream(stream, "stream");
    const fastmix::Stream perm = to_stream(perm_stream, "perm_stream");
    const Tables t = make_tables(ds_threshold, ds_alias, offsets, frame_threshold, frame_alias, frame_offsets,
                                 seg_start, seg_length);
    const i64 count = labels.size();
    i64* lab = labels.mutable_data();
    i64* o = out_ptr(out, count, "out");
    for (i64 i = 0; i < count; ++i)
        if (lab[i] < 0 || lab[i] >= t.ds.k) throw std::invalid_argument("labels: dataset index out of range");
    py::gil_scoped_release nogil;
    fastmix::stratified_draw(s, perm, start, stride, t.ds, t.fr, lab, o, count);
}

i64 to_local(const Arr<i64>& offsets, const Arr<i64>& global, Arr<i64> dataset, Arr<i64> local) {
    const py::ssize_t k = offsets.size() - 1;
    if (k < 1) throw std::invalid_argument("offsets: need at least two entries");
    const py::ssize_t n = global.size();
    const i64* off = offsets.data();
    const i64* g = global.data();
    i64* d = out_ptr(dataset, n, "dataset");
    i64* l = out_ptr(local, n, "local");
    py::gil_scoped_release nogil;
    return fastmix::to_local(off, k, g, n, d, l);
}

i64 to_global(const Arr<i64>& offsets, const Arr<i64>& dataset, const Arr<i64>& local, Arr<i64> global) {
    const py::ssize_t k = offsets.size() - 1;
    if (k < 1) throw std::invalid_argument("offsets: need at least two entries");
    const py::ssize_t n = dataset.size();
    const i64* off = offsets.data();
    const i64* d = dataset.data();
    const i64* l = in_ptr(local, n, "local");
    i64* g = out_ptr(global, n, "global");
    py::gil_scoped_release nogil;
    return fastmix::to_global(off, k, d, l, n, g);
}

}  // namespace

// ---- resize_with_pad_u8 (csrc/resize.hpp): Pillow-exact BILINEAR resize + zero padding, uint8 NHWC ----
#include "resize.hpp"

namespace {

void resize_with_pad_u8(const py::array_t<uint8_t, py::array::c_style>& src,
                        py::array_t<uint8_t, py::array::c_style> out, int rh, int rw, int top, int left,
                        bool vertical_first) {
    if (src.ndim() != 4 || out.ndim() != 4)
        throw std::invalid_argument("src and out must be (N, H, W, C) uint8 arrays, got " +
                                    std::to_string(src.ndim()) + " and " + std::to_string(out.ndim()) + " dims");
    const py::ssize_t n = src.shape(0), h = src.shape(1), w = src.shape(2), c = src.shape(3);
    if (out.shape(0) != n || out.shape(3) != c)
        throw std::invalid_argument("out must be (" + std::to_string(n) + ", height, width, " + std::to_string(c) +
                                    "), got (" + std::to_string(out.shape(0)) + ", ..., " +
                                    std::to_string(out.shape(3)) + ")");
    const int height = static_cast<int>(out.shape(1)), width = static_cast<int>(out.shape(2));
    const uint8_t* s = src.data();
    uint8_t* o = out.mutable_data();  // throws if not writeable
    if (n == 0) return;
    py::gil_scoped_release nogil;
    fastmix::resize::resize_with_pad(s, n, static_cast<int>(h), static_cast<int>(w), static_cast<int>(c), o, height,
                                     width, rh, rw, top, left, vertical_first);
}

}  // namespace
// ---- end resize_with_pad_u8 ----

PYBIND11_MODULE(_native, m) {
    m.doc() = "fastmix native core: Philox4x64-10, Vose alias tables, mixture draws, index mapping, pixel conversion";
    // Raised with every change of a kernel's signature; fastmix.kernels.backend refuses an older build.
    m.attr("ABI_VERSION") = 2;  // 2: seg_start / seg_length of mixture_draw and stratified_draw (issue 22)
    m.def("lut_u8_to_f32", &lut_u8_to_f32, py::arg("src"), py::arg("table"), py::arg("out").noconvert(),
          py::arg("chw"), "out = table[src] (float32), uint8 (N, H, W, C) -> (N, C, H, W) when chw, else same layout.");
    m.def("philox4x64", &philox4x64, py::arg("key"), py::arg("counters"), py::arg("out").noconvert(),
          "out[i] = Philox4x64-10 block of counters[i] (4 uint64) under key (2 uint64).");
    m.def("alias_build", &alias_build, py::arg("weights"), py::arg("threshold").noconvert(),
          py::arg("alias").noconvert(), "Vose alias table of float64 weights into threshold (uint64), alias (int64).");
    m.def("alias_draw", &alias_draw, py::arg("threshold"), py::arg("alias"), py::arg("stream"), py::arg("start"),
          py::arg("stride"), py::arg("out").noconvert(), "out[i] = alias draw at position start + i*stride.");
    m.def("mixture_draw", &mixture_draw, py::arg("stream"), py::arg("start"), py::arg("stride"),
          py::arg("ds_threshold"), py::arg("ds_alias"), py::arg("offsets"), py::arg("frame_threshold"),
          py::arg("frame_alias"), py::arg("frame_offsets"), py::arg("out").noconvert(), py::arg("threads") = 1,
          py::arg("seg_start") = Arr<i64>(0), py::arg("seg_length") = Arr<i64>(0),
          "out[i] = global index of the two-level mixture draw at position start + i*stride; `threads` "
          "splits the range (same result for any value). seg_start/seg_length (one per column, or empty): "
          "each column is a run of frames drawn uniformly (csrc/mixture.hpp).");
    m.def("stratified_draw", &stratified_draw, py::arg("stream"), py::arg("perm_stream"), py::arg("start"),
          py::arg("stride"), py::arg("ds_threshold"), py::arg("ds_alias"), py::arg("offsets"),
          py::arg("frame_threshold"), py::arg("frame_alias"), py::arg("frame_offsets"),
          py::arg("labels").noconvert(), py::arg("out").noconvert(), py::arg("seg_start") = Arr<i64>(0),
          py::arg("seg_length") = Arr<i64>(0),
          "Shuffle the batch's dataset labels in place, then draw each slot's local index; out = global.");
    m.def("to_local", &to_local, py::arg("offsets"), py::arg("global_index"), py::arg("dataset").noconvert(),
          py::arg("local").noconvert(), "Global -> (dataset, local); returns the first bad position or -1.");
    m.def("to_global", &to_global, py::arg("offsets"), py::arg("dataset"), py::arg("local"),
          py::arg("global_index").noconvert(), "(dataset, local) -> global; returns the first bad position or -1.");
    // ---- resize_with_pad_u8 ----
    m.def("resize_with_pad_u8", &resize_with_pad_u8, py::arg("src"), py::arg("out").noconvert(), py::arg("rh"),
          py::arg("rw"), py::arg("top"), py::arg("left"), py::arg("vertical_first") = false,
          "out[i] = zeros with src[i] resized to (rh, rw) (Pillow BILINEAR, bit-exact) at (top, left); GIL "
          "released. vertical_first: run the vertical pass first when both axes change (Pillow >= 13 may).");
    // ---- end resize_with_pad_u8 ----
}
