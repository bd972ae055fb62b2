// Margin policies: how the target logit of a sample is formed from its cosine to its own class
// prototype. Every policy turns cos_iy into s * psi(cos_iy); non-target columns are always s * cos.
//
// Requires, of a Margin policy P (PrototypeMemory checks each member at compile time and names the
// one that is missing: detail::check_margin_policy at the end of this header):
//   static constexpr const char* name;               stored in checkpoints
//   double scale() const;                            s in [1e-3, 1e4] (detail::check_scale)
//   PROTOMEM_HOST_DEVICE T target(T cos) const;      psi(cos), cos in [-1, 1]
//   PROTOMEM_HOST_DEVICE T derivative(T cos) const;  d psi / d cos, finite everywhere
//   void save(detail::ByteWriter&) const;            its parameters, for checkpoints
//   void load(detail::ByteReader&);                  the same; bad values throw protomem::Error
//   copy-constructible and move-assignable           load() checks a copy, then moves it in
// T is the memory's Scalar (target and derivative may be templates, as the built-in ones are).
// protomem::cuda evaluates target and derivative in device code, so there they must be marked
// PROTOMEM_HOST_DEVICE: nvcc cannot be asked beforehand and otherwise reports "calling a __host__
// function from a __global__ function".
// Guarantees (the built-in margins): constructors and load() reject parameters out of range with
// protomem::Error; target and derivative are finite for every cos in [-1, 1], and the CPU and
// CUDA backends evaluate the same code. Parameters are checked in double by the constructors
// and load(), and again in the memory's Scalar by PrototypeMemory (detail::check_margin_in), so a
// scale that is finite in double but 0 or inf in float is rejected.
//
// Alternatives, side by side:
//   NoMargin       psi = cos                                            (NormFace)
//   CosFace        psi = cos - m                                        (default: s = 64, m = 0.35)
//   ArcFace        psi = cos(theta + m), falling back to cos - m sin(m) once theta + m > pi
//                  (insightface's classic rule), or the easy-margin variant; straight_through:
//                  arcface_torch's rule (no fallback, d psi / d cos taken as 1)
//   CombinedMargin psi = cos(m1 theta + m2) - m3, with a monotone fallback once m1 theta + m2 > pi
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include <protomem/detail/config.hpp>
#include <protomem/detail/detect.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/error.hpp>

namespace protomem {
namespace detail {

/// The range of the scale s: far wider than any used in practice (16 to 64), and narrow enough that
/// s stays a normal, non-zero float and s times a cosine or margin term stays finite, whatever a
/// checkpoint says (a fuzzed checkpoint with s = 1e-302, which is 0 in float, loaded and then gave
/// a non-finite loss; a huge s would overflow float the other way).
constexpr double min_scale = 1e-3;
constexpr double max_scale = 1e4;
inline void check_scale(double s, const char* policy) {
  if (!(std::isfinite(s) && s > 0 && s >= min_scale && s <= max_scale)) {
    fail(policy, ": scale s = ", s, " must be finite and > 0, within [", min_scale, ", ", max_scale,
         "]");
  }
}
inline void check_range(double v, double lo, double hi, const char* what, const char* policy) {
  if (!(std::isfinite(v) && v >= lo && v <= hi)) {
    fail(policy, ": ", what, " = ", v, " is outside [", lo, ", ", hi, "]");
  }
}
/// A margin policy checked in the arithmetic a step uses (Scalar), as PrototypeMemory does at
/// construction and at load: the constructors check in double, but a float memory would turn
/// s = 1e-50 into 0 and s = 1e39 into inf. Requires s to be a normal Scalar > 0 and s * psi(cos)
/// and s * dpsi/dcos to be finite Scalars at cos = -1, -1/2, 0, 1/2, 1 (the ends are where the
/// margins' fallbacks and floors act).
template <class Scalar, class Margin>
void check_margin_in(const Margin& margin) {
  const char* scalar = sizeof(Scalar) == 4 ? "float" : "double";
  const auto s = static_cast<Scalar>(margin.scale());
  if (!(std::isfinite(s) && s >= std::numeric_limits<Scalar>::min())) {
    fail(name_of(margin), ": scale s = ", margin.scale(), " is ", s, " as a ", scalar,
         " (the memory's arithmetic); it must be a finite ", scalar, " > 0 and not subnormal");
  }
  for (const Scalar c : {Scalar(-1), Scalar(-0.5), Scalar(0), Scalar(0.5), Scalar(1)}) {
    const Scalar z = s * margin.template target<Scalar>(c);
    const Scalar dz = s * margin.template derivative<Scalar>(c);
    if (!(std::isfinite(z) && std::isfinite(dz))) {
      fail(name_of(margin), ": with s = ", margin.scale(), " the target logit at cos = ", c, " is ", z,
           " and its derivative ", dz, " as a ", scalar, "; both must be finite");
    }
  }
}

template <class T>
PROTOMEM_HOST_DEVICE T clamp_cos(T c) {
  return c > T(1) ? T(1) : (c < T(-1) ? T(-1) : c);
}
/// sin(theta) for theta = arccos(c), floored away from 0 so that derivatives stay finite at
/// c = +-1 (there the cosine is constant in every direction a gradient can take, see generator.hpp).
template <class T>
PROTOMEM_HOST_DEVICE T sin_theta(T c) {
  T s2 = T(1) - c * c;
  T s = s2 > T(0) ? std::sqrt(s2) : T(0);
  const T floor = std::numeric_limits<T>::epsilon();
  return s > floor ? s : floor;
}

}  // namespace detail

/// No margin (NormFace): z_iy = s * cos_iy.
struct NoMargin {
  static constexpr const char* name = "none";
  double s = 64.0;

  explicit NoMargin(double scale = 64.0) : s(scale) { detail::check_scale(s, name); }
  double scale() const { return s; }
  template <class T>
  PROTOMEM_HOST_DEVICE T target(T cos) const {
    return cos;
  }
  template <class T>
  PROTOMEM_HOST_DEVICE T derivative(T) const {
    return T(1);
  }
  void save(detail::ByteWriter& out) const { out.put(s); }
  void load(detail::ByteReader& in) { *this = NoMargin(in.get<double>("margin s")); }
};

/// CosFace / additive cosine margin: z_iy = s * (cos_iy - m).
/// Requires 1e-3 <= s <= 1e4, 0 <= m <= 1.
struct CosFace {
  static constexpr const char* name = "cosface";
  double s = 64.0;
  double m = 0.35;

  explicit CosFace(double scale = 64.0, double margin = 0.35) : s(scale), m(margin) {
    detail::check_scale(s, name);
    detail::check_range(m, 0.0, 1.0, "margin m", name);
  }
  double scale() const { return s; }
  template <class T>
  PROTOMEM_HOST_DEVICE T target(T cos) const {
    return cos - T(m);
  }
  template <class T>
  PROTOMEM_HOST_DEVICE T derivative(T) const {
    return T(1);
  }
  void save(detail::ByteWriter& out) const {
    out.put(s);
    out.put(m);
  }
  void load(detail::ByteReader& in) {
    const double scale = in.get<double>("margin s");
    *this = CosFace(scale, in.get<double>("margin m"));
  }
};

/// ArcFace / additive angular margin: z_iy = s * cos(theta_iy + m). Requires 1e-3 <= s <= 1e4,
/// 0 <= m < pi/2. Where theta + m would pass pi (cos <= cos(pi - m)) the target falls back to
/// cos - m sin(m), as in insightface, so the target keeps decreasing with theta. With
/// `easy_margin` the margin applies only where cos > 0 and the target is plain cos elsewhere.
///
/// `straight_through` reproduces insightface arcface_torch's CombinedMarginLoss (m1 = 1, m3 = 0),
/// which adds m to the angle inside torch.no_grad(): its target is cos(theta + m) for every theta
/// (no fallback: arcface_torch has none on that path, so past theta = pi - m the target rises
/// again), and its gradient is that of the plain cosine, d psi / d cos = 1 (the margin shifts the
/// logit but is invisible to autograd). With easy_margin as well, the target is the easy-margin
/// one (cos(theta + m) where cos > 0, else cos) and the derivative is still 1. The default is the
/// exact gradient of psi.
///
/// Checkpoint state: s, m (doubles) and a u32 of flags, bit 0 easy_margin, bit 1
/// straight_through; checkpoints written before straight_through existed hold 0 or 1 and load
/// unchanged. load() rejects any other bit.
struct ArcFace {
  static constexpr const char* name = "arcface";
  static constexpr std::uint32_t easy_margin_bit = 1U;
  static constexpr std::uint32_t straight_through_bit = 2U;
  double s = 64.0;
  double m = 0.5;
  bool easy_margin = false;
  bool straight_through = false;

  explicit ArcFace(double scale = 64.0, double margin = 0.5, bool easy = false,
                   bool straight = false)
      : s(scale), m(margin), easy_margin(easy), straight_through(straight) {
    detail::check_scale(s, name);
    detail::check_range(m, 0.0, 1.5707963267948966 - 1e-9, "margin m", name);
  }
  double scale() const { return s; }
  /// Whether cos(theta + m) is the target at cosine c (else the fallback, or plain cos).
  template <class T>
  PROTOMEM_HOST_DEVICE bool applies(T c) const {
    if (easy_margin) return c > T(0);
    return straight_through || c > T(-std::cos(m));  // cos(pi - m) = -cos(m)
  }
  template <class T>
  PROTOMEM_HOST_DEVICE T target(T cos) const {
    const T c = detail::clamp_cos(cos);
    if (applies(c)) {
      const T sin_t = std::sqrt(T(1) - c * c > T(0) ? T(1) - c * c : T(0));
      return c * T(std::cos(m)) - sin_t * T(std::sin(m));
    }
    return easy_margin ? c : c - T(m * std::sin(m));
  }
  template <class T>
  PROTOMEM_HOST_DEVICE T derivative(T cos) const {
    if (straight_through) return T(1);
    const T c = detail::clamp_cos(cos);
    if (applies(c)) return T(std::cos(m)) + T(std::sin(m)) * c / detail::sin_theta(c);
    return T(1);
  }
  std::uint32_t flags() const {
    return (easy_margin ? easy_margin_bit : 0U) | (straight_through ? straight_through_bit : 0U);
  }
  void save(detail::ByteWriter& out) const {
    out.put(s);
    out.put(m);
    out.put<std::uint32_t>(flags());
  }
  void load(detail::ByteReader& in) {
    const double scale = in.get<double>("margin s");
    const double margin = in.get<double>("margin m");
    const auto flags = in.get<std::uint32_t>("margin flags");
    if ((flags & ~(easy_margin_bit | straight_through_bit)) != 0U) {
      detail::fail(name, ": flags = ", flags, " in checkpoint has bits other than 1 (easy_margin) ",
                   "and 2 (straight_through); it must be 0, 1, 2 or 3");
    }
    *this = ArcFace(scale, margin, (flags & easy_margin_bit) != 0U,
                    (flags & straight_through_bit) != 0U);
  }
};

/// Combined margin (insightface's m1/m2/m3): z_iy = s * (cos(m1 theta_iy + m2) - m3).
/// Requires 1e-3 <= s <= 1e4, 1 <= m1 <= 4, 0 <= m2 < pi/2, 0 <= m3 <= 1. Where m1 theta + m2 would
/// pass pi (theta > theta_t = (pi - m2) / m1) the target continues as cos - m3 - (1 + cos theta_t):
/// continuous at theta_t and decreasing in theta (our rule; insightface's torch code has none).
struct CombinedMargin {
  static constexpr const char* name = "combined";
  double s = 64.0;
  double m1 = 1.0;
  double m2 = 0.0;
  double m3 = 0.0;

  explicit CombinedMargin(double scale = 64.0, double angular_factor = 1.0,
                          double angular_margin = 0.0, double cosine_margin = 0.0)
      : s(scale), m1(angular_factor), m2(angular_margin), m3(cosine_margin) {
    detail::check_scale(s, name);
    detail::check_range(m1, 1.0, 4.0, "m1", name);
    detail::check_range(m2, 0.0, 1.5707963267948966 - 1e-9, "m2", name);
    detail::check_range(m3, 0.0, 1.0, "m3", name);
  }
  double scale() const { return s; }
  PROTOMEM_HOST_DEVICE double threshold_angle() const { return (3.141592653589793 - m2) / m1; }
  template <class T>
  PROTOMEM_HOST_DEVICE T target(T cos) const {
    const T c = detail::clamp_cos(cos);
    const T theta = std::acos(c);
    if (theta <= T(threshold_angle())) return std::cos(T(m1) * theta + T(m2)) - T(m3);
    return c - T(m3) - T(1 + std::cos(threshold_angle()));
  }
  template <class T>
  PROTOMEM_HOST_DEVICE T derivative(T cos) const {
    const T c = detail::clamp_cos(cos);
    const T theta = std::acos(c);
    if (theta > T(threshold_angle())) return T(1);
    // d/dc cos(m1 theta + m2) = m1 sin(m1 theta + m2) / sin(theta); at theta = 0 and m2 = 0 the
    // limit is m1^2.
    if (m2 == 0.0 && theta < std::sqrt(std::numeric_limits<T>::epsilon())) return T(m1 * m1);
    return T(m1) * std::sin(T(m1) * theta + T(m2)) / detail::sin_theta(c);
  }
  void save(detail::ByteWriter& out) const {
    out.put(s);
    out.put(m1);
    out.put(m2);
    out.put(m3);
  }
  void load(detail::ByteReader& in) {
    const double scale = in.get<double>("margin s");
    const double a = in.get<double>("margin m1");
    const double b = in.get<double>("margin m2");
    *this = CombinedMargin(scale, a, b, in.get<double>("margin m3"));
  }
};

namespace detail {

template <class P>
using margin_scale_t = decltype(static_cast<double>(std::declval<const P&>().scale()));
template <class P, class T>
using margin_target_t =
    decltype(static_cast<T>(std::declval<const P&>().target(std::declval<T>())));
template <class P, class T>
using margin_derivative_t =
    decltype(static_cast<T>(std::declval<const P&>().derivative(std::declval<T>())));

/// The requirements of a Margin policy (this header's comment), one static_assert per member so
/// that the compiler names the missing one. True when they all hold.
template <class P, class Scalar>
constexpr bool check_margin_policy() {
  static_assert(is_detected<policy_name_t, P>,
                "protomem: a Margin policy needs `static constexpr const char* name` (stored in "
                "checkpoints)");
  static_assert(is_detected<margin_scale_t, P>,
                "protomem: a Margin policy needs `double scale() const` (the logit scale s)");
  static_assert(is_detected<margin_target_t, P, Scalar>,
                "protomem: a Margin policy needs `PROTOMEM_HOST_DEVICE T target(T cos) const` "
                "(psi(cos)) for T = the memory's Scalar; mark it PROTOMEM_HOST_DEVICE for "
                "protomem::cuda");
  static_assert(is_detected<margin_derivative_t, P, Scalar>,
                "protomem: a Margin policy needs `PROTOMEM_HOST_DEVICE T derivative(T cos) const` "
                "(d psi / d cos) for T = the memory's Scalar; mark it PROTOMEM_HOST_DEVICE for "
                "protomem::cuda");
  static_assert(is_detected<policy_save_t, P>,
                "protomem: a Margin policy needs `void save(protomem::detail::ByteWriter&) const`");
  static_assert(is_detected<policy_load_t, P>,
                "protomem: a Margin policy needs `void load(protomem::detail::ByteReader&)`");
  static_assert(policy_is_copyable<P>,
                "protomem: a Margin policy must be copy-constructible and move-assignable");
  return true;
}

}  // namespace detail

}  // namespace protomem
