// Refresh policies: what a class already in the memory keeps when the batch brings a fresh
// prototype of it. New classes always store the fresh prototype as it is.
//
// Requires, of a Refresh policy P (PrototypeMemory checks each member at compile time and names the
// one that is missing: detail::check_refresh_policy at the end of this header):
//   static constexpr const char* name;          stored in checkpoints
//   PROTOMEM_HOST_DEVICE void refresh(const T* old, T* fresh, index_t dim) const noexcept;
//       overwrite `fresh` (unit norm) with the unit-norm prototype to store; `old` is the stored
//       one; T is the memory's Scalar. noexcept because the backends call it while they write the
//       memory, after the point where a commit may still fail; PROTOMEM_HOST_DEVICE because
//       protomem::cuda calls it in device code.
//   void save(detail::ByteWriter&) const;       its parameters, for checkpoints
//   void load(detail::ByteReader&);             the same; bad values throw protomem::Error
//   copy-constructible and move-assignable      load() checks a copy, then moves it in
// Guarantees (the built-in policies): the stored prototype has unit norm; constructors and load()
// reject parameters out of range with protomem::Error.
//
// Alternatives, side by side:
//   Replace   store the fresh prototype (default).
//   Momentum  store normalize(a * old + (1 - a) * fresh), 0 <= a < 1.
#pragma once

#include <cmath>
#include <type_traits>
#include <utility>

#include <protomem/detail/config.hpp>
#include <protomem/detail/detect.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>

namespace protomem {
/// Replace the stored prototype by the fresh one.
struct Replace {
  static constexpr const char* name = "replace";
  template <class T>
  PROTOMEM_HOST_DEVICE void refresh(const T*, T*, index_t) const noexcept {}
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

/// Momentum blend: normalize(a * old + (1 - a) * fresh). Requires 0 <= a < 1. In the one case where
/// the blend is the zero vector (a = 1/2 and fresh = -old) the fresh prototype is stored.
struct Momentum {
  static constexpr const char* name = "momentum";
  double a = 0.5;

  explicit Momentum(double old_weight = 0.5) : a(old_weight) {
    if (!(std::isfinite(a) && a >= 0.0 && a < 1.0)) {
      detail::fail(name, ": old-prototype weight a = ", a, " is outside [0, 1)");
    }
  }
  template <class T>
  PROTOMEM_HOST_DEVICE void refresh(const T* old, T* fresh, index_t dim) const noexcept {
    T norm2 = 0;
    for (index_t k = 0; k < dim; ++k) {
      const T v = T(a) * old[k] + T(1 - a) * fresh[k];
      norm2 += v * v;
    }
    if (!(norm2 > T(0))) return;
    const T inv = T(1) / std::sqrt(norm2);
    for (index_t k = 0; k < dim; ++k) fresh[k] = (T(a) * old[k] + T(1 - a) * fresh[k]) * inv;
  }
  void save(detail::ByteWriter& out) const { out.put(a); }
  void load(detail::ByteReader& in) { *this = Momentum(in.get<double>("refresh momentum a")); }
};

namespace detail {

template <class P, class T>
using refresh_call_t = decltype(std::declval<const P&>().refresh(
    std::declval<const T*>(), std::declval<T*>(), std::declval<index_t>()));
template <class P, class T>
using refresh_noexcept_t = std::enable_if_t<noexcept(std::declval<const P&>().refresh(
    std::declval<const T*>(), std::declval<T*>(), std::declval<index_t>()))>;

/// The requirements of a Refresh policy (this header's comment), one static_assert per member so
/// that the compiler names the missing one. True when they all hold.
template <class P, class Scalar>
constexpr bool check_refresh_policy() {
  static_assert(is_detected<policy_name_t, P>,
                "protomem: a Refresh policy needs `static constexpr const char* name` (stored in "
                "checkpoints)");
  static_assert(is_detected<refresh_call_t, P, Scalar>,
                "protomem: a Refresh policy needs `PROTOMEM_HOST_DEVICE void refresh(const T* old, "
                "T* fresh, index_t dim) const noexcept` for T = the memory's Scalar; mark it "
                "PROTOMEM_HOST_DEVICE for protomem::cuda");
  static_assert(
      !is_detected<refresh_call_t, P, Scalar> || is_detected<refresh_noexcept_t, P, Scalar>,
      "protomem: a Refresh policy's `refresh(const T* old, T* fresh, index_t dim) const` "
      "must be noexcept (the backends call it while writing the memory)");
  static_assert(
      is_detected<policy_save_t, P>,
      "protomem: a Refresh policy needs `void save(protomem::detail::ByteWriter&) const`");
  static_assert(is_detected<policy_load_t, P>,
                "protomem: a Refresh policy needs `void load(protomem::detail::ByteReader&)`");
  static_assert(policy_is_copyable<P>,
                "protomem: a Refresh policy must be copy-constructible and move-assignable");
  return true;
}

}  // namespace detail

}  // namespace protomem
