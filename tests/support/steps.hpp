// Steps of a memory for the tests that compare configurations on the same stored classes
// (test_tiling.cpp, test_gemm.cpp): batches around the class directions, a forward into a fresh
// gradient, a float or double memory saved as a checkpoint for the others to load, and the
// largest (difference of) values.
#pragma once

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <protomem/memory.hpp>

#include "batch.hpp"

namespace test_support {

/// `classes` classes of `exemplars` each, labels from `first`, around random class directions.
template <class T>
Batch<T> make_batch(label_t first, int classes, int exemplars, index_t dim, std::mt19937_64& rng) {
  return make_batch<T>(consecutive_labels(first, classes), exemplars, dim, rng, {0.8});
}

/// memory.forward() of `batch` into `gradient` (resized and zeroed first).
template <class Memory, class T>
protomem::StepResult<T> forward(Memory& memory, const Batch<T>& batch, std::vector<T>& gradient) {
  gradient.assign(static_cast<std::size_t>(batch.rows() * batch.dim), T(0));
  return memory.forward(protomem::matrix_view(batch.embeddings.data(), batch.rows(), batch.dim),
                        protomem::label_view(batch.labels.data(), batch.rows()),
                        protomem::matrix_view(gradient.data(), batch.rows(), batch.dim));
}

/// A memory holding `filled` classes, saved as a checkpoint that other configurations load.
template <class T>
std::string filled_checkpoint(index_t capacity, index_t dim, label_t filled, std::mt19937_64& rng) {
  // No aging: the naive loss (test_tiling's oracle) counts every stored column fully, and a memory
  // that loads the checkpoint adopts its policies.
  protomem::Config config{capacity, dim};
  protomem::PrototypeMemory<T> memory(config, protomem::NoAging{});
  std::vector<T> gradient;
  for (label_t first = 0; first < filled; first += 64) {
    const auto batch =
        make_batch<T>(first, int(std::min<label_t>(64, filled - first)), 1, dim, rng);
    forward(memory, batch, gradient);
    memory.commit();
  }
  std::ostringstream out;
  memory.save(out);
  return out.str();
}

template <class Memory>
void load(Memory& memory, const std::string& checkpoint) {
  std::istringstream in(checkpoint);
  memory.load(in);
}

template <class T>
double max_abs_diff(const std::vector<T>& a, const std::vector<T>& b) {
  double worst = 0;
  for (std::size_t k = 0; k < a.size(); ++k)
    worst = std::max(worst, std::abs(double(a[k]) - double(b[k])));
  return worst;
}

template <class T>
double max_abs(const std::vector<T>& a) {
  double worst = 0;
  for (T v : a) worst = std::max(worst, std::abs(double(v)));
  return worst;
}

}  // namespace test_support
