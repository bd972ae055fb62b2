// CPU backend: the prototype store in host memory and the numerics of a step on Eigen.
//
// One step, in the order of DESIGN.md section 2 (each numbered part below is one function):
//   1. normalise      x_i = e_i / |e_i|                       (rejects non-finite and zero rows)
//   2. generate       p_c = normalize(sum_{i in c} x_i)        (and q_i for leave-one-out)
//   3. memory pass    over the stored prototypes in tiles: logits, online softmax statistics
//                     (running max m_i, running sum l_i) and the weighted sum O_i = sum_j
//                     exp(z_ij - m_i) w_j, which is exactly the memory part of dL/dx_i; plus the
//                     most similar stored classes of each batch class (mining seam)
//   4. batch columns  logits against the fresh prototypes, the margin on the target, the softmax
//                     completed with the memory's statistics, the loss
//   5. backward       dL/dx through the batch columns, the generator and the memory part, then
//                     through the normalisation into dL/de
// The memory pass never holds more than a B x T tile of logits, T set by the workspace budget.
//
// Requires: embeddings validated for shape by the caller (PrototypeMemory does this).
// Guarantees: forward() changes nothing but its workspace and the pending fresh prototypes; it
// throws protomem::Error for non-finite or zero-norm embeddings and degenerate exemplar sums.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <queue>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <protomem/detail/batch.hpp>
#include <protomem/device.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>

namespace protomem {
namespace backend {

/// For each batch class, its most similar stored prototypes: `slots` and `cosines`, k per class,
/// most similar first; -1 and -inf pad classes with fewer than k candidates.
template <class Scalar>
struct SimilarSlots {
  index_t k = 0;
  std::vector<index_t> slots;    // C x k
  std::vector<Scalar> cosines;   // C x k
};

/// What a step writes for one batch class: its slot and whether the slot held the same class
/// (a refresh, which blends through the Refresh policy) or is taken over (a plain write).
struct SlotWrite {
  index_t batch_class;
  index_t slot;
  bool refresh;
};

/// The CPU backend borrows nothing from the caller (the CUDA backend borrows a stream etc.).
struct CpuResources {};

template <class Scalar>
class CpuBackend {
 public:
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using Resources = CpuResources;

  CpuBackend(index_t capacity, index_t dim, const Resources& = {})
      : store_(RowMatrix::Zero(capacity, dim)) {}

  Resources resources() const { return {}; }
  void set_resources(const Resources&) {}

  index_t dim() const { return store_.cols(); }
  index_t capacity() const { return store_.rows(); }

  const Scalar* prototype(index_t slot) const { return store_.row(slot).data(); }
  void set_prototype(index_t slot, const Scalar* values) {
    std::copy(values, values + dim(), store_.row(slot).data());
  }
  void clear() { store_.setZero(); }

  /// Loss and dL/de of one step (DESIGN.md section 2). `used` slots [0, used) hold prototypes;
  /// `excluded` lists the slots of classes in this batch (their stale copies are no columns).
  /// Keeps the fresh prototypes for write().
  template <class Margin, class Generator>
  Scalar forward(const detail::BatchClasses& batch, MatrixView<const Scalar> embeddings,
                 MatrixView<Scalar> gradient, index_t used, const std::vector<index_t>& excluded,
                 const Margin& margin, const Generator& generator, std::size_t workspace_bytes,
                 SimilarSlots<Scalar>* similar) {
    (void)generator;
    normalise(embeddings);
    generate<Generator>(batch);
    memory_pass(batch, used, excluded, Scalar(margin.scale()), workspace_bytes, similar);
    const Scalar loss = batch_columns<Generator>(batch, margin);
    backward<Generator>(batch, Scalar(margin.scale()), gradient);
    return loss;
  }

  /// Stores the fresh prototypes of the last forward() into their slots.
  /// Allocates nothing and cannot throw, so that a commit is all-or-nothing.
  template <class Refresh>
  void write(const std::vector<SlotWrite>& writes, const Refresh& refresh) noexcept {
    for (const SlotWrite& w : writes) {
      Scalar* fresh = fresh_.row(w.batch_class).data();
      if (w.refresh) refresh.refresh(store_.row(w.slot).data(), fresh, dim());
      std::copy(fresh, fresh + dim(), store_.row(w.slot).data());
    }
  }

  /// Bytes of the largest logits tile a step with `batch` rows may hold under `budget`.
  static index_t tile_columns(index_t batch, index_t used, std::size_t budget) {
    const auto per_column = static_cast<std::size_t>(batch) * sizeof(Scalar);
    const auto t = static_cast<index_t>(std::max<std::size_t>(1, budget / per_column));
    return std::max<index_t>(1, std::min(t, used));
  }

 private:
  // 1. x_i = e_i / |e_i|, with the norm accumulated in double so that float input cannot overflow.
  void normalise(MatrixView<const Scalar> e) {
    const index_t B = e.rows, D = e.cols;
    x_.resize(B, D);
    inv_norm_.resize(B);
    for (index_t i = 0; i < B; ++i) {
      const Scalar* row = e.row(i);
      double sum2 = 0;
      for (index_t k = 0; k < D; ++k) {
        if (!std::isfinite(row[k])) {
          detail::fail("embeddings(", i, ", ", k, ") = ", row[k], " is not finite");
        }
        sum2 += double(row[k]) * double(row[k]);
      }
      const double norm = std::sqrt(sum2);
      if (!(norm > 0) || !std::isfinite(norm) || !std::isfinite(Scalar(1) / Scalar(norm))) {
        detail::fail("embeddings row ", i, " has norm ", norm, "; it cannot be normalised");
      }
      inv_norm_[i] = Scalar(1.0 / norm);
      for (index_t k = 0; k < D; ++k) x_(i, k) = Scalar(row[k] / norm);
    }
  }

  // 2. p_c = normalize(u_c), u_c = sum of the exemplars of c; for leave-one-out also
  //    q_i = normalize(u_c - x_i), the target column of x_i.
  template <class Generator>
  void generate(const detail::BatchClasses& batch) {
    const index_t C = batch.size(), D = x_.cols();
    fresh_.setZero(C, D);
    inv_sum_norm_.resize(C);
    for (index_t c = 0; c < C; ++c) {
      for (index_t k = batch.offsets[c]; k < batch.offsets[c + 1]; ++k) {
        fresh_.row(c) += x_.row(batch.members[k]);
      }
      const Scalar norm = fresh_.row(c).norm();
      if (!(norm > 0)) {
        detail::fail("the exemplars of class ", batch.labels[c], " sum to zero; its prototype ",
                     "is undefined");
      }
      inv_sum_norm_[c] = Scalar(1) / norm;
      fresh_.row(c) *= inv_sum_norm_[c];
    }
    if constexpr (Generator::leave_one_out) {
      const index_t B = x_.rows();
      others_.resize(B, D);
      inv_others_norm_.resize(B);
      for (index_t i = 0; i < B; ++i) {
        const index_t c = batch.class_of[i];
        others_.row(i) = fresh_.row(c) / inv_sum_norm_[c] - x_.row(i);  // u_c - x_i
        const Scalar norm = others_.row(i).norm();
        if (!(norm > 0)) {
          detail::fail("the exemplars of class ", batch.labels[c], " other than sample ", i,
                       " sum to zero; its leave-one-out prototype is undefined");
        }
        inv_others_norm_[i] = Scalar(1) / norm;
        others_.row(i) *= inv_others_norm_[i];
      }
    }
  }

  // 3. The memory part, tile by tile: with z_ij = s * x_i . w_j over active slots j,
  //    m_i = max_j z_ij, l_i = sum_j exp(z_ij - m_i), O_i = sum_j exp(z_ij - m_i) w_j.
  //    Each tile rescales the running l and O by exp(m_old - m_new), as flash-attention does.
  void memory_pass(const detail::BatchClasses& batch, index_t used,
                   const std::vector<index_t>& excluded, Scalar s, std::size_t workspace_bytes,
                   SimilarSlots<Scalar>* similar) {
    const index_t B = x_.rows(), D = x_.cols(), C = batch.size();
    const Scalar neg_inf = -std::numeric_limits<Scalar>::infinity();
    run_max_.setConstant(B, neg_inf);
    run_sum_.setZero(B);
    weighted_.setZero(B, D);
    active_.assign(static_cast<std::size_t>(used), 1);
    for (index_t slot : excluded) active_[static_cast<std::size_t>(slot)] = 0;

    const bool mine = similar != nullptr && similar->k > 0;
    using Candidate = std::pair<Scalar, index_t>;  // (cosine, slot); min-heap keeps the k best
    std::vector<std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>>>
        best(mine ? static_cast<std::size_t>(C) : 0);

    const index_t T = tile_columns(B, used, workspace_bytes);
    for (index_t j0 = 0; j0 < used; j0 += T) {
      const index_t n = std::min(T, used - j0);
      Eigen::Map<const RowMatrix> w(store_.data() + j0 * D, n, D);
      tile_.resize(B, n);
      tile_.noalias() = x_ * w.transpose();  // cosines, B x n

      if (mine) {
        // p_c . w_j = (sum_{i in c} x_i . w_j) / |u_c|: the class similarities come from the
        // cosines already in the tile, at O(B n) instead of another GEMM.
        for (index_t c = 0; c < C; ++c) {
          auto& heap = best[static_cast<std::size_t>(c)];
          for (index_t j = 0; j < n; ++j) {
            if (!active_[static_cast<std::size_t>(j0 + j)]) continue;
            Scalar sum = 0;
            for (index_t k = batch.offsets[c]; k < batch.offsets[c + 1]; ++k) {
              sum += tile_(batch.members[k], j);
            }
            const Candidate candidate{sum * inv_sum_norm_[c], j0 + j};
            if (static_cast<index_t>(heap.size()) < similar->k) {
              heap.push(candidate);
            } else if (candidate.first > heap.top().first) {
              heap.pop();
              heap.push(candidate);
            }
          }
        }
      }

      tile_ *= s;
      for (index_t j = 0; j < n; ++j) {
        if (!active_[static_cast<std::size_t>(j0 + j)]) tile_.col(j).setConstant(neg_inf);
      }
      bool any_active = false;
      for (index_t j = 0; j < n && !any_active; ++j) any_active = active_[j0 + j] != 0;
      if (!any_active) continue;

      const Vector tile_max = tile_.rowwise().maxCoeff();
      const Vector new_max = run_max_.cwiseMax(tile_max);
      const Vector rescale = (run_max_ - new_max).array().exp().matrix();
      tile_ = (tile_.colwise() - new_max).array().exp().matrix();
      run_sum_ = rescale.cwiseProduct(run_sum_) + tile_.rowwise().sum();
      weighted_ = rescale.asDiagonal() * weighted_;
      weighted_.noalias() += tile_ * w;  // B x n x D
      run_max_ = new_max;
    }

    if (mine) {
      similar->slots.assign(static_cast<std::size_t>(C * similar->k), -1);
      similar->cosines.assign(static_cast<std::size_t>(C * similar->k), neg_inf);
      for (index_t c = 0; c < C; ++c) {
        auto& heap = best[static_cast<std::size_t>(c)];
        for (auto r = static_cast<index_t>(heap.size()) - 1; r >= 0; --r, heap.pop()) {
          similar->slots[static_cast<std::size_t>(c * similar->k + r)] = heap.top().second;
          similar->cosines[static_cast<std::size_t>(c * similar->k + r)] = heap.top().first;
        }
      }
    }
  }

  // 4. Logits against the batch's own prototypes, the margin on the target, and the softmax
  //    completed with the memory's (m_i, l_i). Leaves in batch_grad_ the loss gradient w.r.t. the
  //    batch cosines, and in memory_weight_ the factor that turns O_i into the memory part of
  //    dL/dx_i.
  template <class Generator, class Margin>
  Scalar batch_columns(const detail::BatchClasses& batch, const Margin& margin) {
    const index_t B = x_.rows(), C = batch.size();
    const Scalar s = Scalar(margin.scale());
    batch_cos_.noalias() = x_ * fresh_.transpose();  // B x C
    target_cos_.resize(B);
    target_grad_.resize(B);
    memory_weight_.resize(B);
    batch_grad_.resize(B, C);
    double loss = 0;
    for (index_t i = 0; i < B; ++i) {
      const index_t y = batch.class_of[i];
      // A single exemplar is its own prototype: its target cosine is identically 1.
      const bool constant_target = !Generator::leave_one_out && batch.count(y) == 1;
      Scalar cos_y = batch_cos_(i, y);
      if constexpr (Generator::leave_one_out) cos_y = x_.row(i).dot(others_.row(i));
      if (constant_target) cos_y = Scalar(1);
      target_cos_[i] = cos_y;

      auto z = batch_cos_.row(i).array() * s;  // expression; the target entry is replaced below
      const Scalar z_y = s * margin.target(cos_y);
      Scalar row_max = run_max_[i];
      for (index_t c = 0; c < C; ++c) row_max = std::max(row_max, c == y ? z_y : z(c));
      Scalar sum = run_sum_[i] * std::exp(run_max_[i] - row_max);
      for (index_t c = 0; c < C; ++c) {
        const Scalar e = std::exp((c == y ? z_y : z(c)) - row_max);
        batch_grad_(i, c) = e;
        sum += e;
      }
      loss += std::log(double(sum)) + double(row_max) - double(z_y);

      // dL/dcos = s / B * (softmax - onehot) * (dpsi/dcos on the target)
      const Scalar inv = Scalar(1) / sum;
      memory_weight_[i] = s / Scalar(B) * std::exp(run_max_[i] - row_max) * inv;
      batch_grad_.row(i) *= s / Scalar(B) * inv;
      const Scalar target_softmax_grad = batch_grad_(i, y) - s / Scalar(B);
      target_grad_[i] = constant_target ? Scalar(0) : target_softmax_grad * margin.derivative(cos_y);
      batch_grad_(i, y) = Generator::leave_one_out ? Scalar(0) : target_grad_[i];
    }
    return Scalar(loss / double(B));
  }

  // 5. dL/dx_i = memory part + batch columns (+ the generator's chain), then dL/de_i.
  template <class Generator>
  void backward(const detail::BatchClasses& batch, Scalar s, MatrixView<Scalar> gradient) {
    (void)s;
    const index_t B = x_.rows(), C = batch.size(), D = x_.cols();
    grad_x_ = memory_weight_.asDiagonal() * weighted_;
    grad_x_.noalias() += batch_grad_ * fresh_;  // columns p_c (target column too, unless LOO)
    if constexpr (Generator::leave_one_out) {
      grad_x_ += target_grad_.asDiagonal() * others_;
    }
    if constexpr (Generator::gradient) {
      // dL/dp_c = sum_i G_ic x_i, then through p_c = u_c / |u_c|: du_c = (I - p p^T) dp_c / |u_c|.
      grad_fresh_.noalias() = batch_grad_.transpose() * x_;
      for (index_t c = 0; c < C; ++c) {
        auto g = grad_fresh_.row(c);
        g = (g - g.dot(fresh_.row(c)) * fresh_.row(c)) * inv_sum_norm_[c];
      }
      for (index_t i = 0; i < B; ++i) grad_x_.row(i) += grad_fresh_.row(batch.class_of[i]);
      if constexpr (Generator::leave_one_out) {
        // q_i = v_i / |v_i|, v_i = u_c - x_i: dv_i = (I - q q^T) (G_iy x_i) / |v_i|, which reaches
        // every exemplar of c but x_i itself.
        grad_others_.resize(B, D);
        for (index_t i = 0; i < B; ++i) {
          auto g = grad_others_.row(i);
          g = target_grad_[i] * x_.row(i);
          g = (g - g.dot(others_.row(i)) * others_.row(i)) * inv_others_norm_[i];
        }
        for (index_t c = 0; c < C; ++c) {
          Eigen::Matrix<Scalar, 1, Eigen::Dynamic> total = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>::Zero(D);
          for (index_t k = batch.offsets[c]; k < batch.offsets[c + 1]; ++k) {
            total += grad_others_.row(batch.members[k]);
          }
          for (index_t k = batch.offsets[c]; k < batch.offsets[c + 1]; ++k) {
            const index_t i = batch.members[k];
            grad_x_.row(i) += total - grad_others_.row(i);
          }
        }
      }
    }
    // x_i = e_i / |e_i|: dL/de_i = (I - x_i x_i^T) dL/dx_i / |e_i|.
    for (index_t i = 0; i < B; ++i) {
      auto g = grad_x_.row(i);
      const Scalar along = g.dot(x_.row(i));
      Scalar* out = gradient.row(i);
      for (index_t k = 0; k < D; ++k) out[k] = (g(k) - along * x_(i, k)) * inv_norm_[i];
    }
  }

  RowMatrix store_;  // capacity x D, unit prototypes; rows past the used count are zero

  // Per-step workspace, kept between steps to avoid reallocation.
  RowMatrix x_, fresh_, others_, tile_, weighted_, batch_cos_, batch_grad_, grad_x_, grad_fresh_,
      grad_others_;
  Vector inv_norm_, inv_sum_norm_, inv_others_norm_, run_max_, run_sum_, target_cos_, target_grad_,
      memory_weight_;
  std::vector<std::uint8_t> active_;
};

}  // namespace backend

namespace detail {
template <class Scalar>
struct BackendFor<Scalar, cpu> {
  using type = backend::CpuBackend<Scalar>;
};
}  // namespace detail

}  // namespace protomem
