// The whole step's gradient dL/dE against central finite differences of the loss, in double, for
// every margin x generator x refresh x queue combination, over a sequence of steps that covers an
// empty memory, classes new to it, classes already in it, empty slots, single-exemplar classes, a
// full memory with evictions, and a logits tile smaller than the memory.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <protomem/memory.hpp>

#include "support/batch.hpp"
#include "support/naive.hpp"

namespace {

using protomem::index_t;
using protomem::label_t;

using Batch = test_support::Batch<double>;

constexpr index_t kDim = 5;
constexpr index_t kStride = kDim + 2;  // rows padded with NaN that must never be read

// Exemplars scatter around a class direction, with norms in [0.3, 3], so that cosines are spread
// over [-1, 1] and the normalisation's gradient matters.
Batch make_batch(const std::vector<std::pair<label_t, int>>& classes, std::mt19937_64& rng) {
  return test_support::make_batch<double>(classes, kDim, rng, {0.7, 0.3, 3.0, kStride - kDim});
}

// The loss of `batch` (and its gradient into `gradient`), leaving the memory as it was.
template <class Memory>
double loss_at(Memory& memory, const Batch& batch, std::vector<double>* gradient = nullptr) {
  const auto B = static_cast<index_t>(batch.labels.size());
  std::vector<double> unused;
  std::vector<double>& out = gradient ? *gradient : unused;
  out.resize(static_cast<std::size_t>(B * kDim));
  const double loss =
      memory
          .forward(protomem::matrix_view(batch.embeddings.data(), B, kDim, kStride),
                   protomem::label_view(batch.labels.data(), B),
                   protomem::matrix_view(out.data(), B, kDim))
          .loss;
  memory.discard();
  return loss;
}

// Relative error of the analytic gradient against central differences (norm-wise). The loss is
// differentiated as the step defines it; with a detached generator that is the naive loss with the
// batch prototypes held at their current values.
template <class Generator, class Memory>
double gradient_error(Memory& memory, Batch batch) {
  const auto B = static_cast<index_t>(batch.labels.size());
  std::vector<double> analytic;
  const double loss = loss_at(memory, batch, &analytic);
  const auto stored = naive::stored_classes(memory);
  const double reference = naive::loss(batch.embeddings.data(), kStride, batch.labels, kDim, stored,
                                       memory.margin(), Generator::leave_one_out);
  CHECK(std::abs(loss - reference) <= 1e-12 * std::max(1.0, std::abs(reference)));
  const auto fixed = naive::batch_prototypes(batch.embeddings.data(), kStride, batch.labels, kDim);
  auto loss_now = [&] {
    if constexpr (Generator::gradient) {
      return loss_at(memory, batch);
    } else {
      return naive::loss(batch.embeddings.data(), kStride, batch.labels, kDim, stored,
                         memory.margin(), false, &fixed);
    }
  };
  double diff2 = 0, ref2 = 0;
  for (index_t i = 0; i < B; ++i) {
    for (index_t j = 0; j < kDim; ++j) {
      double& e = batch.embeddings[static_cast<std::size_t>(i * kStride + j)];
      const double h = 1e-5 * std::max(1.0, std::abs(e));
      const double saved = e;
      e = saved + h;
      const double up = loss_now();
      e = saved - h;
      const double down = loss_now();
      e = saved;
      const double numeric = (up - down) / (2 * h);
      const double a = analytic[static_cast<std::size_t>(i * kDim + j)];
      diff2 += (a - numeric) * (a - numeric);
      ref2 += numeric * numeric;
    }
  }
  REQUIRE(ref2 > 1e-16);  // a vanishing gradient would make the comparison empty
  return std::sqrt(diff2 / ref2);
}

template <class Margin, class Generator, class Refresh, class Queue>
void check_combination(const Margin& margin) {
  protomem::Config config;
  config.capacity = 9;
  config.dim = kDim;
  config.workspace_bytes = 12 * sizeof(double) * 2;  // a tile of 2 columns for 12 rows
  // No aging: the naive loss (the oracle) counts every stored column fully.
  protomem::PrototypeMemory<double> memory(config, margin, Generator{}, Refresh{}, Queue{},
                                           protomem::NoAging{});
  std::mt19937_64 rng(42);
  const int one = Generator::leave_one_out ? 2 : 1;  // leave-one-out needs two exemplars
  // Steps: empty memory; stored + new classes with empty slots left; filling and evicting; after
  // evictions (the oldest classes are gone, refreshed ones stay).
  const std::vector<std::vector<std::pair<label_t, int>>> steps = {
      {{10, 3}, {11, one}, {12, 2}},
      {{10, 2}, {13, 3}, {14, one}, {15, 2}},
      {{16, 2}, {17, one}, {12, 3}, {18, 2}},
      {{19, 2}, {20, 2}, {21, one}, {11, 2}},
      {{10, 2}, {22, 3}, {23, 2}, {17, one}},
  };
  for (std::size_t t = 0; t < steps.size(); ++t) {
    const Batch batch = make_batch(steps[t], rng);
    const double error = gradient_error<Generator>(memory, batch);
    INFO("margin " << Margin::name << ", generator " << Generator::name << ", refresh "
                   << Refresh::name << ", queue " << Queue::name << ", step " << t
                   << ", memory size " << memory.size() << ", relative error " << error);
    CHECK(error <= 1e-6);
    const auto B = static_cast<index_t>(batch.labels.size());
    std::vector<double> gradient(static_cast<std::size_t>(B * kDim));
    memory.step(protomem::matrix_view(batch.embeddings.data(), B, kDim, kStride),
                protomem::label_view(batch.labels.data(), B),
                protomem::matrix_view(gradient.data(), B, kDim));
  }
  CHECK(memory.size() == config.capacity);
  CHECK(memory.stats().evictions > 0);
}

template <class Margin, class Generator>
void check_generator(const Margin& margin) {
  check_combination<Margin, Generator, protomem::Replace, protomem::LeastRecentlyWritten>(margin);
  check_combination<Margin, Generator, protomem::Momentum, protomem::LeastRecentlyWritten>(margin);
  check_combination<Margin, Generator, protomem::Replace, protomem::FirstInFirstOut>(margin);
  check_combination<Margin, Generator, protomem::Momentum, protomem::FirstInFirstOut>(margin);
}

template <class Margin>
void check_margin(const Margin& margin) {
  check_generator<Margin, protomem::ExemplarMean>(margin);
  check_generator<Margin, protomem::DetachedExemplarMean>(margin);
  check_generator<Margin, protomem::LeaveOneOut>(margin);
}

}  // namespace

TEST_CASE("gradient matches finite differences: no margin", "[gradient]") {
  check_margin(protomem::NoMargin(6.0));
}

TEST_CASE("gradient matches finite differences: CosFace", "[gradient]") {
  check_margin(protomem::CosFace(8.0, 0.35));
}

TEST_CASE("gradient matches finite differences: ArcFace", "[gradient]") {
  check_margin(protomem::ArcFace(8.0, 0.5));
  check_margin(protomem::ArcFace(8.0, 0.5, /*easy=*/true));
}

TEST_CASE("gradient matches finite differences: combined margin", "[gradient]") {
  check_margin(protomem::CombinedMargin(8.0, 1.2, 0.3, 0.1));
}

TEST_CASE("gradient is exact with the default scale s = 64", "[gradient]") {
  // A large scale saturates the softmax; the gradient must stay right where it is small.
  check_generator<protomem::CosFace, protomem::ExemplarMean>(protomem::CosFace());
  check_generator<protomem::ArcFace, protomem::LeaveOneOut>(protomem::ArcFace(64.0, 0.5));
}
