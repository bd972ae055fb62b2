// The memory's checks of what a caller hands it: a Config, a batch (shapes, strides, null
// pointers, labels), the batch's classes against the capacity and the generator; and the error for
// a store that cannot be allocated. Each failure throws protomem::Error naming the value.
//
// Requires: nothing has changed yet when these run (they are the first part of each call).
// Guarantees: O(B) per batch (labels), O(C) per batch's classes; no allocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <protomem/detail/batch.hpp>
#include <protomem/error.hpp>
#include <protomem/types.hpp>
#include <protomem/view.hpp>
#include <string>

namespace protomem::detail {

/// The most similar stored classes a step may be asked for per batch class (Config::similar_k;
/// DoppelgangerMining::max_k is the same bound).
inline constexpr index_t max_similar_k = index_t{1} << 16;

/// A Config whose capacity x dim prototypes of Scalar are addressable, and whose other fields are
/// in range.
template <class Scalar, class Config>
const Config& checked_config(const Config& config) {
  if (config.capacity < 1) fail("Config::capacity = ", config.capacity, " must be >= 1");
  if (config.capacity > (index_t{1} << 40)) {
    fail("Config::capacity = ", config.capacity, " is beyond any memory");
  }
  if (config.dim < 1) fail("Config::dim = ", config.dim, " must be >= 1");
  // capacity x dim values must be addressable before anything multiplies them.
  const auto largest = static_cast<std::uint64_t>(std::numeric_limits<std::ptrdiff_t>::max());
  if (static_cast<std::uint64_t>(config.dim) >
      largest / sizeof(Scalar) / static_cast<std::uint64_t>(config.capacity)) {
    fail("Config: capacity x dim = ", config.capacity, " x ", config.dim,
         " prototypes are beyond any memory (more than 2^63 bytes)");
  }
  if (config.num_classes < 0) {
    fail("Config::num_classes = ", config.num_classes, " must be >= 0 (0: undeclared)");
  }
  // A step keeps similar_k slots and cosines per batch class (a lane each): beyond 2^16, the
  // mining policy's bound, that is gigabytes per step for no use.
  if (config.similar_k < 0 || config.similar_k > max_similar_k) {
    fail("Config::similar_k = ", config.similar_k, " must be in [0, ", max_similar_k, "]");
  }
  if (config.workspace_bytes == 0) fail("Config::workspace_bytes must be > 0");
  return config;
}

/// std::bad_alloc / std::length_error from building a store of capacity x dim, as an Error.
template <class Scalar>
[[noreturn]] void fail_allocation(const std::string& source, index_t capacity, index_t dim) {
  const auto bytes = static_cast<std::uint64_t>(capacity) * static_cast<std::uint64_t>(dim) *
                     sizeof(Scalar);  // checked_config()
  fail(source, source.empty() ? "" : ": ",
       "cannot allocate a memory of capacity x dim = ", capacity, " x ", dim, " (", bytes,
       " bytes of prototypes)");
}

/// A batch's shapes, strides, pointers and labels (>= 0, < num_classes when declared).
template <class Scalar>
void check_batch(MatrixView<const Scalar> e, LabelView y, MatrixView<Scalar> g, index_t dim,
                 label_t num_classes) {
  if (y.size <= 0) fail("empty batch: labels.size = ", y.size, " (must be >= 1)");
  if (y.data == nullptr) fail("labels.data is null");
  if (e.data == nullptr) fail("embeddings.data is null");
  if (g.data == nullptr) fail("gradient.data is null");
  if (e.rows != y.size) fail("embeddings.rows = ", e.rows, " but labels.size = ", y.size);
  if (e.cols != dim) fail("embeddings.cols = ", e.cols, " but the memory's dim = ", dim);
  if (e.row_stride < e.cols) {
    fail("embeddings.row_stride = ", e.row_stride, " < embeddings.cols = ", e.cols);
  }
  if (g.rows != e.rows || g.cols != e.cols) {
    fail("gradient is ", g.rows, " x ", g.cols, " but embeddings are ", e.rows, " x ", e.cols);
  }
  if (g.row_stride < g.cols) {
    fail("gradient.row_stride = ", g.row_stride, " < gradient.cols = ", g.cols);
  }
  for (index_t i = 0; i < y.size; ++i) {
    if (y[i] < 0) fail("labels[", i, "] = ", y[i], " is negative (labels must be >= 0)");
    if (num_classes > 0 && y[i] >= num_classes) {
      fail("labels[", i, "] = ", y[i], " is outside the declared range [0, ", num_classes, ")");
    }
  }
}

/// The batch's classes that hold a single exemplar.
inline index_t single_exemplar_classes(const BatchClasses& batch) {
  index_t singles = 0;
  for (index_t c = 0; c < batch.size(); ++c) singles += batch.count(c) == 1 ? 1 : 0;
  return singles;
}

/// At most `capacity` classes, each with the generator's minimum of exemplars, and not mostly
/// single exemplars unless the Config allows it (Config::single_exemplar says why).
inline void check_classes(const BatchClasses& batch, const Config& config, index_t min_exemplars,
                          const char* generator) {
  if (batch.size() > config.capacity) {
    fail("the batch has ", batch.size(), " distinct classes but the memory's capacity is ",
         config.capacity);
  }
  for (index_t c = 0; c < batch.size(); ++c) {
    if (batch.count(c) < min_exemplars) {
      fail("class ", batch.labels[static_cast<std::size_t>(c)], " has ", batch.count(c),
           " exemplar(s) in the batch", " but the ", generator, " generator needs at least ",
           min_exemplars);
    }
  }
  const index_t singles = single_exemplar_classes(batch);
  if (config.single_exemplar == SingleExemplar::refuse && 2 * singles > batch.size()) {
    fail(singles, " of the batch's ", batch.size(), " classes have a single exemplar (B = ",
         batch.samples(), "): a prototype made of one embedding matches it whatever the encoder "
         "does, so such batches train little with a small, misleading loss. Feed class-grouped "
         "batches (K >= 2 exemplars per class: protomem.GroupedBatchSampler in Python, "
         "protomem::BatchSampler in C++), or allow them on purpose (Config::single_exemplar = "
         "SingleExemplar::allow; Python: single_exemplar=\"allow\")");
  }
}

}  // namespace protomem::detail
