// Helpers shared by protomem's benchmarks: thread count, random unit vectors, filling a memory
// with random classes (PrototypeMemory::assign: 2^20 classes without 2^20 / C steps), a batch of
// new classes, peak RSS.
#pragma once

#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <protomem/detail/random.hpp>
#include <protomem/memory.hpp>
#include <string>
#include <thread>
#include <vector>

namespace bench {

using protomem::index_t;
using protomem::label_t;

/// Threads for the step, the bound and the baselines: $PROTOMEM_BENCH_THREADS, else every core.
inline int threads() {
  if (const char* env = std::getenv("PROTOMEM_BENCH_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

inline double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Peak resident set size of this process so far, in MiB.
inline double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // Linux: KiB
}

/// Benchmark data: splitmix64 bits (protomem's own generator) as floats, fast rather than good.
struct Random {
  protomem::detail::SplitMix64 bits;
  explicit Random(std::uint64_t seed) : bits(seed * 0x9E3779B97F4A7C15ULL + 1) {}
  std::uint64_t next() { return bits.next(); }
  /// Uniform in [-1, 1).
  float symmetric() {
    return static_cast<float>(static_cast<double>(next() >> 40) * 0x1p-23 - 1.0);
  }
};

/// `rows` random unit vectors of `dim` floats at `out` (row stride dim).
inline void unit_rows(float* out, index_t rows, index_t dim, Random& random) {
  for (index_t r = 0; r < rows; ++r) {
    float* v = out + r * dim;
    double n2 = 0;
    for (index_t k = 0; k < dim; ++k) {
      v[k] = random.symmetric();
      n2 += double(v[k]) * v[k];
    }
    const float inv = static_cast<float>(1.0 / std::sqrt(n2));
    for (index_t k = 0; k < dim; ++k) v[k] *= inv;
  }
}

/// Fills `memory` with `count` classes: labels label_of(0 .. count - 1) in eviction order, random
/// unit prototypes, all written at step 0 (PrototypeMemory::assign; a pending forward is dropped).
template <class Memory>
void fill(Memory& memory, index_t count, const std::function<label_t(index_t)>& label_of,
          std::uint64_t seed) {
  const index_t dim = memory.dim();
  std::vector<label_t> labels(static_cast<std::size_t>(count));
  std::vector<std::uint64_t> written(static_cast<std::size_t>(count), 0);
  std::vector<float> prototypes(static_cast<std::size_t>(count * dim));
  Random random(seed);
  for (index_t r = 0; r < count; ++r) {
    labels[static_cast<std::size_t>(r)] = label_of(r);
    unit_rows(prototypes.data() + r * dim, 1, dim, random);
  }
  memory.assign({labels.data(), count},
                protomem::matrix_view<const float>(prototypes.data(), count, dim),
                {written.data(), count}, 0);
}

/// A batch of B random embeddings (uniform in [-1, 1)) of B / K classes, K exemplars each, and room
/// for its gradient; relabel() makes its classes new to the memory before each step.
struct Batch {
  std::vector<float> embeddings, gradient;
  std::vector<label_t> labels;
  index_t exemplars;
  Batch(index_t B, index_t D, index_t K)
      : embeddings(std::size_t(B * D)),
        gradient(std::size_t(B * D)),
        labels(std::size_t(B)),
        exemplars(K) {
    Random random(3);
    for (float& v : embeddings) v = random.symmetric();
  }
  /// Labels next, next + 1, ... (K rows each); advances `next` past them.
  void relabel(label_t& next) {
    for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = next + label_t(i) / exemplars;
    next += label_t(labels.size()) / exemplars;
  }
};

}  // namespace bench
