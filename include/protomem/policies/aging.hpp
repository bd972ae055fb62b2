// Aging policies: how much a stored prototype still counts as a negative, by its age.
//
// A stored prototype was generated from the encoder of the step that wrote it; the older it is, the
// further the encoder has moved since, and the less it says about where its class lies now. An
// Aging policy gives every stored column j a weight pi(a_j) in [0, 1] by its age a_j (steps
// committed since the step that wrote it: 0 for a prototype written by the previous step), and the
// softmax counts the column pi(a_j) times:
//     p_ij = pi_j exp(z_ij) / sum_k pi_k exp(z_ik),  i.e.  z_ij + log pi_j as the column's logit.
// log pi is an additive, age-dependent margin on a negative; pi = 0 takes the column out of the
// softmax altogether (the prototype has expired). The batch's own fresh prototypes have age 0 and
// weight 1 whatever the policy; dL/dx keeps its form (the weight is a constant of the step), so the
// gradient stays exact (tests/test_aging.cpp: finite differences and the autograd reference).
//
// An expired prototype (pi = 0) is no column, no mining candidate, and is not blended by a Refresh
// policy when its class comes back (the fresh prototype is stored as it is, as for a new class).
// Its slot keeps the class until the Queue policy reuses it - under LeastRecentlyWritten the
// expired slots are the front of the eviction order, so they are the first reused - and
// contains(label), records and checkpoints still show it, with its age.
//
// Requires, of an Aging policy P (PrototypeMemory checks each member at compile time and names the
// one that is missing: detail::check_aging_policy at the end of this header):
//   static constexpr const char* name;              stored in checkpoints
//   static constexpr bool by_age;                   false: every weight is 1 and the memory skips
//                                                   the per-step O(M) pass over the ages
//   double log_weight(std::uint64_t age) const noexcept;   log pi(age), <= 0; -inf expires it;
//                                                   non-increasing in age
//   void save(detail::ByteWriter&) const;           its parameters, for checkpoints
//   void load(detail::ByteReader&);                 the same; bad values throw protomem::Error
//   copy-constructible and move-assignable          load() checks a copy, then moves it in
// Guarantees (the built-in policies): constructors and load() reject parameters out of range with
// protomem::Error. The weights are computed on the host, so any backend runs any policy.
//
// Alternatives, side by side:
//   NoAging   every stored prototype counts fully, whatever its age (no cost).
//   MaxAge    prototypes older than A steps expire (pi = 0): an age bound on the memory.
//   AgeDecay  pi = 2^(-a / h): a prototype counts half as much every h steps (an additive margin
//             a ln2 / h on its logit), optionally expiring past a maximum age too.
//             default_aging() = AgeDecay(8) is the memory's default: see its comment.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <protomem/detail/bookkeeping.hpp>
#include <protomem/detail/detect.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/error.hpp>
#include <type_traits>
#include <utility>
#include <vector>

namespace protomem {

/// Every stored prototype counts fully.
struct NoAging {
  static constexpr const char* name = "none";
  static constexpr bool by_age = false;
  double log_weight(std::uint64_t) const noexcept { return 0.0; }
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

/// Prototypes older than `max_age` steps expire: no column, no mining candidate, no blend.
/// max_age = 0 keeps only the prototypes written by the previous step; any value is valid.
struct MaxAge {
  static constexpr const char* name = "max_age";
  static constexpr bool by_age = true;
  std::uint64_t max_age = 1024;

  explicit MaxAge(std::uint64_t age_bound = 1024) : max_age(age_bound) {}
  double log_weight(std::uint64_t age) const noexcept {
    return age > max_age ? -std::numeric_limits<double>::infinity() : 0.0;
  }
  void save(detail::ByteWriter& out) const { out.put(max_age); }
  void load(detail::ByteReader& in) { *this = MaxAge(in.get<std::uint64_t>("aging max_age")); }
};

/// pi(a) = 2^(-a / half_life): a stored prototype's weight halves every `half_life` steps, and it
/// expires past `max_age` (default: never). Requires half_life > 0 (infinity: no decay).
struct AgeDecay {
  static constexpr const char* name = "age_decay";
  static constexpr bool by_age = true;
  static constexpr std::uint64_t never = std::numeric_limits<std::uint64_t>::max();
  double half_life = 64.0;
  std::uint64_t max_age = never;

  explicit AgeDecay(double half_life_steps = 64.0, std::uint64_t age_bound = never)
      : half_life(half_life_steps), max_age(age_bound) {
    if (!(half_life > 0.0)) {  // NaN fails too
      detail::fail(name, ": half_life = ", half_life, " must be > 0 (infinity: no decay)");
    }
  }
  double log_weight(std::uint64_t age) const noexcept {
    if (age > max_age) return -std::numeric_limits<double>::infinity();
    return -std::log(2.0) * static_cast<double>(age) / half_life;
  }
  void save(detail::ByteWriter& out) const {
    out.put(half_life);
    out.put(max_age);
  }
  void load(detail::ByteReader& in) {
    const double h = in.get<double>("aging half_life");
    *this = AgeDecay(h, in.get<std::uint64_t>("aging max_age"));
  }
};

/// The memory's default Aging policy: AgeDecay with a half-life of 8 steps.
/// Why: on real images every measured half-life beat no aging, and the shortest was best -
/// docs/results.md, "Staleness": on the Hangul subset at M = 512 slots, 16 classes a step, TAR@1e-4
/// 0.717 (h = 8) > 0.509 (16) > 0.429 (32) > 0.372 (none), and h = 16 won at every memory size
/// from 256 to 2048; on a second glyph set (2,048 slots, 64 classes a step, 8 epochs) h = 8 gave
/// +0.036 over no aging on every seed.
/// The rule, and what is not known yet: the half-life is a number of steps, 8, whatever the memory
/// size M and the classes per step C. Both real-image measurements of h = 8 ran at M / C = 32 steps
/// per memory turnover, so h = 8 steps is also h = M / (4 C); whether a larger M / C wants a longer
/// half-life (the turnover form) or the same one (the step form) has not been measured. Pass
/// AgeDecay(h) or NoAging() to the memory to choose otherwise.
inline AgeDecay default_aging() { return AgeDecay(8.0); }

namespace detail {

/// Whether an Aging policy looks at ages at all: a policy class says so in its static `by_age`, the
/// memory's holder (AnyAging, policies/any.hpp) at run time.
template <class P>
using aging_runtime_by_age_t = decltype(std::declval<const P&>().by_age());
template <class Aging>
bool ages_matter(const Aging& aging) {
  if constexpr (is_detected<aging_runtime_by_age_t, Aging>) {
    return aging.by_age();
  } else {
    (void)aging;
    return Aging::by_age;
  }
}

template <class P>
using aging_by_age_t = std::enable_if_t<std::is_same_v<std::decay_t<decltype(P::by_age)>, bool>>;
template <class P>
using aging_log_weight_t = std::enable_if_t<std::is_same_v<
    decltype(std::declval<const P&>().log_weight(std::declval<std::uint64_t>())), double>>;
template <class P>
using aging_log_weight_noexcept_t =
    std::enable_if_t<noexcept(std::declval<const P&>().log_weight(std::declval<std::uint64_t>()))>;

/// One step's view of the aging of slots [0, count), `age_of(slot)` being a slot's age (committed
/// steps since the step that wrote it): appends the expired slots to `excluded` (kept sorted and
/// free of repeats) and sets `column_bias` to the count log-weights (0 for an expired slot, which
/// is no column). Leaves `column_bias` empty when the policy does not look at ages, so that the
/// step costs nothing more.
template <class Aging, class Scalar, class AgeOf>
void age_columns(const Aging& aging, index_t count, AgeOf age_of, std::vector<index_t>& excluded,
                 std::vector<Scalar>& column_bias) {
  column_bias.clear();
  if (ages_matter(aging)) {
    column_bias.resize(static_cast<std::size_t>(count));
    const std::size_t before = excluded.size();
    for (index_t j = 0; j < count; ++j) {
      const double log_weight = aging.log_weight(age_of(j));
      if (log_weight == -std::numeric_limits<double>::infinity()) {
        excluded.push_back(j);
      } else {
        column_bias[static_cast<std::size_t>(j)] = static_cast<Scalar>(log_weight);
      }
    }
    if (excluded.size() != before) {
      std::sort(excluded.begin(), excluded.end());
      excluded.erase(std::unique(excluded.begin(), excluded.end()), excluded.end());
    }
  }
}

/// `writes` with the refreshes of expired prototypes turned into plain writes: an expired
/// prototype is not blended into its class's fresh one (the bookkeeping still counts a refresh).
template <class Aging, class AgeOf>
std::vector<SlotWrite> unblend_expired(const Aging& aging, AgeOf age_of,
                                       std::vector<SlotWrite> writes) {
  if (ages_matter(aging)) {
    for (SlotWrite& w : writes) {
      if (w.refresh &&
          aging.log_weight(age_of(w.slot)) == -std::numeric_limits<double>::infinity()) {
        w.refresh = false;
      }
    }
  }
  return writes;
}

/// The requirements of an Aging policy (this header's comment), one static_assert per member so
/// that the compiler names the missing one. True when they all hold.
template <class P>
constexpr bool check_aging_policy() {
  static_assert(is_detected<policy_name_t, P>,
                "protomem: an Aging policy needs `static constexpr const char* name` (stored in "
                "checkpoints)");
  static_assert(is_detected<aging_by_age_t, P>,
                "protomem: an Aging policy needs `static constexpr bool by_age` (false: every "
                "weight is 1)");
  static_assert(is_detected<aging_log_weight_t, P>,
                "protomem: an Aging policy needs `double log_weight(std::uint64_t age) const "
                "noexcept` (log of the column's weight, <= 0; -inf expires it)");
  static_assert(!is_detected<aging_log_weight_t, P> || is_detected<aging_log_weight_noexcept_t, P>,
                "protomem: an Aging policy's `log_weight(age)` must be noexcept");
  static_assert(is_detected<policy_save_t, P>,
                "protomem: an Aging policy needs `void save(protomem::detail::ByteWriter&) const`");
  static_assert(is_detected<policy_load_t, P>,
                "protomem: an Aging policy needs `void load(protomem::detail::ByteReader&)`");
  static_assert(policy_is_copyable<P>,
                "protomem: an Aging policy must be copy-constructible and move-assignable");
  return true;
}

}  // namespace detail
}  // namespace protomem
