// The public value types: what a memory is configured with (Config, with the GEMM it asks for:
// Gemm), what a step returns (StepResult, with the GEMM it ran: backend::GemmReport, and the bytes
// a rank exchanged: CommTraffic), what iteration yields (Record), and the counters (Stats). Apart from the memory so that a caller, an adapter or a communicator can
// name them without the step's machinery.
#pragma once

#include <protomem/detail/language.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <protomem/view.hpp>

namespace protomem {

/// The GEMM of the CPU backend's memory pass (Config::gemm).
///   automatic  the faster of those the build has, measured once per process and shape class
///              (backend/cpu/gemm_choice.hpp); under cpu_bf16 storage, on a CPU with
///              avx512_bf16, the bf16 dot-product kernel (backend/cpu/bf16_kernel.hpp)
///   eigen      Eigen's product, compiled for the target of the consumer's build
///   blas       the linked CBLAS (protomem::blas); a Config asking for it in a build without one
///              is rejected
///   bf16       only reported: the avx512_bf16 kernel ran (not a Config value)
enum class Gemm { automatic, eigen, blas, bf16 };

/// What a step does with a batch of mostly one exemplar per class (Config::single_exemplar).
enum class SingleExemplar { refuse, allow };

/// "auto", "eigen", "blas", "bf16" (for reports and error messages).
inline const char* gemm_name(Gemm gemm) {
  switch (gemm) {
    case Gemm::automatic:
      return "auto";
    case Gemm::eigen:
      return "eigen";
    case Gemm::blas:
      return "blas";
    case Gemm::bf16:
      return "bf16";
  }
  return "unknown";
}

namespace backend {

/// The GEMM a step ran and, when the choice was measured (Config::gemm = automatic in a build
/// with a BLAS), the calibration's times in milliseconds of one tile's two GEMMs with each
/// (0: not measured). `used` stays automatic where a backend reports no CPU GEMM (CUDA).
struct GemmReport {
  Gemm used = Gemm::automatic;
  double eigen_ms = 0;
  double blas_ms = 0;
  double bf16_ms = 0;
};

/// "eigen (calibration ms: eigen 0.88, blas 2.33)": the GEMM and the times that were measured.
inline std::string describe(const GemmReport& report) {
  std::string text = gemm_name(report.used);
  const std::pair<const char*, double> times[] = {
      {"eigen", report.eigen_ms}, {"blas", report.blas_ms}, {"bf16", report.bf16_ms}};
  std::string measured;
  for (const auto& [name, ms] : times) {
    if (ms <= 0) continue;
    char value[32];
    std::snprintf(value, sizeof value, "%.3g", ms);
    measured += std::string(measured.empty() ? "" : ", ") + name + " " + value;
  }
  if (!measured.empty()) text += " (calibration ms: " + measured + ")";
  return text;
}

}  // namespace backend

/// Counters since construction (or the last clear()), saved in checkpoints.
struct Stats {
  std::uint64_t steps = 0;       ///< committed steps; step n writes last_written = n
  std::uint64_t refreshes = 0;   ///< writes of a class already stored
  std::uint64_t insertions = 0;  ///< classes that entered the memory (into empty or evicted slots)
  std::uint64_t evictions = 0;   ///< classes that left the memory to make room
};

/// Bytes a rank exchanged in collectives (logical payload: comm/communicator.hpp says how it is counted).
struct CommTraffic {
  std::uint64_t bytes_sent = 0;
  std::uint64_t bytes_received = 0;
  std::uint64_t collectives = 0;  ///< collective calls made (including those that moved nothing)

  /// The traffic between two readings, e.g. of one step: after - before.
  friend CommTraffic operator-(const CommTraffic& after, const CommTraffic& before) {
    return {after.bytes_sent - before.bytes_sent, after.bytes_received - before.bytes_received,
            after.collectives - before.collectives};
  }
  std::uint64_t bytes() const { return bytes_sent + bytes_received; }
};

/// Sizes and budgets of a memory.
struct Config {
  index_t capacity = 0;   ///< M: number of slots
  index_t dim = 0;        ///< D: embedding dimension
  label_t num_classes = 0;  ///< labels must be < num_classes; 0 leaves the range undeclared
  /// Bytes a step may use for its tiles of logits: every thread's B x T tile (plus, per column, a
  /// decoded T x D tile under narrow storage and one value when similar_k > 0). The full B x M
  /// logits are never held; the tile width is also capped for the caches, so a larger budget
  /// does not mean a faster step (docs/performance.md). A step takes at least one column per
  /// thread even when that exceeds the budget. StepResult::workspace_bytes says what it took.
  std::size_t workspace_bytes = std::size_t{64} << 20;
  /// Threads a step uses (0: OpenMP's default, omp_get_max_threads()). With OpenMP the memory is
  /// split into one range of slots per thread, each calling a single-threaded GEMM; under
  /// protomem::blas (OpenBLAS) the step sets OpenBLAS to one thread for its memory pass and
  /// restores the previous count before it returns. Without OpenMP the step runs on one thread and
  /// a value > 0 is OpenBLAS's thread count for the step. Results are deterministic for a given
  /// thread count; different counts agree to rounding.
  int threads = 0;
  /// k: how many most-similar stored classes a step reports per batch class (0: none). The
  /// similarities come from cosines the step computes anyway (the hard-example-mining seam). A
  /// step computes max(similar_k, the Mining policy's similar_k()) of them.
  index_t similar_k = 0;
  /// The GEMM of the CPU backend's memory pass: automatic (the faster of those the build has,
  /// measured once per process and shape class at the first step; the bf16 kernel under cpu_bf16
  /// on a CPU with avx512_bf16), or forced: eigen, or blas (only in a build with one, e.g.
  /// protomem::blas). StepResult::gemm reports the choice (backend/cpu/gemm_choice.hpp). The
  /// choice is fixed per process and shape class; force one for the same rounding across processes.
  Gemm gemm = Gemm::automatic;
  /// A batch in which more than half of the distinct classes have a single exemplar (the global
  /// batch, in the sharded memory): such a class's prototype is its one embedding, whose target
  /// cosine is 1 whatever the encoder does, so the step teaches little and reports a small,
  /// misleading loss - the mark of a sampler that is not class-grouped (e.g. a plain
  /// DistributedSampler). refuse: protomem::Error naming the counts, nothing changes; allow: the
  /// step runs. StepResult::single_exemplar_classes reports the count either way. The core allows
  /// by default (it is also driven by references, benchmarks and tests with arbitrary batches); a
  /// trainer sets refuse, as the Python package does by default (docs/python.md).
  SingleExemplar single_exemplar = SingleExemplar::allow;
};

/// What forward() returns besides the gradient.
template <class Scalar>
struct StepResult {
  Scalar loss = 0;                    ///< mean margin-softmax cross-entropy over the batch
  std::vector<label_t> classes;       ///< the batch's distinct labels, ascending (C)
  index_t single_exemplar_classes = 0;  ///< of those, classes with one exemplar in the batch
  /// k: max(Config::similar_k, the Mining policy's similar_k()).
  index_t similar_k = 0;
  /// similar[c * k + r]: the r-th most similar stored class to classes[c] (-1 where the memory
  /// holds fewer than k other classes), with its cosine p_c . w in similar_cosines.
  std::vector<label_t> similar;
  std::vector<Scalar> similar_cosines;
  int threads = 1;                  ///< threads the memory pass ran on
  index_t tile_columns = 0;         ///< T: memory columns per tile
  std::size_t workspace_bytes = 0;  ///< bytes of tiles held (<= Config::workspace_bytes, above)
  backend::GemmReport gemm;         ///< the GEMM the memory pass ran, and the calibration's times
  /// Bytes this rank exchanged with the other ranks during the step (ShardedPrototypeMemory,
  /// protomem/sharded.hpp; docs/distributed.md, "Traffic model"); all zero in one process.
  CommTraffic traffic;
};

/// One stored class, as iteration over a memory yields it (oldest in eviction order first).
/// `prototype` is a view into the store, or a decoded copy (std::vector) under narrow storage.
template <class Scalar, class Prototype = Span<const Scalar>>
struct Record {
  label_t label;
  Prototype prototype;
  std::uint64_t last_written;
};

}  // namespace protomem
