// Bad input: every case throws protomem::Error whose message names the value and where it came
// from, and the memory is exactly as before (compared through its full checkpoint bytes).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <protomem/memory.hpp>

namespace {

using protomem::index_t;
using protomem::label_t;
using Catch::Matchers::Contains;

template <class Memory>
std::string snapshot(const Memory& memory) {
  std::ostringstream out;
  memory.save(out);
  return out.str() + (memory.pending() ? "+pending" : "");
}

// A memory with some history, and a valid batch to corrupt case by case.
struct Fixture {
  static constexpr index_t dim = 4;
  protomem::Config config() const {
    protomem::Config c{6, dim};
    c.num_classes = 100;
    return c;
  }
  protomem::PrototypeMemory<float> memory{config()};
  std::vector<float> embeddings;
  std::vector<label_t> labels = {1, 1, 2, 2, 3, 3};
  std::vector<float> gradient = std::vector<float>(6 * dim);

  Fixture() {
    std::mt19937_64 rng(3);
    std::normal_distribution<float> normal;
    for (int i = 0; i < 6 * dim; ++i) embeddings.push_back(normal(rng));
    step();  // some history: classes 1, 2, 3 stored
    labels = {4, 4, 2, 2, 5, 5};
  }
  float step() {
    return memory.step(protomem::matrix_view<const float>(embeddings.data(), 6, dim),
                       protomem::label_view(labels.data(), 6),
                       protomem::matrix_view(gradient.data(), 6, dim));
  }
};

// Runs `bad`, which must throw protomem::Error with `message` in it and leave `memory` unchanged.
template <class Memory, class F>
void rejects(Memory& memory, F bad, const std::string& message) {
  const std::string before = snapshot(memory);
  CHECK_THROWS_WITH(bad(), Contains(message));
  CHECK_THROWS_AS(bad(), protomem::Error);
  CHECK(snapshot(memory) == before);
}

}  // namespace

TEST_CASE("non-finite and zero-norm embeddings are rejected", "[validation]") {
  Fixture f;
  f.embeddings[2 * Fixture::dim + 1] = std::numeric_limits<float>::quiet_NaN();
  rejects(f.memory, [&] { f.step(); }, "embeddings(2, 1) = nan is not finite");
  f.embeddings[2 * Fixture::dim + 1] = std::numeric_limits<float>::infinity();
  rejects(f.memory, [&] { f.step(); }, "embeddings(2, 1) = inf is not finite");
  f.embeddings[2 * Fixture::dim + 1] = 0.5f;
  for (int k = 0; k < Fixture::dim; ++k) f.embeddings[4 * Fixture::dim + k] = 0.0f;
  rejects(f.memory, [&] { f.step(); }, "embeddings row 4 has norm 0");
  CHECK_FALSE(f.memory.pending());  // a failed forward leaves nothing to commit
  CHECK_THROWS_AS(f.memory.commit(), protomem::Error);
}

TEST_CASE("huge float embeddings are normalised without overflow", "[validation]") {
  Fixture f;
  for (float& v : f.embeddings) v *= 1e30f;
  CHECK(std::isfinite(f.step()));
  for (float g : f.gradient) CHECK(std::isfinite(g));
}

TEST_CASE("exemplars that cancel leave their prototype undefined", "[validation]") {
  Fixture f;
  for (int k = 0; k < Fixture::dim; ++k) f.embeddings[Fixture::dim + k] = -f.embeddings[k];
  rejects(f.memory, [&] { f.step(); }, "the exemplars of class 4 sum to zero");
}

TEST_CASE("labels must be non-negative and inside a declared range", "[validation]") {
  Fixture f;
  f.labels[3] = -5;
  rejects(f.memory, [&] { f.step(); }, "labels[3] = -5 is negative");
  f.labels[3] = 100;
  rejects(f.memory, [&] { f.step(); }, "labels[3] = 100 is outside the declared range [0, 100)");
  f.labels[3] = 99;
  CHECK_NOTHROW(f.step());
}

TEST_CASE("shapes and strides must match the memory and each other", "[validation]") {
  Fixture f;
  const index_t D = Fixture::dim;
  auto call = [&](protomem::MatrixView<const float> e, protomem::LabelView y,
                  protomem::MatrixView<float> g) { return [&f, e, y, g] { f.memory.step(e, y, g); }; };
  auto e = protomem::matrix_view<const float>(f.embeddings.data(), 6, D);
  auto y = protomem::label_view(f.labels.data(), 6);
  auto g = protomem::matrix_view(f.gradient.data(), 6, D);

  rejects(f.memory, call(e, protomem::label_view(f.labels.data(), 5), g),
          "embeddings.rows = 6 but labels.size = 5");
  rejects(f.memory, call(protomem::matrix_view<const float>(f.embeddings.data(), 8, 3), 
                         protomem::label_view(f.labels.data(), 6), g),
          "embeddings.rows = 8 but labels.size = 6");
  rejects(f.memory, call(protomem::matrix_view<const float>(f.embeddings.data(), 6, 3), y, g),
          "embeddings.cols = 3 but the memory's dim = 4");
  rejects(f.memory, call({f.embeddings.data(), 6, D, 3}, y, g),
          "embeddings.row_stride = 3 < embeddings.cols = 4");
  rejects(f.memory, call(e, y, protomem::matrix_view(f.gradient.data(), 5, D)),
          "gradient is 5 x 4 but embeddings are 6 x 4");
  rejects(f.memory, call(e, y, {f.gradient.data(), 6, D, 2}),
          "gradient.row_stride = 2 < gradient.cols = 4");
  rejects(f.memory, call(e, protomem::label_view(f.labels.data(), 0), g),
          "empty batch: labels.size = 0");
  rejects(f.memory, call({nullptr, 6, D, D}, y, g), "embeddings.data is null");
  rejects(f.memory, call(e, {nullptr, 6}, g), "labels.data is null");
  rejects(f.memory, call(e, y, {nullptr, 6, D, D}), "gradient.data is null");
}

TEST_CASE("a batch may not hold more classes than the memory has slots", "[validation]") {
  Fixture f;
  f.labels = {1, 2, 3, 4, 5, 6};
  CHECK_NOTHROW(f.step());  // exactly the capacity is fine
  f.labels = {1, 2, 3, 4, 5, 6};
  protomem::PrototypeMemory<float> small({5, Fixture::dim});
  rejects(small,
          [&] {
            small.step(protomem::matrix_view<const float>(f.embeddings.data(), 6, Fixture::dim),
                       protomem::label_view(f.labels.data(), 6),
                       protomem::matrix_view(f.gradient.data(), 6, Fixture::dim));
          },
          "the batch has 6 distinct classes but the memory's capacity is 5");
}

TEST_CASE("leave-one-out needs two exemplars per class", "[validation]") {
  Fixture f;
  protomem::PrototypeMemory<float> loo({8, Fixture::dim}, protomem::LeaveOneOut{});
  f.labels = {1, 1, 2, 3, 3, 3};
  rejects(loo,
          [&] {
            loo.step(protomem::matrix_view<const float>(f.embeddings.data(), 6, Fixture::dim),
                     protomem::label_view(f.labels.data(), 6),
                     protomem::matrix_view(f.gradient.data(), 6, Fixture::dim));
          },
          "class 2 has 1 exemplar(s) in the batch but the leave_one_out generator needs at least 2");
}

TEST_CASE("forward while an update is pending is an error", "[validation]") {
  Fixture f;
  const auto e = protomem::matrix_view<const float>(f.embeddings.data(), 6, Fixture::dim);
  const auto y = protomem::label_view(f.labels.data(), 6);
  const auto g = protomem::matrix_view(f.gradient.data(), 6, Fixture::dim);
  f.memory.forward(e, y, g);
  rejects(f.memory, [&] { f.memory.forward(e, y, g); }, "call commit() or discard() first");
  f.memory.commit();
  rejects(f.memory, [&] { f.memory.commit(); }, "commit() without a pending forward()");
}

TEST_CASE("bad configuration and policy parameters are rejected", "[validation][policies]") {
  using protomem::Config;
  CHECK_THROWS_WITH(protomem::PrototypeMemory<float>(Config{0, 4}),
                    Contains("Config::capacity = 0 must be >= 1"));
  CHECK_THROWS_WITH(protomem::PrototypeMemory<float>(Config{4, 0}),
                    Contains("Config::dim = 0 must be >= 1"));
  Config negative{4, 4};
  negative.num_classes = -1;
  CHECK_THROWS_WITH(protomem::PrototypeMemory<float>(negative),
                    Contains("Config::num_classes = -1 must be >= 0"));
  Config k{4, 4};
  k.similar_k = -2;
  CHECK_THROWS_WITH(protomem::PrototypeMemory<float>(k), Contains("Config::similar_k = -2"));

  CHECK_THROWS_WITH(protomem::CosFace(0.0), Contains("cosface: scale s = 0 must be finite and > 0"));
  CHECK_THROWS_WITH(protomem::CosFace(-1.0), Contains("scale s = -1"));
  CHECK_THROWS_WITH(protomem::NoMargin(std::nan("")), Contains("none: scale s = nan"));
  CHECK_THROWS_WITH(protomem::CosFace(64, -0.1), Contains("cosface: margin m = -0.1"));
  CHECK_THROWS_WITH(protomem::CosFace(64, 1.5), Contains("margin m = 1.5 is outside [0, 1]"));
  CHECK_THROWS_WITH(protomem::ArcFace(64, 2.0), Contains("arcface: margin m = 2"));
  CHECK_THROWS_WITH(protomem::ArcFace(64, -0.5), Contains("arcface: margin m = -0.5"));
  CHECK_THROWS_WITH(protomem::CombinedMargin(64, 0.5), Contains("combined: m1 = 0.5"));
  CHECK_THROWS_WITH(protomem::CombinedMargin(64, 1.0, 2.0), Contains("combined: m2 = 2"));
  CHECK_THROWS_WITH(protomem::CombinedMargin(64, 1.0, 0.2, 1.2), Contains("combined: m3 = 1.2"));
  CHECK_THROWS_WITH(protomem::Momentum(1.0), Contains("momentum: old-prototype weight a = 1"));
  CHECK_THROWS_WITH(protomem::Momentum(-0.1), Contains("a = -0.1 is outside [0, 1)"));
  CHECK_NOTHROW(protomem::CosFace(64, 0.0));
  CHECK_NOTHROW(protomem::Momentum(0.0));
}
