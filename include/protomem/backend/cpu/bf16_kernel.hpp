// The memory pass's two GEMMs on bfloat16 prototypes with AVX-512 BF16 dot products
// (_mm512_dpbf16_ps: 32 bf16 products a vector, accumulated in float), for cpu_bf16 storage on a
// CPU that has avx512_bf16.
//
//   logits    S (B x n, float) = X (B x D, rounded to bf16 once a step) W^T (n x D, the store)
//   weighted  O (B x D, float) += P (B x n, the tile's exp(s (z - m)) rounded to bf16) W
// Both accumulate in float; the softmax statistics (max, sum) and everything after the memory pass
// stay float. Rounding x and p to bf16 (relative 2^-8 each, like the stored w) moves a cosine by
// at most 2 eps + eps^2 and O by at most eps relative: bf16's own tolerance (tests/test_gemm.cpp).
//
// Each GEMM is a register-blocked micro-kernel: R rows of the left operand (one 32-bit pair
// broadcast a row) times 4 vectors of 16 columns of the right operand, packed so that a vector
// load brings 16 columns' pairs of consecutive k: 24 accumulators in zmm registers.
// The kernels are compiled with a target attribute, so the header builds for any x86-64 level, and
// they only run where cpu_has_avx512_bf16() (cpuid and the OS's AVX-512 state) says the CPU has
// the instructions; elsewhere, and off x86-64 GCC/Clang, the fp32 GEMMs run on decoded tiles.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include <protomem/view.hpp>

// Not under nvcc (its front end need not parse GCC's AVX-512 BF16 intrinsics): a CPU step compiled
// in a .cu file runs the float path. PROTOMEM_NO_BF16_KERNEL leaves the kernel out anywhere.
#if (defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))) && \
    !defined(__CUDACC__) && !defined(PROTOMEM_NO_BF16_KERNEL)
#define PROTOMEM_HAS_BF16_KERNEL 1
#include <cpuid.h>
#include <immintrin.h>
#define PROTOMEM_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

namespace protomem {
namespace backend {
namespace bf16 {

/// Whether this CPU runs AVX-512 BF16 and the OS saves the AVX-512 registers (checked once).
inline bool cpu_has_avx512_bf16() {
#ifdef PROTOMEM_HAS_BF16_KERNEL
  static const bool has = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0xE6u) != 0xE6u) return false;  // XMM, YMM, opmask, ZMM state enabled by the OS
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const unsigned f_bw_vl = (1u << 16) | (1u << 30) | (1u << 31);
    if ((b & f_bw_vl) != f_bw_vl) return false;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
    return (a & (1u << 5)) != 0;  // AVX512_BF16
  }();
  return has;
#else
  return false;
#endif
}

inline index_t round_up(index_t n, index_t to) { return (n + to - 1) / to * to; }

/// float -> bf16 bits, rounding to nearest even (finite values; as Eigen::bfloat16 rounds).
inline std::uint16_t to_bf16(float value) {
  std::uint32_t u;
  std::memcpy(&u, &value, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

/// `rows` rows of `cols` floats (row stride `ld`) -> pairs of bf16 in 32-bit words, `pairs` words
/// a row (>= ceil(cols / 2)), zero past `cols`: the broadcast operand of both kernels.
inline void pack_rows(const float* in, index_t rows, index_t cols, index_t ld, std::uint32_t* out,
                      index_t pairs) {
  for (index_t i = 0; i < rows; ++i) {
    const float* row = in + i * ld;
    std::uint32_t* o = out + i * pairs;
    for (index_t p = 0; p < pairs; ++p) {
      const index_t k = 2 * p;
      const std::uint32_t lo = k < cols ? to_bf16(row[k]) : 0u;
      const std::uint32_t hi = k + 1 < cols ? to_bf16(row[k + 1]) : 0u;
      o[p] = lo | (hi << 16);
    }
  }
}

/// The n x D stored tile `w` (bf16 bits, row stride D) packed for the logits kernel: word
/// [p][j] = (w[j][2p], w[j][2p + 1]) for p < ceil(D / 2), j < columns_of(n), zero past n and D.
inline index_t columns_of(index_t n) { return round_up(n, 64); }
inline void pack_logits(const std::uint16_t* w, index_t n, index_t D, std::uint32_t* out) {
  const index_t np = columns_of(n), pairs = (D + 1) / 2;
  for (index_t p = 0; p < pairs; ++p) {
    std::uint32_t* o = out + p * np;
    for (index_t j = 0; j < n; ++j) {
      const std::uint16_t* row = w + j * D;
      const std::uint32_t hi = 2 * p + 1 < D ? row[2 * p + 1] : 0u;
      o[j] = std::uint32_t(row[2 * p]) | (hi << 16);
    }
    for (index_t j = n; j < np; ++j) o[j] = 0;
  }
}

/// The same tile packed for the weighted-sum kernel: word [q][k] = (w[2q][k], w[2q + 1][k]) for
/// q < ceil(n / 2), k < dims_of(D), zero past n and D.
inline index_t dims_of(index_t D) { return round_up(D, 64); }
inline void pack_weighted(const std::uint16_t* w, index_t n, index_t D, std::uint32_t* out) {
  const index_t dp = dims_of(D), pairs = (n + 1) / 2;
  for (index_t q = 0; q < pairs; ++q) {
    const std::uint16_t* even = w + 2 * q * D;
    const std::uint16_t* odd = 2 * q + 1 < n ? even + D : nullptr;
    std::uint32_t* o = out + q * dp;
    for (index_t k = 0; k < D; ++k) {
      o[k] = std::uint32_t(even[k]) | (odd != nullptr ? std::uint32_t(odd[k]) << 16 : 0u);
    }
    for (index_t k = D; k < dp; ++k) o[k] = 0;
  }
}

#ifdef PROTOMEM_HAS_BF16_KERNEL

/// R rows of C (row stride ldc, `width` valid columns from 0) = or += (accumulate) the rows of
/// `a` (pairs of bf16, `pairs` words a row) times the packed right operand `b` (`pairs` rows of
/// `stride` words, 64 columns a block). Columns past `width` are neither read nor written in C.
template <int R>
PROTOMEM_BF16_TARGET void dot_rows(const std::uint32_t* a, index_t pairs, const std::uint32_t* b,
                                   index_t stride, float* c, index_t ldc, index_t width,
                                   bool accumulate) {
  constexpr int V = 4;
  for (index_t j0 = 0; j0 < width; j0 += 16 * V) {
    __mmask16 mask[V];
    for (int v = 0; v < V; ++v) {
      const index_t left = width - j0 - 16 * v;
      mask[v] = left >= 16 ? __mmask16(0xFFFF)
                           : (left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1u));
    }
    __m512 acc[R][V];
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < V; ++v) {
        acc[r][v] = accumulate ? _mm512_maskz_loadu_ps(mask[v], c + r * ldc + j0 + 16 * v)
                               : _mm512_setzero_ps();
      }
    }
    const std::uint32_t* bp = b + j0;
    for (index_t p = 0; p < pairs; ++p, bp += stride) {
      __m512i w[V];
      for (int v = 0; v < V; ++v) w[v] = _mm512_loadu_si512(bp + 16 * v);
      for (int r = 0; r < R; ++r) {
        const __m512i x = _mm512_set1_epi32(static_cast<int>(a[r * pairs + p]));
        for (int v = 0; v < V; ++v) {
          acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)x, (__m512bh)w[v]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < V; ++v) {
        _mm512_mask_storeu_ps(c + r * ldc + j0 + 16 * v, mask[v], acc[r][v]);
      }
    }
  }
}

/// All `rows` rows: dot_rows in blocks of 6 rows, then the remainder.
inline void dot(const std::uint32_t* a, index_t rows, index_t pairs, const std::uint32_t* b,
                index_t stride, float* c, index_t ldc, index_t width, bool accumulate) {
  constexpr index_t block = 6;
  index_t i = 0;
  for (; i + block <= rows; i += block) {
    dot_rows<block>(a + i * pairs, pairs, b, stride, c + i * ldc, ldc, width, accumulate);
  }
  using Kernel = void (*)(const std::uint32_t*, index_t, const std::uint32_t*, index_t, float*,
                          index_t, index_t, bool);
  static constexpr Kernel tail[block] = {nullptr,      &dot_rows<1>, &dot_rows<2>,
                                         &dot_rows<3>, &dot_rows<4>, &dot_rows<5>};
  if (i < rows) {
    tail[rows - i](a + i * pairs, pairs, b, stride, c + i * ldc, ldc, width, accumulate);
  }
}

#endif  // PROTOMEM_HAS_BF16_KERNEL

/// Per-lane buffers of the bf16 memory pass (allocated before the parallel region).
struct Buffers {
  std::vector<std::uint32_t> logits_w;    // pack_logits of a tile
  std::vector<std::uint32_t> weighted_w;  // pack_weighted of a tile
  std::vector<std::uint32_t> p;           // B x ceil(T / 2): the tile's weights as bf16 pairs
  void resize(index_t B, index_t D, index_t T) {
    logits_w.resize(static_cast<std::size_t>(columns_of(T) * ((D + 1) / 2)));
    weighted_w.resize(static_cast<std::size_t>(((T + 1) / 2) * dims_of(D)));
    p.resize(static_cast<std::size_t>(B * ((T + 1) / 2)));
  }
};

/// The logits of one tile: tile (B x n, row stride ldt) = x . w_j, with `x` the step's rows packed
/// by pack_rows (ceil(D / 2) words a row) and `w` the n x D stored tile. Needs the CPU feature.
inline void logits(const std::uint32_t* x, index_t B, index_t D, const std::uint16_t* w, index_t n,
                   Buffers& buffers, float* tile, index_t ldt) {
#ifdef PROTOMEM_HAS_BF16_KERNEL
  pack_logits(w, n, D, buffers.logits_w.data());
  dot(x, B, (D + 1) / 2, buffers.logits_w.data(), columns_of(n), tile, ldt, n, false);
#else
  (void)x, (void)B, (void)D, (void)w, (void)n, (void)buffers, (void)tile, (void)ldt;
#endif
}

/// weighted (B x D, row stride D) += tile (B x n, row stride ldt) . w (the same stored tile).
inline void accumulate(const float* tile, index_t B, index_t ldt, const std::uint16_t* w, index_t n,
                       index_t D, Buffers& buffers, float* weighted) {
#ifdef PROTOMEM_HAS_BF16_KERNEL
  const index_t pairs = (n + 1) / 2;
  pack_rows(tile, B, n, ldt, buffers.p.data(), pairs);
  pack_weighted(w, n, D, buffers.weighted_w.data());
  dot(buffers.p.data(), B, pairs, buffers.weighted_w.data(), dims_of(D), weighted, D, D, true);
#else
  (void)tile, (void)B, (void)ldt, (void)w, (void)n, (void)D, (void)buffers, (void)weighted;
#endif
}

}  // namespace bf16
}  // namespace backend
}  // namespace protomem
