// Generator policies: how a batch class's prototype p_c is made from its exemplars x_i (the
// normalised embeddings of class c in the batch), and whether the gradient flows through it.
//
// A Generator policy must provide
//   static constexpr const char* name;     // stored in checkpoints
//   static constexpr bool gradient;        // dL/dp_c flows back to the exemplars of c
//   static constexpr bool leave_one_out;   // the target column of x_i omits x_i itself
//   static constexpr index_t min_exemplars;  // a batch class with fewer exemplars is an error
//   void save(detail::ByteWriter&) const;  void load(detail::ByteReader&);
// The rule itself is evaluated by the backend (one implementation per backend, written against
// these traits), so that the CPU and CUDA backends agree.
//
// What every generator guarantees:
//   - p_c = normalize(sum_{i: y_i = c} x_i) is the column of class c for samples of other classes,
//     and the prototype written into the memory (detached) after the step.
//   - A class with a single exemplar has p_c = x_i, so its target cosine is identically 1: the
//     target logit is the constant s * psi(1) and gives no gradient (with any margin). This is exact,
//     and it keeps angular margins, whose derivative is unbounded at cos = 1, finite.
//
// Alternatives, side by side:
//   ExemplarMean          p_c as above; gradient flows through it (default; DESIGN.md section 3).
//   DetachedExemplarMean  p_c as above, treated as a constant.
//   LeaveOneOut           the target column of x_i is q_i = normalize(sum_{j in c, j != i} x_j), so a
//                         sample is never scored against a prototype that contains itself; gradient
//                         flows; needs K >= 2 exemplars per class.
#pragma once

#include <protomem/detail/serialize.hpp>
#include <protomem/view.hpp>

namespace protomem {

/// Normalised exemplar mean, differentiable (the default).
struct ExemplarMean {
  static constexpr const char* name = "exemplar_mean";
  static constexpr bool gradient = true;
  static constexpr bool leave_one_out = false;
  static constexpr index_t min_exemplars = 1;
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

/// Normalised exemplar mean, treated as a constant (no gradient through the prototype).
struct DetachedExemplarMean {
  static constexpr const char* name = "detached_exemplar_mean";
  static constexpr bool gradient = false;
  static constexpr bool leave_one_out = false;
  static constexpr index_t min_exemplars = 1;
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

/// Leave-one-out exemplar mean: a sample's target is built from the other exemplars of its class.
struct LeaveOneOut {
  static constexpr const char* name = "leave_one_out";
  static constexpr bool gradient = true;
  static constexpr bool leave_one_out = true;
  static constexpr index_t min_exemplars = 2;
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

}  // namespace protomem
