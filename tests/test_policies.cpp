// The margin functions psi against their closed forms, their derivatives against central
// differences on both sides of every branch, the refresh rules, the queue orders, and a generator
// rule written outside the library.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <protomem/policies/generator.hpp>
#include <protomem/policies/margin.hpp>
#include <protomem/policies/queue.hpp>
#include <protomem/policies/refresh.hpp>
#include <protomem/memory.hpp>

#include "support/batch.hpp"
#include "support/naive.hpp"

namespace {

using protomem::index_t;

const double pi = std::acos(-1.0);

// cos values spread over (-1, 1), avoiding +-1 where acos has no derivative.
std::vector<double> grid() {
  std::vector<double> c;
  for (int k = -199; k <= 199; ++k) c.push_back(k / 200.0 + 0.00123);
  return c;
}

template <class Margin>
void check_derivative(const Margin& margin, const std::vector<double>& kinks) {
  for (double c : grid()) {
    const double h = 1e-6;
    bool near_kink = std::abs(c) > 1 - 2 * h;
    for (double k : kinks) near_kink = near_kink || std::abs(c - k) < 2 * h;
    if (near_kink) continue;
    const double numeric = (margin.target(c + h) - margin.target(c - h)) / (2 * h);
    INFO(Margin::name << " at cos = " << c);
    CHECK(margin.derivative(c) == Approx(numeric).epsilon(1e-6).margin(1e-8));
  }
}

}  // namespace

TEST_CASE("NoMargin and CosFace", "[policies][margin]") {
  const protomem::NoMargin none(30.0);
  const protomem::CosFace cosface(64.0, 0.35);
  CHECK(none.scale() == 30.0);
  CHECK(cosface.scale() == 64.0);
  for (double c : grid()) {
    CHECK(none.target(c) == c);
    CHECK(cosface.target(c) == Approx(c - 0.35).margin(1e-15));
  }
  check_derivative(none, {});
  check_derivative(cosface, {});
  CHECK(cosface.target(0.5f) == Approx(0.15f));  // float evaluation
}

TEST_CASE("ArcFace follows insightface's rule", "[policies][margin]") {
  const double m = 0.5;
  const protomem::ArcFace arc(64.0, m);
  const double threshold = std::cos(pi - m);
  for (double c : grid()) {
    const double expected = c > threshold ? std::cos(std::acos(c) + m) : c - m * std::sin(m);
    CHECK(arc.target(c) == Approx(expected).margin(1e-14));
  }
  check_derivative(arc, {threshold});
  // The target decreases with the angle on both branches.
  double previous = 2;
  for (int k = 0; k <= 1000; ++k) {
    const double theta = pi * k / 1000.0;
    const double t = arc.target(std::cos(theta));
    CHECK(t <= previous + 1e-12);
    previous = t;
  }
  // Values outside [-1, 1] from rounding are clamped, not NaN.
  CHECK(std::isfinite(arc.target(1.0000001)));
  CHECK(std::isfinite(arc.derivative(1.0000001)));
  CHECK(arc.target(1.0) == Approx(std::cos(m)));
}

TEST_CASE("ArcFace easy margin applies only where cos > 0", "[policies][margin]") {
  const double m = 0.4;
  const protomem::ArcFace easy(32.0, m, true);
  for (double c : grid()) {
    const double expected = c > 0 ? std::cos(std::acos(c) + m) : c;
    CHECK(easy.target(c) == Approx(expected).margin(1e-14));
  }
  check_derivative(easy, {0.0});
}

TEST_CASE("ArcFace straight-through: arcface_torch's target, derivative 1", "[policies][margin]") {
  // arcface_torch's CombinedMarginLoss adds m to the angle under torch.no_grad(): the target is
  // cos(theta + m) at every angle (no fallback) and autograd sees the plain cosine.
  const double m = 0.5;
  const protomem::ArcFace exact(64.0, m);
  const protomem::ArcFace straight(64.0, m, false, true);
  const protomem::ArcFace easy_straight(64.0, m, true, true);
  const protomem::ArcFace easy(64.0, m, true);
  CHECK_FALSE(exact.straight_through);
  CHECK(straight.straight_through);
  CHECK_FALSE(straight.easy_margin);
  int past_threshold = 0;
  for (double c : grid()) {
    const double theta = std::acos(c);
    CHECK(straight.target(c) == Approx(std::cos(theta + m)).margin(1e-14));
    CHECK(straight.derivative(c) == 1.0);
    CHECK(straight.derivative(static_cast<float>(c)) == 1.0f);
    CHECK(easy_straight.target(c) == easy.target(c));
    CHECK(easy_straight.derivative(c) == 1.0);
    if (c > std::cos(pi - m)) {
      CHECK(straight.target(c) == exact.target(c));
      CHECK(exact.derivative(c) != 1.0);  // the exact derivative is not 1 there
    } else {
      ++past_threshold;  // no fallback: theta + m passes pi and the target rises again
      CHECK(straight.target(c) > exact.target(c));
    }
  }
  CHECK(past_threshold > 0);
  CHECK(straight.derivative(1.0) == 1.0);
  CHECK(straight.derivative(-1.0) == 1.0);
  CHECK(straight.target(-1.0) == Approx(-std::cos(m)).margin(1e-15));
  CHECK(std::isfinite(straight.target(1.0000001)));
  // Both pass the memory's check in float and double (finite target and derivative times s).
  CHECK_NOTHROW(protomem::detail::check_margin_in<float>(straight));
  CHECK_NOTHROW(protomem::detail::check_margin_in<double>(easy_straight));
}

TEST_CASE("ArcFace state: s, m and the flags word round trip; other flags are refused",
          "[policies][margin]") {
  for (bool easy : {false, true}) {
    for (bool straight : {false, true}) {
      const protomem::ArcFace arc(16.0, 0.3, easy, straight);
      protomem::detail::ByteWriter out;
      arc.save(out);
      REQUIRE(out.bytes().size() == 20U);
      const auto flags = static_cast<std::uint32_t>(static_cast<unsigned char>(out.bytes()[16]));
      CHECK(flags == (easy ? 1U : 0U) + (straight ? 2U : 0U));
      protomem::detail::ByteReader in(out.bytes().data(), out.bytes().size(), "test");
      protomem::ArcFace back;
      back.load(in);
      CHECK(back.s == 16.0);
      CHECK(back.m == 0.3);
      CHECK(back.easy_margin == easy);
      CHECK(back.straight_through == straight);
    }
  }
  for (std::uint32_t flags : {4U, 5U, 8U, 0xFFFFFFFFU}) {
    protomem::detail::ByteWriter out;
    out.put(16.0);
    out.put(0.3);
    out.put<std::uint32_t>(flags);
    protomem::detail::ByteReader in(out.bytes().data(), out.bytes().size(), "test");
    protomem::ArcFace back(32.0, 0.1, true, true);
    INFO("flags " << flags);
    CHECK_THROWS_WITH(back.load(in), Catch::Matchers::Contains(
                                         "arcface: flags = " + std::to_string(flags) +
                                         " in checkpoint has bits other than 1 (easy_margin)"));
    CHECK(back.s == 32.0);  // unchanged
    CHECK(back.easy_margin);
    CHECK(back.straight_through);
  }
}

TEST_CASE("Combined margin is cos(m1 theta + m2) - m3 with a continuous fallback", "[policies][margin]") {
  const double m1 = 1.3, m2 = 0.25, m3 = 0.15;
  const protomem::CombinedMargin combined(64.0, m1, m2, m3);
  const double theta_t = (pi - m2) / m1;
  for (double c : grid()) {
    const double theta = std::acos(c);
    const double expected = theta <= theta_t ? std::cos(m1 * theta + m2) - m3
                                             : c - m3 - (1 + std::cos(theta_t));
    CHECK(combined.target(c) == Approx(expected).margin(1e-14));
  }
  check_derivative(combined, {std::cos(theta_t)});
  // Continuous at the threshold.
  CHECK(combined.target(std::cos(theta_t) + 1e-9) == Approx(combined.target(std::cos(theta_t) - 1e-9)).margin(1e-6));
  // m1 = 1, m2 = 0 is CosFace with m = m3, derivative 1 everywhere including cos = 1.
  const protomem::CombinedMargin cos_like(64.0, 1.0, 0.0, 0.35);
  const protomem::CosFace cosface(64.0, 0.35);
  for (double c : grid()) CHECK(cos_like.target(c) == Approx(cosface.target(c)).margin(1e-12));
  CHECK(cos_like.derivative(1.0) == Approx(1.0));
  // m1 = 1, m3 = 0 is ArcFace where theta + m2 <= pi.
  const protomem::CombinedMargin arc_like(64.0, 1.0, 0.5, 0.0);
  const protomem::ArcFace arc(64.0, 0.5);
  for (double c : grid()) {
    if (c > std::cos(pi - 0.5)) CHECK(arc_like.target(c) == Approx(arc.target(c)).margin(1e-12));
  }
}

TEST_CASE("refresh policies store unit prototypes", "[policies][refresh]") {
  std::vector<double> old = {1, 0, 0}, fresh = {0, 1, 0};
  protomem::Replace().refresh(old.data(), fresh.data(), 3);
  CHECK(fresh == std::vector<double>{0, 1, 0});

  protomem::Momentum(0.75).refresh(old.data(), fresh.data(), 3);
  const double n = std::sqrt(0.75 * 0.75 + 0.25 * 0.25);
  CHECK(fresh[0] == Approx(0.75 / n));
  CHECK(fresh[1] == Approx(0.25 / n));
  CHECK(fresh[2] == 0.0);

  // a = 1/2 and an antipodal fresh prototype: the blend vanishes and the fresh one is kept.
  std::vector<double> opposite = {-1, 0, 0};
  protomem::Momentum(0.5).refresh(old.data(), opposite.data(), 3);
  CHECK(opposite == std::vector<double>{-1, 0, 0});

  // a = 0 is Replace.
  std::vector<double> fresh2 = {0, 0.6, 0.8};
  protomem::Momentum(0.0).refresh(old.data(), fresh2.data(), 3);
  CHECK(fresh2[1] == Approx(0.6));
  CHECK(fresh2[2] == Approx(0.8));
}

TEST_CASE("policy traits say what each alternative does", "[policies]") {
  STATIC_REQUIRE(protomem::ExemplarMean::gradient);
  STATIC_REQUIRE_FALSE(protomem::DetachedExemplarMean::gradient);
  STATIC_REQUIRE(protomem::LeaveOneOut::leave_one_out);
  STATIC_REQUIRE(protomem::LeaveOneOut::min_exemplars == 2);
}

TEST_CASE("queue policies say whether a refresh renews a class's place", "[policies]") {
  CHECK(protomem::LeastRecentlyWritten{}.refresh_renews());
  CHECK_FALSE(protomem::FirstInFirstOut{}.refresh_renews());
  CHECK(protomem::AnyQueue{}.refresh_renews());  // the default: LeastRecentlyWritten
  CHECK_FALSE(protomem::AnyQueue(protomem::FirstInFirstOut{}).refresh_renews());
}

namespace {

// A generator rule the library does not ship, written as a new type with the members the CPU
// backend calls (policies/generator.hpp): the leave-one-out target, held constant (no gradient
// through the target's construction; x_i itself still moves against it).
struct DetachedLeaveOneOut {
  static constexpr const char* name = "detached_leave_one_out";
  static constexpr index_t min_exemplars = 2;
  PROTOMEM_HOST_DEVICE static constexpr bool constant_target(index_t) { return false; }
  template <class Rows>
  void targets(Rows& r) const {
    r.own.resize(r.x.rows(), r.x.cols());
    for (index_t i = 0; i < r.x.rows(); ++i) {
      const index_t c = r.batch.class_of[static_cast<std::size_t>(i)];
      r.own.row(i) = (r.fresh.row(c) / r.inv_sum_norm[c] - r.x.row(i)).normalized();
    }
  }
  template <class Rows>
  auto target_cosine(const Rows& r, index_t i) const {
    return r.x.row(i).dot(r.own.row(i));
  }
  template <class Rows, class T>
  void route_target(Rows& r, index_t i, index_t y, T) const {
    r.batch_grad(i, y) = T(0);  // the target is the rule's own column, not p_y
  }
  template <class Rows>
  void backward(Rows& r) const {
    r.grad_x += r.target_grad.asDiagonal() * r.own;
  }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

}  // namespace

TEST_CASE("a new generator rule is a new type: its loss is the naive loss of that rule",
          "[policies]") {
  const index_t dim = 6;
  // No aging: the naive loss (the oracle) counts every stored column fully.
  protomem::PrototypeMemory<double> memory({32, dim}, protomem::CosFace(16.0, 0.2),
                                           DetachedLeaveOneOut{}, protomem::NoAging{});
  protomem::PrototypeMemory<double> reference({32, dim}, protomem::CosFace(16.0, 0.2),
                                              protomem::LeaveOneOut{}, protomem::NoAging{});
  std::mt19937_64 rng(5);
  for (int t = 0; t < 6; ++t) {
    const auto batch =
        test_support::make_batch<double>(test_support::distinct_labels(rng, 4, 20), 3, dim, rng);
    std::vector<double> g(batch.embeddings.size()), h(batch.embeddings.size());
    const auto gradient = protomem::matrix_view(g.data(), batch.rows(), dim, batch.stride);
    const double loss = memory.forward(batch.view(), batch.label_view(), gradient).loss;
    const double expected =
        naive::loss(batch.embeddings.data(), batch.stride, batch.labels, dim,
                    naive::stored_classes(memory), memory.margin(), /*leave_one_out=*/true);
    CHECK(loss == Approx(expected).epsilon(1e-12));
    // The same loss as the built-in (differentiable) leave-one-out, but another gradient: the
    // rule's backward, not the core, decides what flows.
    const double built_in =
        reference
            .forward(batch.view(), batch.label_view(),
                     protomem::matrix_view(h.data(), batch.rows(), dim, batch.stride))
            .loss;
    CHECK(loss == Approx(built_in).epsilon(1e-12));
    double differs = 0;
    for (std::size_t k = 0; k < g.size(); ++k) differs = std::max(differs, std::abs(g[k] - h[k]));
    CHECK(differs > 1e-6);
    memory.commit();
    reference.commit();
  }
}
