// PrototypeMemory::assign(), the bulk fill without checkpoint bytes: the memory then holds exactly
// the given records, in the given eviction order, with their ages and step counter; a memory
// assigned another's records continues exactly as that memory does; and every rejected input
// throws protomem::Error naming it and leaves the memory as it was (pending forward included).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <protomem/memory.hpp>
#include <random>
#include <string>
#include <vector>

#include "support/batch.hpp"
#include "support/checkpoint.hpp"

namespace {

using Catch::Matchers::Contains;
using protomem::index_t;
using protomem::label_t;

// Records to assign: labels, n x dim unit prototypes (row stride dim + 1) and last_written steps.
template <class T>
struct Records {
  std::vector<label_t> labels;
  std::vector<T> prototypes;
  std::vector<std::uint64_t> written;
  index_t dim = 0;

  index_t size() const { return static_cast<index_t>(labels.size()); }
  protomem::MatrixView<const T> view() const {
    return protomem::matrix_view(static_cast<const T*>(prototypes.data()), size(), dim, dim + 1);
  }
  protomem::Span<const label_t> label_span() const { return {labels.data(), size()}; }
  protomem::Span<const std::uint64_t> written_span() const {
    return {written.data(), static_cast<index_t>(written.size())};
  }
  T& at(index_t r, index_t k) { return prototypes[static_cast<std::size_t>(r * (dim + 1) + k)]; }
};

template <class T>
Records<T> random_records(index_t n, index_t dim, std::uint64_t steps, std::mt19937_64& rng) {
  Records<T> records;
  records.dim = dim;
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<std::uint64_t> step(0, steps);
  // Distinct, unordered labels: multiples of 7 shuffled.
  for (index_t r = 0; r < n; ++r) records.labels.push_back(7 * r + 3);
  std::shuffle(records.labels.begin(), records.labels.end(), rng);
  for (index_t r = 0; r < n; ++r) {
    std::vector<double> v(static_cast<std::size_t>(dim));
    double norm2 = 0;
    for (double& x : v) {
      x = normal(rng);
      norm2 += x * x;
    }
    for (double x : v) records.prototypes.push_back(T(x / std::sqrt(norm2)));
    records.prototypes.push_back(T(-99));  // padding past the row: never stored
    records.written.push_back(step(rng));
  }
  return records;
}

template <class Memory>
std::string snapshot(const Memory& memory) {
  return checkpoint_support::bytes_of(memory) + (memory.pending() ? "+pending" : "");
}

}  // namespace

TEST_CASE("assign() stores the records in their order, with their ages", "[assign]") {
  std::mt19937_64 rng(11);
  const index_t dim = 6;
  for (index_t n : {0, 1, 9, 16}) {
    CAPTURE(n);
    protomem::PrototypeMemory<double> memory({16, dim});
    const auto records = random_records<double>(n, dim, 40, rng);
    memory.assign(records.label_span(), records.view(), records.written_span(), 40);
    CHECK(memory.size() == n);
    CHECK(memory.step_count() == 40);
    CHECK(memory.stats().insertions == static_cast<std::uint64_t>(n));
    CHECK(memory.stats().refreshes == 0);
    CHECK(memory.stats().evictions == 0);
    index_t r = 0;
    for (const auto record : memory) {  // eviction order = the order given
      REQUIRE(r < n);
      CHECK(record.label == records.labels[static_cast<std::size_t>(r)]);
      CHECK(record.last_written == records.written[static_cast<std::size_t>(r)]);
      CHECK(memory.last_written(record.label) == records.written[static_cast<std::size_t>(r)]);
      REQUIRE(record.prototype.size == dim);
      for (index_t k = 0; k < dim; ++k) {
        CHECK(record.prototype[k] ==
              records.prototypes[static_cast<std::size_t>(r * (dim + 1) + k)]);
      }
      ++r;
    }
    CHECK(r == n);
    CHECK_FALSE(memory.contains(7 * n + 3));
  }
}

TEST_CASE("assign() replaces what was stored and evicts record 0 first", "[assign]") {
  std::mt19937_64 rng(12);
  const index_t dim = 4;
  protomem::PrototypeMemory<double> memory({5, dim});
  const auto old_batch = test_support::make_batch<double>({100, 101, 102}, 2, dim, rng);
  std::vector<double> gradient(old_batch.embeddings.size());
  memory.step(old_batch.view(), old_batch.label_view(),
              protomem::matrix_view(gradient.data(), old_batch.rows(), dim));

  const auto records = random_records<double>(5, dim, 3, rng);
  memory.assign(records.label_span(), records.view(), records.written_span(), 3);
  CHECK_FALSE(memory.contains(100));
  CHECK(memory.size() == 5);

  // The memory is full: a new class takes record 0's slot, whatever the labels' order.
  const auto batch = test_support::make_batch<double>({500}, 2, dim, rng);
  gradient.resize(batch.embeddings.size());
  memory.step(batch.view(), batch.label_view(),
              protomem::matrix_view(gradient.data(), batch.rows(), dim));
  CHECK_FALSE(memory.contains(records.labels[0]));
  for (std::size_t r = 1; r < 5; ++r) CHECK(memory.contains(records.labels[r]));
  CHECK(memory.last_written(500) == 4);
}

// The same records in other slots: the memory pass sums in slot order, so results agree to
// rounding, and the bookkeeping (classes, order, ages) exactly.
TEST_CASE("a memory assigned another's records continues as it does", "[assign]") {
  std::mt19937_64 rng(13);
  const index_t dim = 5;
  using Memory = protomem::PrototypeMemory<float>;
  Memory original({8, dim}, protomem::ArcFace(16, 0.3), protomem::Momentum(0.4));
  std::vector<float> gradient;
  auto step = [&](Memory& memory, const test_support::Batch<float>& batch) {
    gradient.assign(batch.embeddings.size(), 0.0f);
    return memory.step(batch.view(), batch.label_view(),
                       protomem::matrix_view(gradient.data(), batch.rows(), dim));
  };
  for (int t = 0; t < 9; ++t) {  // fills the memory and evicts
    step(original,
         test_support::make_batch<float>(test_support::distinct_labels(rng, 3, 20), 2, dim, rng));
  }

  Records<float> records;
  records.dim = dim;
  for (const auto record : original) {
    records.labels.push_back(record.label);
    records.written.push_back(record.last_written);
    for (index_t k = 0; k < dim; ++k) records.prototypes.push_back(record.prototype[k]);
    records.prototypes.push_back(0.0f);
  }
  Memory copy({8, dim}, protomem::ArcFace(16, 0.3), protomem::Momentum(0.4));
  copy.assign(records.label_span(), records.view(), records.written_span(), original.step_count());

  for (int t = 0; t < 6; ++t) {
    const auto batch =
        test_support::make_batch<float>(test_support::distinct_labels(rng, 3, 20), 2, dim, rng);
    const float a = step(original, batch);
    const std::vector<float> ga = gradient;
    const float b = step(copy, batch);
    CHECK(std::fabs(a - b) <= 1e-5f * std::max(1.0f, std::fabs(a)));
    float largest = 0, worst = 0;
    for (std::size_t i = 0; i < ga.size(); ++i) {
      largest = std::max(largest, std::fabs(ga[i]));
      worst = std::max(worst, std::fabs(ga[i] - gradient[i]));
    }
    CHECK(worst <= 1e-5f * largest);
  }
  // Same records, order and ages (the counters differ by design: assign() restarts them).
  auto a = original.begin();
  auto b = copy.begin();
  for (; a != original.end() && b != copy.end(); ++a, ++b) {
    CHECK((*a).label == (*b).label);
    CHECK((*a).last_written == (*b).last_written);
    for (index_t k = 0; k < dim; ++k)
      CHECK(std::fabs((*a).prototype[k] - (*b).prototype[k]) <= 1e-5f);
  }
  CHECK(a == original.end());
  CHECK(b == copy.end());
}

TEST_CASE("assign() rejects bad records and changes nothing", "[assign][validation]") {
  std::mt19937_64 rng(14);
  const index_t dim = 4;
  protomem::Config config{6, dim};
  config.num_classes = 1000;
  protomem::PrototypeMemory<float> memory(config);
  const auto history = test_support::make_batch<float>({1, 2, 3}, 2, dim, rng);
  std::vector<float> gradient(history.embeddings.size());
  memory.step(history.view(), history.label_view(),
              protomem::matrix_view(gradient.data(), history.rows(), dim));
  memory.forward(history.view(), history.label_view(),
                 protomem::matrix_view(gradient.data(), history.rows(), dim));  // pending

  const auto good = random_records<float>(4, dim, 10, rng);
  auto rejects = [&](const Records<float>& records, std::uint64_t steps,
                     const std::string& message) {
    const std::string before = snapshot(memory);
    CHECK_THROWS_WITH(
        memory.assign(records.label_span(), records.view(), records.written_span(), steps),
        Contains(message));
    CHECK_THROWS_AS(
        memory.assign(records.label_span(), records.view(), records.written_span(), steps),
        protomem::Error);
    CHECK(snapshot(memory) == before);
  };

  SECTION("more records than the capacity") {
    rejects(random_records<float>(7, dim, 10, rng), 10, "capacity is 6");
  }
  SECTION("a negative label") {
    auto bad = good;
    bad.labels[2] = -4;
    rejects(bad, 10, "labels[2] = -4 is negative");
  }
  SECTION("a label outside the declared range") {
    auto bad = good;
    bad.labels[1] = 1000;
    rejects(bad, 10, "labels[1] = 1000 is outside the declared range");
  }
  SECTION("a label twice") {
    auto bad = good;
    bad.labels[3] = bad.labels[0];
    rejects(bad, 10, "appears twice");
  }
  SECTION("a step after the step counter") {
    auto bad = good;
    bad.written[1] = 11;
    rejects(bad, 10, "last_written[1] = 11");
  }
  SECTION("a non-finite value") {
    auto bad = good;
    bad.at(2, 3) = std::numeric_limits<float>::quiet_NaN();
    rejects(bad, 10, "prototypes(2, 3) = nan");
  }
  SECTION("a prototype that is not of unit norm") {
    auto bad = good;
    for (index_t k = 0; k < dim; ++k) bad.at(3, k) *= 1.01f;
    rejects(bad, 10, "prototype 3");
  }
  SECTION("shapes that disagree") {
    auto bad = good;
    bad.written.pop_back();
    rejects(bad, 10, "4 labels but 4 prototype rows and 3 last_written");
    const std::string before = snapshot(memory);
    CHECK_THROWS_WITH(memory.assign(good.label_span(),
                                    protomem::matrix_view(good.prototypes.data(), 4, dim - 1, dim),
                                    good.written_span(), 10),
                      Contains("prototypes.cols = 3 but the memory's dim = 4"));
    CHECK(snapshot(memory) == before);
  }
  // A rejected call kept the pending forward: it still commits.
  CHECK(memory.pending());
  memory.commit();
  CHECK(memory.step_count() == 2);
}

TEST_CASE("assign() accepts unit norm up to sqrt(epsilon)", "[assign][validation]") {
  std::mt19937_64 rng(15);
  const index_t dim = 3;
  protomem::PrototypeMemory<double> memory({4, dim});
  auto records = random_records<double>(2, dim, 1, rng);
  for (index_t k = 0; k < dim; ++k) records.at(1, k) *= 1.0 + 1e-9;  // within 1.5e-8
  memory.assign(records.label_span(), records.view(), records.written_span(), 1);
  CHECK(memory.size() == 2);
  for (index_t k = 0; k < dim; ++k) records.at(1, k) *= 1.0 + 1e-6;  // beyond
  CHECK_THROWS_WITH(memory.assign(records.label_span(), records.view(), records.written_span(), 1),
                    Contains("has norm"));
  CHECK(memory.size() == 2);
}
