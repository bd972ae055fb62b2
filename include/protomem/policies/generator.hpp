// Generator policies: how a batch class's prototype p_c is made from its exemplars x_i (the
// normalised embeddings of class c in the batch), and whether the gradient flows through it.
//
// Requires, of a Generator policy P (PrototypeMemory checks each member at compile time and names
// the one that is missing: detail::check_generator_policy at the end of this header):
//   static constexpr const char* name;         stored in checkpoints
//   static constexpr bool gradient;            dL/dp_c flows back to the exemplars of c
//   static constexpr bool leave_one_out;       the target column of x_i omits x_i itself
//   static constexpr index_t min_exemplars;    >= 1; a batch class with fewer is an error
//   void save(detail::ByteWriter&) const;      its parameters, for checkpoints
//   void load(detail::ByteReader&);            the same; bad values throw protomem::Error
//   copy-constructible and move-assignable     load() checks a copy, then moves it in
// The rule itself is evaluated by the backend (one implementation per backend, written against
// these traits), so that the CPU and CUDA backends agree; a rule that the traits cannot express
// needs a backend change today (docs/architecture.md, "Adding a policy").
//
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

#include <protomem/detail/detect.hpp>
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

namespace detail {

template <class P>
using generator_gradient_t = std::integral_constant<bool, P::gradient>;
template <class P>
using generator_leave_one_out_t = std::integral_constant<bool, P::leave_one_out>;
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
  static_assert(is_detected<generator_gradient_t, P>,
                "protomem: a Generator policy needs `static constexpr bool gradient` (does dL/dp_c "
                "flow back to the exemplars)");
  static_assert(
      is_detected<generator_leave_one_out_t, P>,
      "protomem: a Generator policy needs `static constexpr bool leave_one_out` (does the "
      "target column of x_i omit x_i)");
  static_assert(is_detected<generator_min_exemplars_t, P>,
                "protomem: a Generator policy needs `static constexpr index_t min_exemplars`");
  static_assert(generator_min_exemplars_positive<P>,
                "protomem: a Generator policy's `min_exemplars` must be >= 1");
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
