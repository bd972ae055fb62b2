// The per-row math every backend runs, written once: host/device functions (PROTOMEM_HOST_DEVICE)
// that the CPU backend calls from its loops and the CUDA backend from its kernels, so that both
// apply the same rules (docs/algorithm.md, "One step"); the tile planner; the messages of a
// rejected step.
//
// Requires: nothing beyond the C++17 standard library and, under nvcc, CUDA's device math.
// Guarantees: the same inputs give the same decisions on every backend (which rows are
// normalisable, which target is constant, the mining order, the tile plan); the arithmetic of a
// row's softmax finish is the same expression, so backends differ only in the summation order of
// their reductions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <protomem/detail/config.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>
#include <utility>

namespace protomem::backend {

template <class T>
PROTOMEM_HOST_DEVICE inline bool is_finite(T x) {
#ifdef __CUDA_ARCH__
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

template <class T>
PROTOMEM_HOST_DEVICE inline T exp_of(T x) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) == 4) {
    return expf(x);
  } else {
    return exp(x);
  }
#else
  return std::exp(x);
#endif
}

PROTOMEM_HOST_DEVICE inline double log_of(double x) {
#ifdef __CUDA_ARCH__
  return log(x);
#else
  return std::log(x);
#endif
}

/// 1. Can a row of norm `norm` (accumulated in double) be normalised in Scalar? Zero, non-finite,
/// and norms whose reciprocal overflows Scalar (subnormal rows) cannot.
template <class Scalar>
PROTOMEM_HOST_DEVICE inline bool normalisable(double norm) {
  return norm > 0 && is_finite(norm) && is_finite(Scalar(1) / Scalar(norm));
}

/// 4. The single-exemplar rule: a class with one exemplar has that exemplar as its prototype, so
/// the row's target cosine is identically 1 and its target gives no gradient, with any margin
/// (unless the generator's target column leaves the row out, which then has other exemplars).
PROTOMEM_HOST_DEVICE constexpr bool constant_target(bool leave_one_out, index_t exemplars) {
  return !leave_one_out && exemplars == 1;
}

/// 4. What a row's softmax gives once its batch columns are summed: with sum = l_i e^(m_i - row
/// max) + sum_c e^(z_ic - row max), the loss of the row, the factor s/B / sum that turns the
/// exponentials into dL/dcos, and the memory part's weight s/B e^(m_i - row max) / sum.
template <class T>
struct RowSoftmax {
  T factor;
  T memory_weight;
  double loss;
};
template <class T>
PROTOMEM_HOST_DEVICE inline RowSoftmax<T> finish_row(T sum, T row_max, T run_max, T z_y,
                                                     T s_over_b) {
  const T inv = T(1) / sum;
  return {s_over_b * inv, s_over_b * exp_of(run_max - row_max) * inv,
          log_of(double(sum)) + double(row_max) - double(z_y)};
}

/// 4. dL/dcos of the target, from its scaled softmax entry: (softmax - 1) s/B psi'(cos_y); zero for
/// a constant target. Margin is a built-in margin in device code, or the memory's host-only holder
/// (AnyMargin) when a .cu file steps a CPU memory: nvcc must not check the host path for device use.
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class T, class Margin>
PROTOMEM_HOST_DEVICE inline T target_gradient(T scaled_softmax_y, T s_over_b, T cos_y,
                                              bool constant, const Margin& margin) {
  if (constant) return T(0);
  return (scaled_softmax_y - s_over_b) * margin.derivative(cos_y);
}

/// 3. The order of the mining lists: the larger cosine first; on equal cosines the smaller slot
/// first (docs/algorithm.md, "Hard example mining"). A total order on (cosine, slot), so the lists
/// do not depend on how the memory pass splits the slots.
template <class T>
PROTOMEM_HOST_DEVICE inline bool ranks_before(T a_cosine, index_t a_slot, T b_cosine,
                                              index_t b_slot) {
  return a_cosine > b_cosine || (a_cosine == b_cosine && a_slot < b_slot);
}

/// 3. The lanes (threads) and tile width T of a memory pass over `used` slots of dimension `dim`
/// with `batch` rows: at most `threads` lanes, each with at least `min_lane_flops` of work; the
/// budget covers every lane's B x T tile of logits plus, per column, `extra_rows` more values of
/// `value_bytes` (decoded prototypes, class sums); T is also capped by `max_columns` and by the
/// slots a lane has. At least one column per lane: a budget below one column is exceeded by it.
struct TilePlan {
  int lanes;
  index_t columns;
};
inline TilePlan plan_tiles(index_t batch, index_t dim, index_t used, index_t extra_rows,
                           std::size_t value_bytes, std::size_t budget, int threads,
                           index_t max_columns, double min_lane_flops) {
  const auto per_column =
      static_cast<std::size_t>(std::max<index_t>(batch + extra_rows, 1)) * value_bytes;
  const std::size_t affordable = std::max<std::size_t>(1, budget / per_column);  // columns
  const double work = 4.0 * double(batch) * double(dim) * double(used);
  const auto worth = static_cast<std::size_t>(std::max(1.0, work / min_lane_flops));
  std::size_t lanes = static_cast<std::size_t>(std::max(1, threads));
  lanes = std::min({lanes, affordable, worth});
  const auto per_lane = static_cast<index_t>((used + index_t(lanes) - 1) / index_t(lanes));
  const auto width = static_cast<index_t>(std::min<std::size_t>(
      affordable / lanes, static_cast<std::size_t>(std::numeric_limits<index_t>::max())));
  const index_t t = std::max<index_t>(1, std::min({width, max_columns, per_lane}));
  return {static_cast<int>(lanes), t};
}

// The messages of a rejected step, the same whichever backend found the problem.
namespace fail_step {
template <class V>
[[noreturn]] inline void embedding_not_finite(index_t row, index_t column, V value) {
  detail::fail("embeddings(", row, ", ", column, ") = ", value, " is not finite");
}
[[noreturn]] inline void embedding_norm(index_t row, double norm) {
  detail::fail("embeddings row ", row, " has norm ", norm, "; it cannot be normalised");
}
[[noreturn]] inline void class_sum_zero(label_t label) {
  detail::fail("the exemplars of class ", label, " sum to zero; its prototype is undefined");
}
[[noreturn]] inline void leave_one_out_zero(label_t label, index_t row) {
  detail::fail("the exemplars of class ", label, " other than sample ", row,
               " sum to zero; its leave-one-out prototype is undefined");
}
template <class V>
[[noreturn]] inline void loss_not_finite(V loss) {
  detail::fail("the step's loss is ", loss, ", not finite; the step is rejected");
}
[[noreturn]] inline void gradient_not_finite(index_t row) {
  detail::fail("the step's gradient dL/dE row ", row, " is not finite; the step is rejected");
}
}  // namespace fail_step

}  // namespace protomem::backend
