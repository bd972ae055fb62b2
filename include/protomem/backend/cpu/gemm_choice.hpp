// Which GEMM the CPU backend's memory pass runs, chosen by measurement (Config::gemm = automatic).
//
// Why measure: the build cannot know which GEMM is fastest on the CPU that runs it. A linked BLAS
// may not know the CPU (Debian 12's OpenBLAS 0.3.21 fell back to Prescott kernels on a Xeon with
// avx512_bf16: its sgemm ran 4x slower than Eigen's compiled for that CPU), and Eigen compiled for
// a baseline x86-64 may be slower than a BLAS that dispatches at run time.
//
// How: the first step of a shape class (Scalar, storage, and B, D, T each rounded up to a power
// of two) times one tile's two GEMMs (logits B x T x D, weighted sum B x D x T) on one thread with
// each GEMM the build has, best of up to 3 runs after a warm-up, on the class's shapes capped at
// B = 512, D = 1024, T = 512 (a few to a few hundred milliseconds once, whatever the memory's
// size), and keeps the faster for every later step of that class in the process. The cache is a
// function-local static behind a mutex: many memories and threads calibrate a class once.
// Forced choices (eigen, blas) and builds with one GEMM measure nothing and report 0 ms.
// Under cpu_bf16 storage on a CPU with avx512_bf16 the bf16 kernel (bf16_kernel.hpp) is one more
// candidate. A step is deterministic for a given Config within a process; two processes may
// choose differently, and their results then agree to rounding, as for different thread counts.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include <protomem/backend/cpu/bf16_kernel.hpp>
#include <protomem/backend/cpu/gemm.hpp>
#include <protomem/types.hpp>
#include <protomem/error.hpp>

namespace protomem {
namespace backend {

namespace gemm_choice {

inline index_t power_of_two_at_least(index_t n) {
  index_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// Milliseconds of `run()`: the best of up to 3 runs after a warm-up, fewer when a run is slow.
template <class Run>
double best_ms(Run run) {
  using Clock = std::chrono::steady_clock;
  run();  // warm-up: first-touch pages, the BLAS's buffers
  double best = 0;
  double total = 0;
  for (int r = 0; r < 3 && total < 100.0; ++r) {
    const auto t0 = Clock::now();
    run();
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    best = r == 0 ? ms : std::min(best, ms);
    total += ms;
  }
  return best;
}

// Times each candidate on one tile of the class's shape (B x D batch, T x D prototypes).
template <class Scalar, class Storage>
GemmReport calibrate(index_t B, index_t D, index_t T) {
  std::vector<Scalar> x(static_cast<std::size_t>(B * D)), w(static_cast<std::size_t>(T * D));
  std::vector<Scalar> tile(static_cast<std::size_t>(B * T)), out(static_cast<std::size_t>(B * D));
  std::uint32_t state = 12345;  // any values in [-1, 1): the times do not depend on them
  auto next = [&state] {
    state = state * 1664525u + 1013904223u;
    return Scalar(double(state >> 8) / double(1u << 24) * 2.0 - 1.0);
  };
  for (Scalar& v : x) v = next();
  for (Scalar& v : w) v = next() / Scalar(D);
  auto two_gemms = [&](Gemm with) {
    return best_ms([&] {
      gemm<Scalar>(with, true, B, T, D, Scalar(1), x.data(), D, w.data(), D, Scalar(0),
                   tile.data(), T);
      gemm<Scalar>(with, false, B, D, T, Scalar(1), tile.data(), T, w.data(), D, Scalar(1),
                   out.data(), D);
    });
  };
  GemmReport report;
  report.eigen_ms = two_gemms(Gemm::eigen);
  report.used = Gemm::eigen;
  if (gemm_built(Gemm::blas)) {
    report.blas_ms = two_gemms(Gemm::blas);
    if (report.blas_ms < report.eigen_ms) report.used = Gemm::blas;
  }
  if constexpr (std::is_same_v<Storage, Eigen::bfloat16> && std::is_same_v<Scalar, float>) {
    if (bf16::cpu_has_avx512_bf16()) {
      std::vector<std::uint16_t> stored(w.size());
      for (std::size_t k = 0; k < w.size(); ++k) stored[k] = bf16::to_bf16(w[k]);
      const index_t pairs = (D + 1) / 2;
      std::vector<std::uint32_t> packed_x(static_cast<std::size_t>(B * pairs));
      bf16::pack_rows(x.data(), B, D, D, packed_x.data(), pairs);
      bf16::Buffers buffers;
      buffers.resize(B, D, T);
      report.bf16_ms = best_ms([&] {
        bf16::logits(packed_x.data(), B, D, stored.data(), T, buffers, tile.data(), T);
        bf16::accumulate(tile.data(), B, T, stored.data(), T, D, buffers, out.data());
      });
      const double fastest = report.used == Gemm::blas ? report.blas_ms : report.eigen_ms;
      if (report.bf16_ms < fastest) report.used = Gemm::bf16;
    }
  }
  return report;
}

}  // namespace gemm_choice

/// The GEMM of a memory pass with B rows, dimension D and tiles of T columns, as Config::gemm =
/// `requested` asks (checked: check_gemm_request); for automatic, the measured choice of the
/// shape class, calibrated on the calling thread at its first use in the process (the caller has
/// set the GEMMs to the threads they run with in a lane).
template <class Scalar, class Storage = Scalar>
GemmReport choose_gemm(Gemm requested, index_t B, index_t D, index_t T) {
  check_gemm_request(requested);
  GemmReport report;
  if (requested != Gemm::automatic) {
    report.used = requested;
    return report;
  }
  constexpr bool bf16_storage =
      std::is_same_v<Storage, Eigen::bfloat16> && std::is_same_v<Scalar, float>;
  if (!gemm_built(Gemm::blas) && !(bf16_storage && bf16::cpu_has_avx512_bf16())) {
    report.used = Gemm::eigen;  // one candidate: nothing to measure
    return report;
  }
  using Key = std::tuple<int, bool, index_t, index_t, index_t>;
  const index_t b = std::min<index_t>(gemm_choice::power_of_two_at_least(B), 512);
  const index_t d = std::min<index_t>(gemm_choice::power_of_two_at_least(D), 1024);
  const index_t t = std::min<index_t>(gemm_choice::power_of_two_at_least(T), 512);
  const Key key{int(sizeof(Scalar)), bf16_storage, b, d, t};
  static std::mutex mutex;
  static std::map<Key, GemmReport> cache;
  const std::lock_guard<std::mutex> lock(mutex);  // held while calibrating: once per class
  const auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  report = gemm_choice::calibrate<Scalar, Storage>(b, d, t);
  cache.emplace(key, report);
  return report;
}

}  // namespace backend
}  // namespace protomem
