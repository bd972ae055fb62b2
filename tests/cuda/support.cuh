// Shared by the CUDA tests: device buffers, random batches, and comparisons of a CUDA memory with
// a CPU memory of the same policies (the reference: the CPU backend, itself checked against finite
// differences, a naive loop and PyTorch autograd in tests/).
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <protomem/cuda.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../support/batch.hpp"

namespace cuda_test {

using protomem::index_t;
using protomem::label_t;

/// A batch on the host: K exemplars per class around a per-label direction, with varied norms,
/// rows shuffled so that a class's exemplars are not adjacent.
using Batch = test_support::Batch<float>;

inline Batch make_batch(std::mt19937_64& rng, index_t dim, label_t label_range, int max_classes,
                        int min_exemplars, int max_exemplars, float spread = 0.6f) {
  std::uniform_int_distribution<int> classes(1, max_classes),
      exemplars(min_exemplars, max_exemplars);
  std::vector<std::pair<label_t, int>> counted;
  for (label_t l : test_support::distinct_labels(rng, classes(rng), label_range)) {
    counted.emplace_back(l, exemplars(rng));
  }
  return test_support::make_batch<float>(counted, dim, rng, {spread, 0.5, 3.0, 0, true});
}

/// Device copies of a batch's embeddings and room for its gradient.
struct DeviceBatch {
  protomem::detail::DeviceArray<float> embeddings, gradient;
  index_t rows = 0, dim = 0;

  explicit DeviceBatch(const Batch& batch)
      : embeddings(batch.embeddings.size()),
        gradient(batch.embeddings.size()),
        rows(batch.rows()),
        dim(batch.dim) {
    protomem::detail::cuda_check(
        cudaMemcpy(embeddings.data(), batch.embeddings.data(),
                   batch.embeddings.size() * sizeof(float), cudaMemcpyHostToDevice),
        "test upload");
  }
  std::vector<float> gradient_on_host() const {
    std::vector<float> out(static_cast<std::size_t>(rows * dim));
    protomem::detail::cuda_check(
        cudaMemcpy(out.data(), gradient.data(), out.size() * sizeof(float), cudaMemcpyDeviceToHost),
        "test download");
    return out;
  }
};

/// One step's outputs.
struct Outcome {
  float loss = 0;
  std::vector<float> gradient;
  protomem::StepResult<float> result;
};

template <class Memory>
Outcome forward_cpu(Memory& memory, const Batch& batch) {
  Outcome out;
  out.gradient.resize(batch.embeddings.size());
  out.result = memory.forward(
      protomem::matrix_view<const float>(batch.embeddings.data(), batch.rows(), batch.dim),
      protomem::label_view(batch.labels.data(), batch.rows()),
      protomem::matrix_view(out.gradient.data(), batch.rows(), batch.dim));
  out.loss = out.result.loss;
  return out;
}

template <class Memory>
Outcome forward_gpu(Memory& memory, const Batch& batch) {
  DeviceBatch device(batch);
  Outcome out;
  out.result = memory.forward(
      protomem::matrix_view<const float>(device.embeddings.data(), batch.rows(), batch.dim),
      protomem::label_view(batch.labels.data(), batch.rows()),
      protomem::matrix_view(device.gradient.data(), batch.rows(), batch.dim));
  out.loss = out.result.loss;
  out.gradient = device.gradient_on_host();
  return out;
}

struct Tolerance {
  double loss = 1e-4;       // relative to max(1, |loss|)
  double gradient = 2e-3;   // max abs difference relative to the largest |dL/de|, plus `rounding`
  double prototype = 2e-5;  // max abs difference of stored unit prototypes
  double cosine = 1e-4;     // mining-seam cosines
  // float's resolution of the softmax gradient, on top of `gradient`. Both backends form the
  // target's coefficient s/B (p_y - 1) in float, so where the softmax saturates (p_y within 1e-7 of
  // 1, loss about 1e-7) that coefficient is rounding noise of size FLT_EPSILON s/B, and so is
  // dL/de_i, scaled by 1/|e_i|. Tolerated on top: `rounding` FLT_EPSILON s / (B |e_i|) per element
  // of row i.
  double rounding = 16;
};

inline double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::fabs(x)));
  return m;
}

inline void check_outcomes(const Batch& batch, double s, const Outcome& cpu, const Outcome& gpu,
                           const Tolerance& tol) {
  INFO("loss cpu " << cpu.loss << " gpu " << gpu.loss);
  CHECK(std::isfinite(gpu.loss));
  CHECK(std::fabs(double(gpu.loss) - double(cpu.loss)) <=
        tol.loss * std::max(1.0, std::fabs(double(cpu.loss))));
  REQUIRE(cpu.gradient.size() == gpu.gradient.size());
  REQUIRE(cpu.gradient.size() == batch.embeddings.size());
  const double scale = std::max(max_abs(cpu.gradient), 1e-12);
  const index_t B = batch.rows(), D = batch.dim;
  double worst = 0, worst_excess = -1;
  for (index_t i = 0; i < B; ++i) {
    double norm = 0;
    for (index_t k = 0; k < D; ++k)
      norm += double(batch.embeddings[i * D + k]) * batch.embeddings[i * D + k];
    const double floor =
        tol.rounding * std::numeric_limits<float>::epsilon() * s / (double(B) * std::sqrt(norm));
    for (index_t k = 0; k < D; ++k) {
      const std::size_t t = static_cast<std::size_t>(i * D + k);
      const double diff = std::fabs(double(cpu.gradient[t]) - double(gpu.gradient[t]));
      worst = std::max(worst, diff);
      worst_excess = std::max(worst_excess, diff - tol.gradient * scale - floor);
    }
  }
  INFO("gradient: max |cpu - gpu| = " << worst << ", max |cpu| = " << scale
                                      << ", worst excess over the tolerance " << worst_excess);
  CHECK(worst_excess <= 0);
  CHECK(cpu.result.classes == gpu.result.classes);
  REQUIRE(cpu.result.similar_k == gpu.result.similar_k);
  const index_t k = cpu.result.similar_k;
  REQUIRE(cpu.result.similar.size() == gpu.result.similar.size());
  for (std::size_t c = 0; c < cpu.result.classes.size(); ++c) {
    for (index_t r = 0; r < k; ++r) {
      const std::size_t at = c * static_cast<std::size_t>(k) + static_cast<std::size_t>(r);
      const float a = cpu.result.similar_cosines[at], b = gpu.result.similar_cosines[at];
      INFO("class " << cpu.result.classes[c] << " rank " << r << ": cpu label "
                    << cpu.result.similar[at] << " (" << a << "), gpu label "
                    << gpu.result.similar[at] << " (" << b << ")");
      CHECK((cpu.result.similar[at] < 0) == (gpu.result.similar[at] < 0));
      if (cpu.result.similar[at] < 0) continue;
      CHECK(std::fabs(double(a) - double(b)) <= tol.cosine);
      // Where the neighbours' cosines are well apart, the same class must be chosen.
      const bool separated =
          (r == 0 || std::fabs(cpu.result.similar_cosines[at - 1] - a) > 10 * tol.cosine) &&
          (r + 1 == k || cpu.result.similar[at + 1] < 0 ||
           std::fabs(cpu.result.similar_cosines[at + 1] - a) > 10 * tol.cosine);
      if (separated) CHECK(cpu.result.similar[at] == gpu.result.similar[at]);
    }
  }
}

/// Same classes, queue order, ages, counters; prototypes within `tol.prototype`.
template <class CpuMemory, class GpuMemory>
void check_same_state(const CpuMemory& cpu, const GpuMemory& gpu, const Tolerance& tol) {
  REQUIRE(cpu.size() == gpu.size());
  CHECK(cpu.stats().steps == gpu.stats().steps);
  CHECK(cpu.stats().refreshes == gpu.stats().refreshes);
  CHECK(cpu.stats().insertions == gpu.stats().insertions);
  CHECK(cpu.stats().evictions == gpu.stats().evictions);
  auto a = cpu.begin();
  auto b = gpu.begin();
  double worst = 0;
  for (; a != cpu.end() && b != gpu.end(); ++a, ++b) {
    const auto x = *a;
    const auto y = *b;
    REQUIRE(x.label == y.label);
    CHECK(x.last_written == y.last_written);
    REQUIRE(x.prototype.size == y.prototype.size);
    for (index_t j = 0; j < x.prototype.size; ++j) {
      worst = std::max(worst, double(std::fabs(x.prototype[j] - y.prototype[j])));
    }
  }
  CHECK(a == cpu.end());
  CHECK(b == gpu.end());
  INFO("prototypes: max |cpu - gpu| = " << worst);
  CHECK(worst <= tol.prototype);
}

template <class Memory>
std::string checkpoint_bytes(const Memory& memory) {
  std::ostringstream out;
  memory.save(out);
  return out.str();
}

}  // namespace cuda_test
