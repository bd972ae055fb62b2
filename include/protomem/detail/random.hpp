// Portable, seeded randomness for host-side sampling: the same seed gives the same numbers with
// every compiler and standard library. std::uniform_int_distribution and std::shuffle are
// implementation-defined, so nothing here uses them: splitmix64 (Steele, Lea, Flood 2014) gives the
// bits, bounded draws reject the biased tail of the 64-bit range, and shuffles are written out.
//
// Counter-based use: stream(seed, purpose, counter) starts an independent generator for, e.g.,
// batch number `counter`, so any batch is a pure function of (seed, counter) and needs no saved RNG
// state.
#pragma once

#include <cstdint>
#include <protomem/view.hpp>
#include <utility>
#include <vector>

namespace protomem::detail {

/// The splitmix64 finaliser: a bijection on 64 bits with full avalanche.
inline std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// splitmix64: a 64-bit state advanced by the golden-ratio increment and finalised by mix64.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t state) : state_(state) {}

  std::uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix64(state_);
  }

  /// Uniform in [0, n), n >= 1, without modulo bias: draws in the top `2^64 mod n` values are
  /// rejected (at most one draw in two is rejected, for n just above 2^63).
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t threshold = (0 - n) % n;  // 2^64 mod n
    for (;;) {
      const std::uint64_t x = next();
      if (x >= threshold) return x % n;
    }
  }

  /// Uniform in [0, 1) with 53 random bits.
  double unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  std::uint64_t state_;
};

/// An independent generator for (seed, purpose, counter): e.g. purpose "epoch order" and counter
/// the epoch, or purpose "batch" and counter the batch number.
inline SplitMix64 stream(std::uint64_t seed, std::uint64_t purpose, std::uint64_t counter) {
  return SplitMix64(mix64(mix64(mix64(seed) ^ purpose) + counter));
}

/// Fisher-Yates: a uniformly random permutation of `values`, in place.
template <class T>
void shuffle(std::vector<T>& values, SplitMix64& rng) {
  for (std::size_t i = values.size(); i > 1; --i) {
    const auto j = static_cast<std::size_t>(rng.below(i));
    std::swap(values[i - 1], values[j]);
  }
}

/// Floyd's algorithm: `count` distinct values of [0, n), a uniformly random subset, appended to
/// `out` in the order drawn. O(count^2) comparisons, meant for count up to a few thousand.
/// Requires 0 <= count <= n.
inline void distinct_below(index_t n, index_t count, SplitMix64& rng, std::vector<index_t>& out) {
  const std::size_t start = out.size();
  for (index_t j = n - count; j < n; ++j) {
    const auto t = static_cast<index_t>(rng.below(static_cast<std::uint64_t>(j) + 1));
    bool taken = false;
    for (std::size_t k = start; k < out.size() && !taken; ++k) taken = out[k] == t;
    out.push_back(taken ? j : t);
  }
}

}  // namespace protomem::detail
