// Narrow storage for the CPU backend: prototypes kept as bfloat16 or IEEE half (2 bytes a value)
// and decoded to float tile by tile inside the step, which computes in float throughout.
//
//   bfloat16  8 exponent bits, 8 significant bits: the range of float, relative rounding error
//             <= 2^-8 per value.
//   half      5 exponent bits, 11 significant bits: relative error <= 2^-11 for |v| >= 2^-14,
//             absolute error <= 2^-25 below (subnormals); unit prototypes never overflow it.
// So a stored unit prototype w' = w + d has |d_k| <= eps |w_k|, and a cosine x . w' moves by at
// most eps |x| |w| = eps: every memory logit by at most s eps (eps = 2^-8 or 2^-11).
// Encoding rounds to nearest, ties to even (Eigen's conversions). Decoding is exact.
// Measured loss/gradient error and speed: docs/performance.md.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <Eigen/Core>
#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include <protomem/view.hpp>

namespace protomem {
namespace backend {

/// Storage element types a CpuBackend<float, Storage> may hold besides float itself.
template <class Storage>
inline constexpr bool is_narrow_storage_v =
    std::is_same_v<Storage, Eigen::bfloat16> || std::is_same_v<Storage, Eigen::half>;

/// Stored value -> float, n values (exact).
inline void decode(const Eigen::bfloat16* in, float* out, index_t n) {
  static_assert(sizeof(Eigen::bfloat16) == 2, "bfloat16 is 2 bytes");
  // bfloat16 is the high half of a float: shift the 16 bits up. Vectorised by the compiler.
  const auto* bits = reinterpret_cast<const std::uint16_t*>(in);
  for (index_t k = 0; k < n; ++k) {
    const std::uint32_t word = std::uint32_t(bits[k]) << 16;
    std::memcpy(out + k, &word, sizeof(float));
  }
}

inline void decode(const Eigen::half* in, float* out, index_t n) {
  static_assert(sizeof(Eigen::half) == 2, "half is 2 bytes");
  index_t k = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; k + 8 <= n; k += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + k));
    _mm256_storeu_ps(out + k, _mm256_cvtph_ps(h));
  }
#endif
  for (; k < n; ++k) out[k] = static_cast<float>(in[k]);
}

/// float -> stored value, n values, rounding to nearest even.
template <class Storage>
void encode(const float* in, Storage* out, index_t n) {
  for (index_t k = 0; k < n; ++k) out[k] = Storage(in[k]);
}

}  // namespace backend
}  // namespace protomem
