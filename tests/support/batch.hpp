// Random batches for the tests (tests/*.cpp and tests/cuda/): K exemplars per class scattered
// around a fixed direction of the class, so that batches resemble what a memory stores and cosines
// spread over [-1, 1]. The class direction depends on the label only (the same class looks alike
// in every batch); the exemplars' noise, norms and row order come from the caller's generator.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <protomem/view.hpp>
#include <random>
#include <utility>
#include <vector>

namespace test_support {

using protomem::index_t;
using protomem::label_t;

/// A batch on the host: B x dim embeddings, row-major with row stride `stride` (>= dim), and
/// labels.
template <class T>
struct Batch {
  std::vector<T> embeddings;
  std::vector<label_t> labels;
  index_t dim = 0;
  index_t stride = 0;

  index_t rows() const { return static_cast<index_t>(labels.size()); }
  protomem::MatrixView<const T> view() const {
    return protomem::matrix_view(static_cast<const T*>(embeddings.data()), rows(), dim, stride);
  }
  protomem::LabelView label_view() const { return protomem::label_view(labels.data(), rows()); }
};

/// How the exemplars scatter.
struct BatchOptions {
  double spread = 0.5;  ///< standard deviation of the noise added to the class direction
  /// Each exemplar is scaled by a norm drawn uniformly from [min_norm, max_norm] (1, 1: unscaled,
  /// and no draw is made).
  double min_norm = 1.0;
  double max_norm = 1.0;
  /// Values past each row (stride = dim + padding), NaN: a step that reads them gives NaN.
  index_t padding = 0;
  bool shuffle = false;  ///< shuffle the rows, so that a class's exemplars are not adjacent
};

/// The fixed direction of class `label` (standard normal values, not normalised).
inline std::vector<double> class_direction(label_t label, index_t dim) {
  std::mt19937_64 class_rng(static_cast<std::uint64_t>(label) * 7919 + 1);
  std::normal_distribution<double> normal;
  std::vector<double> centre(static_cast<std::size_t>(dim));
  for (double& v : centre) v = normal(class_rng);
  return centre;
}

/// A batch with `count` exemplars of each (label, count) in `classes`, in that order (or shuffled).
template <class T>
Batch<T> make_batch(const std::vector<std::pair<label_t, int>>& classes, index_t dim,
                    std::mt19937_64& rng, const BatchOptions& options = {}) {
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> norm(options.min_norm, options.max_norm);
  const bool scaled = options.min_norm != 1.0 || options.max_norm != 1.0;
  Batch<T> batch;
  batch.dim = dim;
  batch.stride = dim + options.padding;
  for (const auto& [label, count] : classes) {
    const std::vector<double> centre = class_direction(label, dim);
    for (int k = 0; k < count; ++k) {
      const double scale = scaled ? norm(rng) : 1.0;
      for (index_t j = 0; j < dim; ++j) {
        batch.embeddings.push_back(T(scale * (centre[j] + options.spread * normal(rng))));
      }
      for (index_t j = 0; j < options.padding; ++j) {
        batch.embeddings.push_back(std::numeric_limits<T>::quiet_NaN());
      }
      batch.labels.push_back(label);
    }
  }
  if (options.shuffle) {
    std::vector<index_t> order(batch.labels.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<index_t>(i);
    std::shuffle(order.begin(), order.end(), rng);
    Batch<T> shuffled;
    shuffled.dim = dim;
    shuffled.stride = batch.stride;
    for (index_t i : order) {
      shuffled.labels.push_back(batch.labels[static_cast<std::size_t>(i)]);
      shuffled.embeddings.insert(shuffled.embeddings.end(),
                                 batch.embeddings.begin() + i * batch.stride,
                                 batch.embeddings.begin() + (i + 1) * batch.stride);
    }
    return shuffled;
  }
  return batch;
}

/// A batch with `exemplars` exemplars of each class in `classes`.
template <class T>
Batch<T> make_batch(const std::vector<label_t>& classes, int exemplars, index_t dim,
                    std::mt19937_64& rng, const BatchOptions& options = {}) {
  std::vector<std::pair<label_t, int>> counted;
  for (label_t label : classes) counted.emplace_back(label, exemplars);
  return make_batch<T>(counted, dim, rng, options);
}

/// `count` consecutive labels from `first`.
inline std::vector<label_t> consecutive_labels(label_t first, index_t count) {
  std::vector<label_t> labels(static_cast<std::size_t>(count));
  for (index_t c = 0; c < count; ++c) labels[static_cast<std::size_t>(c)] = first + c;
  return labels;
}

/// `count` distinct labels drawn uniformly from [0, range), in the order drawn.
inline std::vector<label_t> distinct_labels(std::mt19937_64& rng, index_t count, label_t range) {
  std::uniform_int_distribution<label_t> label(0, range - 1);
  std::vector<label_t> chosen;
  while (static_cast<index_t>(chosen.size()) < count) {
    const label_t l = label(rng);
    if (std::find(chosen.begin(), chosen.end(), l) == chosen.end()) chosen.push_back(l);
  }
  return chosen;
}

}  // namespace test_support
