// Refresh policies: what a class already in the memory keeps when the batch brings a fresh
// prototype of it. New classes always store the fresh prototype as it is.
//
// A Refresh policy must provide
//   static constexpr const char* name;
//   template <class T> void refresh(const T* old, T* fresh, index_t dim) const noexcept;
//       // overwrite `fresh` (unit norm) with the prototype to store; `old` is the stored one;
//       // noexcept (checked at compile time): it runs inside commit(), after the point where a
//       // commit can still fail, so it must not throw
//   void save(detail::ByteWriter&) const;  void load(detail::ByteReader&);
// Guarantee: the stored prototype has unit norm.
//
// Alternatives, side by side:
//   Replace   store the fresh prototype (default).
//   Momentum  store normalize(a * old + (1 - a) * fresh), 0 <= a < 1.
#pragma once

#include <cmath>
#include <type_traits>
#include <utility>

#include <protomem/detail/config.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>

namespace protomem {
namespace detail {
/// Whether Refresh::refresh on T values is declared noexcept (PrototypeMemory requires it).
template <class Refresh, class T>
constexpr bool nothrow_refresh_v = noexcept(std::declval<const Refresh&>().refresh(
    std::declval<const T*>(), std::declval<T*>(), std::declval<index_t>()));
}  // namespace detail

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

}  // namespace protomem
