// What a Generator policy works on in the CPU backend (policies/generator.hpp): GeneratorRows, the
// views of one step's rows, and check_cpu_generator, the members of a rule the CPU backend calls.
// Apart from backend.hpp so that the policies' holders (policies/any.hpp) can name them.
#pragma once

#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include <protomem/detail/batch.hpp>
#include <protomem/detail/detect.hpp>
#include <protomem/view.hpp>

namespace protomem {
namespace backend {

/// What a Generator policy works on in the CPU backend (policies/generator.hpp): views of the
/// step's rows, valid during one forward().
template <class Scalar>
struct GeneratorRows {
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  const detail::BatchClasses& batch;
  const RowMatrix& x;          // B x D: the normalised rows
  const RowMatrix& fresh;      // C x D: p_c = normalize(u_c)
  const Vector& inv_sum_norm;  // C: 1 / |u_c|
  const RowMatrix& batch_cos;  // B x C: x_i . p_c (from the batch columns on)
  RowMatrix& batch_grad;       // B x C: dL/d(x_i . p_c)
  const Vector& target_grad;   // B: dL/d(target cosine), 0 for a constant target
  RowMatrix& grad_x;           // B x D: dL/dx
  RowMatrix& grad_fresh;       // C x D: scratch
  RowMatrix& own;              // B x D: scratch for per-row target columns
  Vector& own_inv_norm;        // B: scratch
  RowMatrix& own_grad;         // B x D: scratch
};

namespace cpu_check {
template <class G, class R>
using targets_t = decltype(std::declval<const G&>().targets(std::declval<R&>()));
template <class G, class R>
using target_cosine_t =
    decltype(std::declval<const G&>().target_cosine(std::declval<const R&>(), index_t{}));
template <class G, class R>
using route_target_t = decltype(std::declval<const G&>().route_target(
    std::declval<R&>(), index_t{}, index_t{}, std::declval<typename R::RowMatrix::Scalar>()));
template <class G, class R>
using backward_t = decltype(std::declval<const G&>().backward(std::declval<R&>()));
}  // namespace cpu_check

/// The members of a Generator policy the CPU backend calls (policies/generator.hpp), one
/// static_assert each so that the compiler names the missing one.
template <class G, class Scalar>
constexpr bool check_cpu_generator() {
  using R = GeneratorRows<Scalar>;
  static_assert(detail::is_detected<cpu_check::targets_t, G, R>,
                "protomem: a Generator policy needs `template <class Rows> void targets(Rows&) "
                "const` (each row's target column) to run on protomem::cpu");
  static_assert(detail::is_detected<cpu_check::target_cosine_t, G, R>,
                "protomem: a Generator policy needs `template <class Rows> T target_cosine(const "
                "Rows&, index_t row) const` to run on protomem::cpu");
  static_assert(detail::is_detected<cpu_check::route_target_t, G, R>,
                "protomem: a Generator policy needs `template <class Rows, class T> void "
                "route_target(Rows&, index_t row, index_t cls, T g) const` to run on "
                "protomem::cpu");
  static_assert(detail::is_detected<cpu_check::backward_t, G, R>,
                "protomem: a Generator policy needs `template <class Rows> void backward(Rows&) "
                "const` to run on protomem::cpu");
  return true;
}

}  // namespace backend
}  // namespace protomem
