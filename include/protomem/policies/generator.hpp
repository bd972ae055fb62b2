// Generator policies: how a batch class's prototype p_c is made from its exemplars x_i (the
// normalised embeddings of class c in the batch), and whether the gradient flows through it.
//
// Requires, of a Generator policy P (PrototypeMemory checks each member at compile time and names
// the one that is missing: detail::check_generator_policy at the end of this header; the CPU
// backend checks the members it calls, backend/cpu/backend.hpp, check_cpu_generator):
//   static constexpr const char* name;         stored in checkpoints
//   static constexpr index_t min_exemplars;    >= 1; a batch class with fewer is an error
//   PROTOMEM_HOST_DEVICE static constexpr bool constant_target(index_t exemplars);
//       is the target cosine of a row whose class has `exemplars` rows identically 1 (no gradient)
//   the rule, called by the CPU backend on its GeneratorRows (the batch's normalised rows x, the
//   class prototypes p_c = normalize(u_c) and 1 / |u_c|, the batch cosines and their gradient, the
//   row gradient dL/dx, and scratch the rule may use):
//   template <class Rows> void targets(Rows&) const;
//       after p_c: each row's target column (e.g. leave-one-out); degenerate input throws
//   template <class Rows> T target_cosine(const Rows&, index_t row) const;
//   template <class Rows, class T> void route_target(Rows&, index_t row, index_t cls, T g) const;
//       where dL/dcos of the row's target goes: into its batch column (batch_grad(row, cls)) or
//       into the rule's own column (then batch_grad(row, cls) = 0)
//   template <class Rows> void backward(Rows&) const;
//       adds to dL/dx what flows through the targets and the prototypes (nothing if detached)
//   void save(detail::ByteWriter&) const;      its parameters, for checkpoints
//   void load(detail::ByteReader&);            the same; bad values throw protomem::Error
//   copy-constructible and move-assignable     load() checks a copy, then moves it in
// The class prototype that other rows see, that mining compares and that is stored, is
// normalize(u_c), u_c the sum of the class's exemplars: the backends compute it (the mining seam
// reads p_c . w_j off the memory pass's cosines, docs/algorithm.md). A new rule is a new type with
// these members; detail::ExemplarMeanRule is the built-ins' implementation. The CUDA backend runs
// the built-in rules only (its kernels read ExemplarMeanRule's gradient and leave_one_out).
// Guarantees (every generator):
//   - p_c = normalize(sum_{i: y_i = c} x_i) is the column of class c for samples of other classes,
//     and the prototype written into the memory (detached) after the step.
//   - A class with a single exemplar has p_c = x_i, so its target cosine is identically 1: the
//     target logit is the constant s * psi(1) and gives no gradient (with any margin). This is
//     exact, and it keeps angular margins, whose derivative is unbounded at cos = 1, finite.
//
// Alternatives, side by side:
//   ExemplarMean          p_c as above; gradient flows through it (default; docs/design.md,
//                         "The policies", gives the evidence for this default).
//   DetachedExemplarMean  p_c as above, treated as a constant.
//   LeaveOneOut           the target column of x_i is q_i = normalize(sum_{j in c, j != i} x_j),
//                         so a sample is never scored against a prototype that contains itself;
//                         gradient flows; needs K >= 2 exemplars per class.
#pragma once

#include <type_traits>
#include <utility>

#include <protomem/backend/row_math.hpp>
#include <protomem/detail/config.hpp>
#include <protomem/detail/detect.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/view.hpp>

namespace protomem {

namespace detail {

/// The exemplar-mean rules, written once against the CPU backend's GeneratorRows: each row's
/// target column is p_c (LeaveOneOut = false) or q_i = normalize(u_c - x_i) (true); the gradient
/// flows through them (Gradient = true) or not.
template <bool Gradient, bool LeaveOneOut>
struct ExemplarMeanRule {
  static constexpr bool gradient = Gradient;
  static constexpr bool leave_one_out = LeaveOneOut;

  PROTOMEM_HOST_DEVICE static constexpr bool constant_target(index_t exemplars) {
    return backend::constant_target(LeaveOneOut, exemplars);
  }

  // q_i = normalize(u_c - x_i), the target column of x_i under leave-one-out.
  template <class Rows>
  void targets(Rows& r) const {
    if constexpr (LeaveOneOut) {
      using T = typename std::decay_t<decltype(r.x)>::Scalar;
      const index_t B = r.x.rows(), D = r.x.cols();
      r.own.resize(B, D);
      r.own_inv_norm.resize(B);
      for (index_t i = 0; i < B; ++i) {
        const index_t c = r.batch.class_of[static_cast<std::size_t>(i)];
        r.own.row(i) = r.fresh.row(c) / r.inv_sum_norm[c] - r.x.row(i);  // u_c - x_i
        const T norm = r.own.row(i).norm();
        if (!(norm > 0)) {
          backend::fail_step::leave_one_out_zero(r.batch.labels[static_cast<std::size_t>(c)], i);
        }
        r.own_inv_norm[i] = T(1) / norm;
        r.own.row(i) *= r.own_inv_norm[i];
      }
    } else {
      (void)r;
    }
  }

  template <class Rows>
  auto target_cosine(const Rows& r, index_t i) const {
    if constexpr (LeaveOneOut) {
      return r.x.row(i).dot(r.own.row(i));
    } else {
      return r.batch_cos(i, r.batch.class_of[static_cast<std::size_t>(i)]);
    }
  }

  template <class Rows, class T>
  void route_target(Rows& r, index_t i, index_t y, T g) const {
    r.batch_grad(i, y) = LeaveOneOut ? T(0) : g;
  }

  // dL/dx has the memory part and the batch columns (G P); add the target columns and the chain
  // through the prototypes.
  template <class Rows>
  void backward(Rows& r) const {
    const index_t B = r.x.rows(), C = r.fresh.rows(), D = r.x.cols();
    if constexpr (LeaveOneOut) r.grad_x += r.target_grad.asDiagonal() * r.own;
    if constexpr (Gradient) {
      // dL/dp_c = sum_i G_ic x_i, then through p_c = u_c / |u_c|: du_c = (I - p p^T) dp_c / |u_c|.
      r.grad_fresh.noalias() = r.batch_grad.transpose() * r.x;
      for (index_t c = 0; c < C; ++c) {
        auto g = r.grad_fresh.row(c);
        g = (g - g.dot(r.fresh.row(c)) * r.fresh.row(c)) * r.inv_sum_norm[c];
      }
      for (index_t i = 0; i < B; ++i) {
        r.grad_x.row(i) += r.grad_fresh.row(r.batch.class_of[static_cast<std::size_t>(i)]);
      }
      if constexpr (LeaveOneOut) {
        // q_i = v_i / |v_i|, v_i = u_c - x_i: dv_i = (I - q q^T) (G_iy x_i) / |v_i|, which reaches
        // every exemplar of c but x_i itself.
        r.own_grad.resize(B, D);
        for (index_t i = 0; i < B; ++i) {
          auto g = r.own_grad.row(i);
          g = r.target_grad[i] * r.x.row(i);
          g = (g - g.dot(r.own.row(i)) * r.own.row(i)) * r.own_inv_norm[i];
        }
        const auto& offsets = r.batch.offsets;
        const auto& members = r.batch.members;
        for (index_t c = 0; c < C; ++c) {
          const auto begin = offsets[static_cast<std::size_t>(c)];
          const auto end = offsets[static_cast<std::size_t>(c) + 1];
          using RowVector = std::decay_t<decltype(r.own_grad.row(0).eval())>;
          RowVector total = RowVector::Zero(D);
          for (index_t k = begin; k < end; ++k) {
            total += r.own_grad.row(members[static_cast<std::size_t>(k)]);
          }
          for (index_t k = begin; k < end; ++k) {
            const index_t i = members[static_cast<std::size_t>(k)];
            r.grad_x.row(i) += total - r.own_grad.row(i);
          }
        }
      }
    }
    (void)B;
    (void)C;
    (void)D;
  }
};

}  // namespace detail

/// Normalised exemplar mean, differentiable (the default).
struct ExemplarMean : detail::ExemplarMeanRule<true, false> {
  static constexpr const char* name = "exemplar_mean";
  static constexpr index_t min_exemplars = 1;
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

/// Normalised exemplar mean, treated as a constant (no gradient through the prototype).
struct DetachedExemplarMean : detail::ExemplarMeanRule<false, false> {
  static constexpr const char* name = "detached_exemplar_mean";
  static constexpr index_t min_exemplars = 1;
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

/// Leave-one-out exemplar mean: a sample's target is built from the other exemplars of its class.
struct LeaveOneOut : detail::ExemplarMeanRule<true, true> {
  static constexpr const char* name = "leave_one_out";
  static constexpr index_t min_exemplars = 2;
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

namespace detail {

/// True for the built-in rules (what the CUDA kernels implement).
template <class P>
constexpr bool is_exemplar_mean_rule = std::is_base_of_v<ExemplarMeanRule<true, false>, P> ||
                                       std::is_base_of_v<ExemplarMeanRule<false, false>, P> ||
                                       std::is_base_of_v<ExemplarMeanRule<true, true>, P> ||
                                       std::is_base_of_v<ExemplarMeanRule<false, true>, P>;

template <class P>
using generator_constant_target_t =
    std::enable_if_t<std::is_same_v<decltype(P::constant_target(index_t{})), bool>>;
template <class P>
using generator_min_exemplars_t = std::integral_constant<index_t, P::min_exemplars>;

template <class P, bool = is_detected<generator_min_exemplars_t, P>>
constexpr bool generator_min_exemplars_positive = true;  // reported as missing instead
template <class P>
constexpr bool generator_min_exemplars_positive<P, true> = (P::min_exemplars >= 1);

/// The requirements of a Generator policy (this header's comment), one static_assert per member
/// so that the compiler names the missing one. True when they all hold.
template <class P>
constexpr bool check_generator_policy() {
  static_assert(is_detected<policy_name_t, P>,
                "protomem: a Generator policy needs `static constexpr const char* name` (stored in "
                "checkpoints)");
  static_assert(is_detected<generator_min_exemplars_t, P>,
                "protomem: a Generator policy needs `static constexpr index_t min_exemplars`");
  static_assert(generator_min_exemplars_positive<P>,
                "protomem: a Generator policy's `min_exemplars` must be >= 1");
  static_assert(is_detected<generator_constant_target_t, P>,
                "protomem: a Generator policy needs `PROTOMEM_HOST_DEVICE static constexpr bool "
                "constant_target(index_t exemplars)` (is a row's target cosine identically 1)");
  static_assert(
      is_detected<policy_save_t, P>,
      "protomem: a Generator policy needs `void save(protomem::detail::ByteWriter&) const`");
  static_assert(is_detected<policy_load_t, P>,
                "protomem: a Generator policy needs `void load(protomem::detail::ByteReader&)`");
  static_assert(policy_is_copyable<P>,
                "protomem: a Generator policy must be copy-constructible and move-assignable");
  return true;
}

}  // namespace detail

}  // namespace protomem
